//! The `kafka` sink: each output row becomes one record of `topic`, its value the row
//! as a JSON object (`format = 'json'`) or one text column as is (`format = 'raw'`),
//! its key the column named by `key`, if any. The batch's partition `p` goes to topic
//! partition `p % partitions`.
//!
//! Delivery is at least once: rskafka has no transactional producer, so a batch
//! replayed after a crash is produced again. Use the files or database sinks where
//! output must be exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::registry::{ConnectorOptions, SinkFactory};
use flumen_engine::{Error, Result, Sink, Time, WriteKey, plan_err};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Raw,
}

pub struct KafkaSink {
    name: String,
    servers: Vec<String>,
    topic: String,
    format: Format,
    key: Option<String>,
    /// TLS and SASL (`security_protocol`).
    security: crate::tls::KafkaSecurity,
    client: tokio::sync::OnceCell<Client>,
    partitions: tokio::sync::Mutex<Vec<Arc<PartitionClient>>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Sink {
            sink_name: self.name.clone(),
            message: format!(
                "kafka topic '{}' (broker {}): {what}: {e}",
                self.topic,
                self.servers.join(",")
            ),
            retryable: true,
        }
    }

    async fn client(&self) -> Result<&Client> {
        self.client
            .get_or_try_init(|| async {
                let mut build = ClientBuilder::new(self.servers.clone()).client_id("flumen");
                build = self.security.apply(build);
                tokio::time::timeout(Duration::from_secs(10), build.build())
                    .await
                    .map_err(|_| self.error("cannot connect", "no answer within 10 s"))?
                    .map_err(|e| self.error("cannot connect", e))
            })
            .await
    }

    /// One client per topic partition, listed on first use.
    async fn partition_clients(&self) -> Result<Vec<Arc<PartitionClient>>> {
        let mut cached = self.partitions.lock().await;
        if cached.is_empty() {
            let client = self.client().await?;
            let topics = client
                .list_topics()
                .await
                .map_err(|e| self.error("listing topics", e))?;
            let Some(t) = topics
                .iter()
                .find(|t| t.name == self.topic && !t.partitions.is_empty())
            else {
                return Err(self.error("not found", "the topic does not exist; create it first"));
            };
            let mut ids: Vec<i32> = t.partitions.iter().copied().collect();
            ids.sort();
            for p in ids {
                let pc = client
                    .partition_client(self.topic.clone(), p, UnknownTopicHandling::Error)
                    .await
                    .map_err(|e| self.error(&format!("partition {p}"), e))?;
                cached.push(Arc::new(pc));
            }
        }
        Ok(cached.clone())
    }

    fn records(&self, batch: &RecordBatch) -> Result<Vec<Record>> {
        let n = batch.num_rows();
        let values: Vec<Option<Vec<u8>>> = match self.format {
            Format::Json => {
                // The whole row, as Spark's to_json(struct(*)).
                let mut buf = Vec::new();
                {
                    let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                    w.write(batch)?;
                    w.finish()?;
                }
                buf.split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| Some(l.to_vec()))
                    .collect()
            }
            Format::Raw => {
                let col = cast(batch.column(0), &DataType::Utf8)?;
                let col = col.as_string::<i32>();
                (0..n)
                    .map(|i| col.is_valid(i).then(|| col.value(i).as_bytes().to_vec()))
                    .collect()
            }
        };
        let keys: Vec<Option<Vec<u8>>> = match &self.key {
            Some(k) => {
                let col = cast(batch.column(batch.schema().index_of(k)?), &DataType::Utf8)?;
                let col = col.as_string::<i32>();
                (0..n)
                    .map(|i| col.is_valid(i).then(|| col.value(i).as_bytes().to_vec()))
                    .collect()
            }
            None => vec![None; n],
        };
        let now = rskafka::chrono::Utc::now();
        Ok(values
            .into_iter()
            .zip(keys)
            .map(|(value, key)| Record {
                key,
                value,
                headers: BTreeMap::new(),
                timestamp: now,
            })
            .collect())
    }
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(&self, _query_id: &str, schema: SchemaRef) -> Result<()> {
        if let Some(k) = &self.key
            && schema.index_of(k).is_err()
        {
            return plan_err!("sink {}: key column '{k}' is not in the output", self.name);
        }
        if self.format == Format::Raw && schema.fields().len() != 1 {
            return plan_err!(
                "sink {}: format 'raw' writes one column as the value, the query gives {}",
                self.name,
                schema.fields().len()
            );
        }
        self.partition_clients().await?;
        Ok(())
    }

    async fn write(&self, key: &WriteKey, batches: Vec<RecordBatch>) -> Result<()> {
        let parts = self.partition_clients().await?;
        let pc = &parts[key.partition % parts.len()];
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            let records = self.records(b)?;
            for chunk in records.chunks(5_000) {
                pc.produce(chunk.to_vec(), Compression::NoCompression)
                    .await
                    .map_err(|e| self.error("producing", e))?;
            }
        }
        Ok(())
    }

    async fn commit(&self, _query_id: &str, _batch_time: Time, _partitions: usize) -> Result<()> {
        Ok(())
    }
}

/// `connector = 'kafka'` (sink).
#[derive(Debug)]
pub struct KafkaSinkFactory;

const OPTIONS: [&str; 9] = [
    "bootstrap_servers",
    "topic",
    "format",
    "key",
    "security_protocol",
    "ssl_ca_location",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
];

impl SinkFactory for KafkaSinkFactory {
    fn options(&self) -> &[&'static str] {
        &OPTIONS
    }

    fn create(&self, name: &str, options: &ConnectorOptions) -> Result<Arc<dyn Sink>> {
        let (Some(servers), Some(topic)) = (options.get("bootstrap_servers"), options.get("topic"))
        else {
            return plan_err!(
                "sink {name}: connector 'kafka' needs bootstrap_servers = 'host:port' and topic = '...'"
            );
        };
        let format = match options
            .get("format")
            .map(|f| f.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("json") => Format::Json,
            Some("raw") | Some("text") => Format::Raw,
            Some(other) => {
                return plan_err!(
                    "sink {name}: unknown format '{other}' for connector 'kafka'; accepted: json, raw"
                );
            }
        };
        Ok(Arc::new(KafkaSink {
            name: name.to_string(),
            servers: servers.split(',').map(|s| s.trim().to_string()).collect(),
            topic: topic.clone(),
            format,
            key: options.get("key").cloned(),
            security: crate::tls::kafka_security(&format!("sink {name}"), options)?,
            client: tokio::sync::OnceCell::new(),
            partitions: tokio::sync::Mutex::default(),
        }))
    }
}
