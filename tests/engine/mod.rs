//! The engine and its embedded DStream API.

mod lifecycle;
mod ops;
mod state;
mod windows;
