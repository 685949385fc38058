//! # flumen-connectors
//!
//! Sources and sinks behind the engine's `Source` / `Sink` traits, one module each,
//! registered by connector name; [`registry`] gives them all to the SQL layer.
//!
//! ```text
//!   ConnectorRegistry ─ sources: "queue" (engine), "rate"
//!                     └ sinks:   "memory", "console" (engine)
//! ```
//!
//! The socket, files, Kafka and database connectors are issues 5 and 6.

use std::sync::Arc;

use flumen_engine::ConnectorRegistry;

pub mod rate;

/// The registry of every connector this crate provides, plus the engine's own.
pub fn registry() -> ConnectorRegistry {
    let mut r = ConnectorRegistry::with_builtins();
    r.register_source("rate", Arc::new(rate::RateFactory));
    r
}
