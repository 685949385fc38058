//! # flumen-connectors
//!
//! Sources and sinks behind the engine's `Source` / `Sink` traits, one module each,
//! registered by connector name; [`registry`] gives them all to the SQL layer.
//!
//! ```text
//!   ConnectorRegistry ─ sources: memory/queue (engine), rate, nexmark, socket,
//!                     │          files (store: local, s3, memory), kafka
//!                     └ sinks:   memory, console (engine), files (files_sink),
//!                                postgres (postgres_sink), mysql (mysql_sink),
//!                                kafka (kafka_sink, at least once)
//!   format: text / csv / json decoding and the on_error policy, for text sources
//!   store:  object stores by URL, shared by the files source and sink
//!   offsets_store: Kafka offsets kept in PostgreSQL / MySQL (flumen_offsets)
//! ```
//!

use std::sync::Arc;

use flumen_engine::ConnectorRegistry;

mod csv_out;
mod db_sink;
pub use flumen_engine::exact;
pub mod files;
pub mod files_sink;
pub mod format;
pub mod kafka;
pub mod kafka_sink;
pub mod mysql_sink;
pub mod nexmark;
pub mod offsets_store;
pub mod postgres_sink;
pub mod rate;
pub mod socket;
pub mod tls;
pub use flumen_engine::store;

/// The client crates (object store, Kafka, PostgreSQL, MySQL), for tests and embedders
/// that prepare or check data.
pub use mysql_async;
pub use object_store;
pub use rskafka;
pub use tokio_postgres;

/// The registry of every connector this crate provides, plus the engine's own.
pub fn registry() -> ConnectorRegistry {
    register_cluster_scans();
    let mut r = ConnectorRegistry::with_builtins();
    r.register_source("rate", Arc::new(rate::RateFactory));
    r.register_source("socket", Arc::new(socket::SocketFactory));
    r.register_source("files", Arc::new(files::FilesFactory));
    r.register_source("kafka", Arc::new(kafka::KafkaFactory));
    r.register_source("nexmark", Arc::new(nexmark::NexmarkFactory));
    r.register_sink("files", Arc::new(files_sink::FilesSinkFactory));
    r.register_sink(
        "postgres",
        Arc::new(postgres_sink::PostgresSinkFactory::default()),
    );
    r.register_sink("mysql", Arc::new(mysql_sink::MySqlSinkFactory::default()));
    r.register_sink("kafka", Arc::new(kafka_sink::KafkaSinkFactory));
    r
}

/// The column names of `schema`, `a, b, c`, for messages.
pub(crate) fn column_list(schema: &datafusion::arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes this process read the sources a cluster's executors read themselves
/// (`flumen_engine::cluster::scan`): `rate` and `nexmark` event ranges, `files` lists, `kafka` offset ranges;
/// and write the sinks their tasks write (`flumen_engine::cluster::write`): `files`. Every
/// `flumen` process calls it (the driver through [`registry`], `flumen scheduler` and
/// `flumen executor` directly).
pub fn register_cluster_scans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use flumen_engine::cluster::scan::register;
        register("rate", Arc::new(rate::read_part));
        register("nexmark", Arc::new(nexmark::read_part));
        register("files", Arc::new(files::read_part));
        register("kafka", Arc::new(kafka::read_part));
        flumen_engine::cluster::write::register("files", Arc::new(files_sink::write_part));
    });
}

/// The name and options of a stream or sink in the part or spec a task on an executor
/// was given (`{"name": .., "options": {..}}`); `what` names it in the error.
pub(crate) fn named_options(
    spec: &serde_json::Value,
    what: &str,
) -> flumen_engine::Result<(String, flumen_engine::registry::ConnectorOptions)> {
    let bad = || flumen_engine::Error::Internal(format!("{what}: a bad spec: {spec}"));
    let name = spec.get("name").and_then(|n| n.as_str()).ok_or_else(bad)?;
    let options = spec
        .get("options")
        .and_then(|o| o.as_object())
        .ok_or_else(bad)?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_string())))
        .collect::<flumen_engine::Result<_>>()?;
    Ok((name.to_string(), options))
}
