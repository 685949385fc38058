//! The engine and its embedded DStream API.

mod lifecycle;
mod ops;
mod rate;
mod state;
mod windows;
