//! Flumen's integration tests: one binary, so DataFusion is linked once.

mod checkpoint;
mod cli;
mod cluster;
mod common;
mod connectors;
mod crash;
mod engine;
mod sql_api;
mod sql_logic;
mod state;
mod stream_vs_batch;
mod ui;
