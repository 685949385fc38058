//! # flumen-connectors
//!
//! Sources and sinks behind the engine's `Source` / `Sink` traits, one module each,
//! registered by connector name. Not built yet beyond the engine's own `queue` source
//! and `memory` sink: see issues 5 and 6.
//!
//! ```text
//!   ConnectorRegistry ─ "queue" ─▶ QueueSource     "memory" ─▶ MemorySink
//! ```

use flumen_engine::ConnectorRegistry;

/// The registry of every connector this crate provides, plus the engine's own.
pub fn registry() -> ConnectorRegistry {
    ConnectorRegistry::with_builtins()
}
