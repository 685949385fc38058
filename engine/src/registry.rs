//! The connector registry: source and sink factories keyed by the SQL
//! `connector = '...'` name, so the SQL layer never names a concrete connector.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::plan_err;
use crate::sink::{MemorySink, Sink};
use crate::source::Source;
use crate::sources::QueueSource;

/// Options given in `WITH (...)`, keys lower-cased.
pub type ConnectorOptions = HashMap<String, String>;

/// Creates sources of one connector.
pub trait SourceFactory: Debug + Send + Sync {
    /// The options the connector accepts (for error messages and completion).
    fn options(&self) -> &[&'static str];
    /// A source named `name` producing `schema`. The registry has checked `options`
    /// against [`SourceFactory::options`] ([`ConnectorRegistry::create_source`]).
    fn create(
        &self,
        name: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Source>>;
    /// The schema to use when the user declares none (e.g. a generator's columns).
    fn default_schema(&self, _options: &ConnectorOptions) -> Option<SchemaRef> {
        None
    }
}

/// Creates sinks of one connector.
pub trait SinkFactory: Debug + Send + Sync {
    fn options(&self) -> &[&'static str];
    /// A sink named `name`; `options` checked by the registry as for sources.
    fn create(&self, name: &str, options: &ConnectorOptions) -> Result<Arc<dyn Sink>>;
}

/// Source and sink factories by connector name.
#[derive(Debug, Clone, Default)]
pub struct ConnectorRegistry {
    sources: BTreeMap<String, Arc<dyn SourceFactory>>,
    sinks: BTreeMap<String, Arc<dyn SinkFactory>>,
}

impl ConnectorRegistry {
    /// A registry with the engine's own connectors: `queue` / `memory` (source),
    /// `memory`, `console` and `blackhole` (sinks).
    pub fn with_builtins() -> Self {
        let mut r = Self::default();
        r.register_source("queue", Arc::new(QueueFactory { connector: "queue" }));
        r.register_source(
            "memory",
            Arc::new(QueueFactory {
                connector: "memory",
            }),
        );
        r.register_sink("memory", Arc::new(MemoryFactory));
        r.register_sink("console", Arc::new(ConsoleFactory));
        r.register_sink("blackhole", Arc::new(BlackholeFactory));
        r
    }

    pub fn register_source(&mut self, name: &str, factory: Arc<dyn SourceFactory>) {
        self.sources.insert(name.to_ascii_lowercase(), factory);
    }

    pub fn register_sink(&mut self, name: &str, factory: Arc<dyn SinkFactory>) {
        self.sinks.insert(name.to_ascii_lowercase(), factory);
    }

    /// The source factory of `connector`, or an error listing the known ones.
    pub fn source(&self, connector: &str) -> Result<&Arc<dyn SourceFactory>> {
        match self.sources.get(&connector.to_ascii_lowercase()) {
            Some(f) => Ok(f),
            None => plan_err!(
                "unknown source connector '{connector}'; available: {}",
                self.source_names().join(", ")
            ),
        }
    }

    /// The sink factory of `connector`, or an error listing the known ones.
    pub fn sink(&self, connector: &str) -> Result<&Arc<dyn SinkFactory>> {
        match self.sinks.get(&connector.to_ascii_lowercase()) {
            Some(f) => Ok(f),
            None => plan_err!(
                "unknown sink connector '{connector}'; available: {}",
                self.sink_names().join(", ")
            ),
        }
    }

    /// A source of `connector` named `name`: its options checked against those the
    /// connector accepts, then the connector's own checks.
    pub fn create_source(
        &self,
        connector: &str,
        name: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Source>> {
        let factory = self.source(connector)?;
        check_options(connector, options, factory.options())?;
        factory.create(name, schema, options)
    }

    /// A sink of `connector` named `name`, its options checked as for sources.
    pub fn create_sink(
        &self,
        connector: &str,
        name: &str,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Sink>> {
        let factory = self.sink(connector)?;
        check_options(connector, options, factory.options())?;
        factory.create(name, options)
    }

    pub fn source_names(&self) -> Vec<&str> {
        self.sources.keys().map(String::as_str).collect()
    }

    pub fn sink_names(&self) -> Vec<&str> {
        self.sinks.keys().map(String::as_str).collect()
    }
}

/// Rejects options the connector does not know, listing those it does.
pub fn check_options(connector: &str, options: &ConnectorOptions, known: &[&str]) -> Result<()> {
    let mut unknown: Vec<&String> = options
        .keys()
        .filter(|k| k.as_str() != "connector" && !known.contains(&k.as_str()))
        .collect();
    unknown.sort();
    if let Some(k) = unknown.first() {
        return plan_err!(
            "unknown option '{k}' for connector '{connector}'; accepted: {}",
            known.join(", ")
        );
    }
    Ok(())
}

/// `key` as `true`/`false`, `default` when absent.
pub fn bool_option(
    connector: &str,
    options: &ConnectorOptions,
    key: &str,
    default: bool,
) -> Result<bool> {
    match options.get(key).map(|s| s.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => plan_err!("{connector} option {key} must be 'true' or 'false', got '{v}'"),
    }
}

/// `key` as a positive whole number, if given.
pub fn positive_option(
    connector: &str,
    options: &ConnectorOptions,
    key: &str,
) -> Result<Option<u64>> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => plan_err!("{connector} option {key} must be a positive whole number, got '{v}'"),
        },
    }
}

/// The queue source, registered as `queue` and `memory`.
#[derive(Debug)]
struct QueueFactory {
    connector: &'static str,
}

impl SourceFactory for QueueFactory {
    fn options(&self) -> &[&'static str] {
        &["one_at_a_time"]
    }

    fn create(
        &self,
        name: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Source>> {
        let one = bool_option(self.connector, options, "one_at_a_time", true)?;
        Ok(QueueSource::new(name, schema, one))
    }

    fn default_schema(&self, _options: &ConnectorOptions) -> Option<SchemaRef> {
        Some(Arc::new(Schema::new(vec![Field::new(
            "value",
            DataType::Utf8,
            true,
        )])))
    }
}

#[derive(Debug)]
struct MemoryFactory;

impl SinkFactory for MemoryFactory {
    fn options(&self) -> &[&'static str] {
        &[]
    }

    fn create(&self, name: &str, _options: &ConnectorOptions) -> Result<Arc<dyn Sink>> {
        Ok(MemorySink::new(name))
    }
}

#[derive(Debug)]
struct ConsoleFactory;

impl SinkFactory for ConsoleFactory {
    fn options(&self) -> &[&'static str] {
        &["num_rows", "format"]
    }

    fn create(&self, name: &str, options: &ConnectorOptions) -> Result<Arc<dyn Sink>> {
        use crate::sink::ConsoleFormat;
        let rows = positive_option("console", options, "num_rows")?.unwrap_or(20);
        let format = match options
            .get("format")
            .map(|f| f.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("print") => ConsoleFormat::Print,
            Some("csv") => ConsoleFormat::Csv,
            Some("json") => ConsoleFormat::Json,
            Some(other) => {
                return crate::plan_err!(
                    "sink {name}: unknown console format '{other}'; accepted: print, csv, json"
                );
            }
        };
        Ok(crate::sink::ConsoleSink::with_format(
            name,
            rows as usize,
            format,
        ))
    }
}

#[derive(Debug)]
struct BlackholeFactory;

impl SinkFactory for BlackholeFactory {
    fn options(&self) -> &[&'static str] {
        &[]
    }

    fn create(&self, name: &str, _options: &ConnectorOptions) -> Result<Arc<dyn Sink>> {
        Ok(crate::sink::BlackholeSink::new(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_connector_lists_the_known_ones() {
        let r = ConnectorRegistry::with_builtins();
        let err = r.source("kafak").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown source connector 'kafak'; available: memory, queue"
        );
        let mut opts = ConnectorOptions::new();
        opts.insert("one_at_a_tme".into(), "true".into());
        let err = r
            .create_source("queue", "q", Arc::new(Schema::empty()), &opts)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown option 'one_at_a_tme' for connector 'queue'; accepted: one_at_a_time"
        );
        let err = r
            .create_sink("console", "out", &opts)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unknown option 'one_at_a_tme' for connector 'console'; accepted: "),
            "{err}"
        );
    }
}
