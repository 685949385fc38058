//! Sources built into the engine (the rest live in `flumen-connectors`).

pub mod queue;

pub use queue::QueueSource;
