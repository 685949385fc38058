//! # flumen-connectors
//!
//! Sources and sinks behind the engine's `Source` / `Sink` traits, one module each,
//! registered by connector name; [`registry`] gives them all to the SQL layer.
//!
//! ```text
//!   ConnectorRegistry ─ sources: "queue" (engine), "rate", "socket"
//!                     └ sinks:   "memory", "console" (engine)
//!   format: text / csv / json decoding and the on_error policy, for text sources
//! ```
//!
//! The files, Kafka and database connectors are issues 5 and 6.

use std::sync::Arc;

use flumen_engine::ConnectorRegistry;

pub mod files;
pub mod format;

/// The object-store and Kafka client crates, for tests and embedders that prepare data.
pub use object_store;
pub use rskafka;

pub mod kafka;
pub mod rate;
pub mod socket;
pub mod store;

/// The registry of every connector this crate provides, plus the engine's own.
pub fn registry() -> ConnectorRegistry {
    let mut r = ConnectorRegistry::with_builtins();
    r.register_source("rate", Arc::new(rate::RateFactory));
    r.register_source("socket", Arc::new(socket::SocketFactory));
    r.register_source("files", Arc::new(files::FilesFactory));
    r.register_source("kafka", Arc::new(kafka::KafkaFactory));
    r
}
