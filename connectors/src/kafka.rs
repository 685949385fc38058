//! The `kafka` source, Spark's direct approach: no receiver and no consumer group.
//! Every batch asks the broker for each partition's end offset and plans the range
//! `[from, until)` per partition, capped by `max_rate_per_partition` and the batch's
//! record limit; reading fetches exactly those offsets, so a replay of a range reads
//! the same records. Each Kafka partition is one partition of the batch.
//!
//! ```text
//!  open:       connect (fails after `timeout`), check topics, starting offsets
//!              (or the offsets stored under the query in `offsets_store`)
//!  plan_batch: list partitions (new ones start at earliest), end offsets
//!              ─▶ until = min(end, from + rate cap, record cap, frozen end)
//!  read_batch: fetch [from, until) per partition, in parallel
//!              ─▶ value decoded as json | csv | raw (on_error per record)
//!              ─▶ metadata columns _key _topic _partition _offset _timestamp
//!  commit:     with `offsets_store`, the range's end offsets to flumen_offsets
//! ```
//!
//! Client: `rskafka` (pure Rust, async, on our tokio runtime). Its partition client
//! fetches from an explicit offset with no group coordination or background
//! prefetching, which is exactly the direct approach, and it needs no C toolchain.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::cluster::scan::ClusterScan;
use flumen_engine::registry::{ConnectorOptions, SourceFactory, positive_option};
use flumen_engine::source::{RecordLimit, SourceBatch};
use flumen_engine::{BatchContext, Error, Rejected, Result, Source, SourceRange, plan_err};
use parking_lot::Mutex;
use rskafka::BackoffConfig;
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use serde_json::{Value, json};

use crate::format::{Decoder, OnError};
use crate::offsets_store::OffsetsStore;

/// The metadata columns a Kafka stream may declare beside the value's.
pub const METADATA_COLUMNS: [&str; 5] = ["_key", "_topic", "_partition", "_offset", "_timestamp"];

type Tp = (String, i32);

/// Offsets as `{"topic": {"partition": offset}}` (Spark's JSON form).
fn to_json(offsets: &BTreeMap<Tp, i64>) -> Value {
    let mut out = serde_json::Map::new();
    for ((t, p), o) in offsets {
        out.entry(t.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(p.to_string(), json!(o));
    }
    Value::Object(out)
}

fn from_json(v: &Value) -> Option<BTreeMap<Tp, i64>> {
    let mut out = BTreeMap::new();
    for (t, parts) in v.as_object()? {
        for (p, o) in parts.as_object()? {
            out.insert((t.clone(), p.parse().ok()?), o.as_i64()?);
        }
    }
    Some(out)
}

/// Where a partition starts when the stream first sees it.
#[derive(Debug, Clone)]
enum Starting {
    Earliest,
    Latest,
    /// Per partition; -2 earliest, -1 latest; partitions not named start at earliest.
    Given(BTreeMap<Tp, i64>),
}

#[derive(Debug, Default)]
struct Offsets {
    /// Where the next batch starts, per partition.
    next: BTreeMap<Tp, i64>,
    /// Under `AvailableNow`: the ends when the query started.
    frozen: Option<BTreeMap<Tp, i64>>,
    /// After the first listing, partitions that appear start at earliest (Spark).
    opened: bool,
    /// Records the last planned batch left behind the partitions' ends.
    lag: u64,
}

pub struct KafkaSource {
    name: String,
    /// Its options: what an executor reading its partitions needs.
    options: ConnectorOptions,
    servers: Vec<String>,
    topics: Vec<String>,
    schema: SchemaRef,
    /// The declared columns that come from the value, decoded by `decoder`.
    decoder: Decoder,
    starting: Starting,
    max_rate: Option<u64>,
    timeout: Duration,
    /// TLS and SASL (`security_protocol`).
    security: crate::tls::KafkaSecurity,
    partitions_hint: usize,
    /// `offsets_store`: committed offsets also kept in a database table, under
    /// `offsets_query`, and the stream resumes from them.
    store: Option<(OffsetsStore, String)>,
    client: tokio::sync::OnceCell<Client>,
    partitions: tokio::sync::Mutex<HashMap<Tp, Arc<PartitionClient>>>,
    offsets: Mutex<Offsets>,
}

impl KafkaSource {
    fn from_options(name: &str, schema: SchemaRef, options: &ConnectorOptions) -> Result<Self> {
        let Some(servers) = options.get("bootstrap_servers") else {
            return plan_err!(
                "stream {name}: connector 'kafka' needs bootstrap_servers = 'host:port[,...]' (or the session's SET kafka.bootstrap_servers) and topic = '...'"
            );
        };
        let Some(topics) = options.get("topic") else {
            return plan_err!("stream {name}: connector 'kafka' needs topic = '<name>[,...]'");
        };
        let topics: Vec<String> = topics
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        let starting = match options
            .get("starting_offsets")
            .map(|s| s.trim().to_string())
            .as_deref()
        {
            None | Some("latest") | Some("largest") => Starting::Latest,
            Some("earliest") | Some("smallest") => Starting::Earliest,
            Some(j) if j.starts_with('{') => {
                let parsed = serde_json::from_str::<Value>(j)
                    .ok()
                    .and_then(|v| from_json(&v));
                match parsed {
                    Some(m) => Starting::Given(m),
                    None => {
                        return plan_err!(
                            "stream {name}: starting_offsets JSON must look like {{\"topic\": {{\"0\": 23, \"1\": -2}}}} (-2 earliest, -1 latest), got {j}"
                        );
                    }
                }
            }
            Some(other) => {
                return plan_err!(
                    "stream {name}: starting_offsets '{other}' is not earliest, latest (or smallest, largest) or a JSON object of offsets per partition"
                );
            }
        };
        let timeout = match options.get("timeout") {
            Some(d) => flumen_engine::time::parse_duration(d)
                .map_err(|e| Error::Plan(format!("stream {name}: timeout: {e}")))?,
            None => Duration::from_secs(10),
        };
        // The value's columns: everything declared but the metadata columns.
        let value_fields: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| !METADATA_COLUMNS.contains(&f.name().as_str()))
            .cloned()
            .collect();
        let mut decoder_options = ConnectorOptions::new();
        for k in crate::format::FORMAT_OPTIONS {
            if let Some(v) = options.get(k) {
                decoder_options.insert(k.into(), v.clone());
            }
        }
        match decoder_options
            .get("format")
            .map(|f| f.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("json") => {
                decoder_options.insert("format".into(), "json".into());
            }
            Some("csv") | Some("raw") | Some("text") => {}
            Some(other) => {
                return plan_err!(
                    "stream {name}: unknown format '{other}' for connector 'kafka'; accepted: json, csv, raw"
                );
            }
        }
        let decoder =
            Decoder::from_options(name, Arc::new(Schema::new(value_fields)), &decoder_options)?;
        Ok(KafkaSource {
            name: name.to_string(),
            options: options.clone(),
            servers: servers.split(',').map(|s| s.trim().to_string()).collect(),
            topics,
            schema,
            decoder,
            starting,
            max_rate: positive_option("kafka", options, "max_rate_per_partition")?,
            timeout,
            security: crate::tls::kafka_security(&format!("stream {name}"), options)?,
            partitions_hint: positive_option("kafka", options, "partitions")?.unwrap_or(1) as usize,
            store: match options.get("offsets_store") {
                Some(url) => Some((
                    OffsetsStore::new(name, url, timeout)?,
                    options
                        .get("offsets_query")
                        .cloned()
                        .unwrap_or_else(|| name.to_string()),
                )),
                None => None,
            },
            client: tokio::sync::OnceCell::new(),
            partitions: tokio::sync::Mutex::default(),
            offsets: Mutex::default(),
        })
    }
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("name", &self.name)
            .field("servers", &self.servers)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    fn error(&self, message: String) -> Error {
        Error::Source {
            source_name: self.name.clone(),
            message,
            retryable: false,
        }
    }

    fn broker_error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Source {
            source_name: self.name.clone(),
            message: format!("{what} (broker {}): {e}", self.servers.join(",")),
            retryable: true,
        }
    }

    async fn client(&self) -> Result<&Client> {
        self.client
            .get_or_try_init(|| async {
                let backoff = BackoffConfig {
                    deadline: Some(self.timeout),
                    ..BackoffConfig::default()
                };
                let mut build = ClientBuilder::new(self.servers.clone())
                    .client_id("flumen")
                    .backoff_config(backoff);
                build = self.security.apply(build);
                let build = build.build();
                match tokio::time::timeout(self.timeout, build).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(self.broker_error("cannot connect", e)),
                    Err(_) => Err(self.broker_error(
                        "cannot connect",
                        format!("no answer within {} ms", self.timeout.as_millis()),
                    )),
                }
            })
            .await
    }

    async fn partition(&self, tp: &Tp) -> Result<Arc<PartitionClient>> {
        let mut cache = self.partitions.lock().await;
        if let Some(c) = cache.get(tp) {
            return Ok(Arc::clone(c));
        }
        let client = self.client().await?;
        let pc = client
            .partition_client(tp.0.clone(), tp.1, UnknownTopicHandling::Error)
            .await
            .map_err(|e| self.broker_error(&format!("partition {}/{}", tp.0, tp.1), e))?;
        let pc = Arc::new(pc);
        cache.insert(tp.clone(), Arc::clone(&pc));
        Ok(pc)
    }

    /// Every partition of the stream's topics, as the broker says now.
    async fn list_partitions(&self) -> Result<Vec<Tp>> {
        let client = self.client().await?;
        let topics = client
            .list_topics()
            .await
            .map_err(|e| self.broker_error("listing topics", e))?;
        let mut out = Vec::new();
        for t in &self.topics {
            let Some(topic) = topics.iter().find(|x| &x.name == t) else {
                let mut names: Vec<&str> = topics.iter().map(|x| x.name.as_str()).collect();
                names.sort();
                return Err(self.error(format!(
                    "topic '{t}' does not exist on {}; topics there: {}",
                    self.servers.join(","),
                    if names.is_empty() {
                        "(none)".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            };
            out.extend(topic.partitions.iter().map(|p| (t.clone(), *p)));
        }
        Ok(out)
    }

    async fn offset(&self, tp: &Tp, at: OffsetAt) -> Result<i64> {
        let pc = self.partition(tp).await?;
        pc.get_offset(at)
            .await
            .map_err(|e| self.broker_error(&format!("offsets of {}/{}", tp.0, tp.1), e))
    }

    /// End offsets of every partition, and start offsets of partitions seen first now.
    async fn ends(&self) -> Result<BTreeMap<Tp, i64>> {
        let parts = self.list_partitions().await?;
        let ends =
            futures::future::try_join_all(parts.iter().map(|tp| self.offset(tp, OffsetAt::Latest)))
                .await?;
        let new: Vec<&Tp> = {
            let o = self.offsets.lock();
            parts
                .iter()
                .filter(|tp| !o.next.contains_key(*tp))
                .collect()
        };
        let opened = self.offsets.lock().opened;
        for tp in new {
            let start = match &self.starting {
                _ if opened => -2,
                Starting::Latest => -1,
                Starting::Earliest => -2,
                Starting::Given(m) => m.get(tp).copied().unwrap_or(-2),
            };
            let start = match start {
                -1 => self.offset(tp, OffsetAt::Latest).await?,
                -2 => self.offset(tp, OffsetAt::Earliest).await?,
                n => n,
            };
            self.offsets.lock().next.insert(tp.clone(), start);
        }
        self.offsets.lock().opened = true;
        Ok(parts.into_iter().zip(ends).collect())
    }

    async fn fetch(
        &self,
        tp: &Tp,
        from: i64,
        until: i64,
    ) -> Result<Vec<rskafka::record::RecordAndOffset>> {
        let pc = self.partition(tp).await?;
        let mut out = Vec::with_capacity((until - from).max(0) as usize);
        let mut offset = from;
        while offset < until {
            let (records, high) = pc
                .fetch_records(offset, 1..16 * 1024 * 1024, 500)
                .await
                .map_err(|e| {
                    self.broker_error(&format!("fetching {}/{}@{offset}", tp.0, tp.1), e)
                })?;
            if records.is_empty() {
                if high <= offset {
                    return Err(self.error(format!(
                        "{}/{}: offsets {offset}..{until} were planned but the partition ends at {high} (was the topic recreated?)",
                        tp.0, tp.1
                    )));
                }
                // Offsets missing in the log (compaction, transactions): go on.
                offset += 1;
                continue;
            }
            for r in records {
                if r.offset >= until {
                    break;
                }
                offset = r.offset + 1;
                out.push(r);
            }
        }
        Ok(out)
    }

    /// One partition's records as a batch of the declared schema.
    fn to_batch(
        &self,
        tp: &Tp,
        records: &[rskafka::record::RecordAndOffset],
        rejected: &mut Vec<Rejected>,
    ) -> Result<RecordBatch> {
        let position = |i: usize| format!("{}/{}@{}", tp.0, tp.1, records[i].offset);
        // Values must be UTF-8 text; others are rejected before decoding.
        let mut lines: Vec<&str> = Vec::with_capacity(records.len());
        let mut index: Vec<u32> = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let value = r.record.value.as_deref().unwrap_or_default();
            match std::str::from_utf8(value) {
                Ok(v) => {
                    lines.push(v);
                    index.push(i as u32);
                }
                Err(e) => self.decoder.reject_raw(
                    &position(i),
                    &String::from_utf8_lossy(value),
                    format!("value is not UTF-8: {e}"),
                    rejected,
                )?,
            }
        }
        let all = index.len() == records.len();
        let decoded = self
            .decoder
            .decode_keeping(&lines, |i| position(index[i] as usize))?;
        rejected.extend(decoded.rejected);
        let rows: Option<Vec<u32>> = match decoded.kept {
            Some(kept) => Some(kept.iter().map(|k| index[*k as usize]).collect()),
            None if all => None,
            None => Some(index),
        };
        let meta = |name: &str| -> Result<ArrayRef> {
            let a: ArrayRef = match name {
                "_key" => Arc::new(StringArray::from_iter(records.iter().map(|r| {
                    r.record
                        .key
                        .as_deref()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                }))),
                "_topic" => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    tp.0.as_str(),
                    records.len(),
                ))),
                "_partition" => Arc::new(Int32Array::from(vec![tp.1; records.len()])),
                "_offset" => Arc::new(Int64Array::from_iter_values(
                    records.iter().map(|r| r.offset),
                )),
                _ => Arc::new(TimestampMillisecondArray::from_iter_values(
                    records
                        .iter()
                        .map(|r| r.record.timestamp.timestamp_millis()),
                )),
            };
            Ok(match &rows {
                Some(rows) => take(&a, &UInt32Array::from(rows.clone()), None)?,
                None => a,
            })
        };
        let value = decoded.batch;
        let mut cols = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields() {
            let col = if METADATA_COLUMNS.contains(&f.name().as_str()) {
                let a = meta(f.name())?;
                if a.data_type() == f.data_type() {
                    a
                } else {
                    cast(&a, f.data_type())?
                }
            } else {
                Arc::clone(value.column_by_name(f.name()).expect("decoded column"))
            };
            cols.push(col);
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            cols,
            &datafusion::arrow::record_batch::RecordBatchOptions::new()
                .with_row_count(Some(value.num_rows())),
        )?)
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!(
            "kafka topics {}, {}",
            self.topics.join(","),
            self.decoder.describe()
        )
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn partitions(&self) -> usize {
        self.partitions_hint
    }

    async fn open(&self, _projection: Option<&[usize]>) -> Result<()> {
        if let Some((store, query)) = &self.store {
            let stored = store.load(query, &self.topics).await?;
            if !stored.is_empty() {
                log::info!(
                    "stream {}: resuming query '{query}' from offsets_store: {}",
                    self.name,
                    to_json(&stored)
                );
                let mut o = self.offsets.lock();
                o.next = stored;
                // Partitions not stored appeared since: they start at earliest.
                o.opened = true;
            }
        }
        self.ends().await?;
        Ok(())
    }

    async fn restore(&self, last: &SourceRange) -> Result<()> {
        let Some(end) = from_json(&last.end) else {
            return plan_err!("kafka source {}: bad range {last:?}", self.name);
        };
        let mut o = self.offsets.lock();
        // The checkpoint wins over starting_offsets and offsets_store.
        o.next.extend(end);
        o.opened = true;
        Ok(())
    }

    async fn commit(&self, range: &SourceRange) -> Result<()> {
        let Some((store, query)) = &self.store else {
            return Ok(());
        };
        if range.is_empty() {
            return Ok(());
        }
        let Some(end) = from_json(&range.end) else {
            return plan_err!("kafka source {}: bad range {range:?}", self.name);
        };
        store.save(query, &end).await
    }

    async fn freeze_available_now(&self) -> Result<()> {
        let ends = self.ends().await?;
        self.offsets.lock().frozen = Some(ends);
        Ok(())
    }

    async fn plan_batch(&self, batch: &BatchContext) -> Result<SourceRange> {
        let ends = self.ends().await?;
        let mut o = self.offsets.lock();
        let start = o.next.clone();
        let mut until = BTreeMap::new();
        for (tp, from) in &start {
            let mut end = ends.get(tp).copied().unwrap_or(*from).max(*from);
            if let Some(f) = o.frozen.as_ref() {
                end = end.min(f.get(tp).copied().unwrap_or(*from)).max(*from);
            }
            if let Some(rate) = self.max_rate {
                let cap = (rate as u128 * batch.interval.as_millis() / 1000).max(1) as i64;
                end = end.min(from + cap);
            }
            until.insert(tp.clone(), end);
        }
        if let Some(max) = batch.max_records {
            // Share the cap by lag, as Spark's rate controller does.
            let lag: i64 = until.iter().map(|(tp, e)| e - start[tp]).sum();
            if lag > max as i64 {
                for (tp, e) in until.iter_mut() {
                    let l = *e - start[tp];
                    let share = (l as i128 * max as i128 / lag as i128) as i64;
                    *e = start[tp] + share;
                }
            }
        }
        o.lag = until
            .iter()
            .map(|(tp, e)| (ends.get(tp).copied().unwrap_or(*e) - e).max(0) as u64)
            .sum();
        o.next = until.clone();
        Ok(SourceRange {
            start: to_json(&start),
            end: to_json(&until),
        })
    }

    async fn read_batch(&self, range: &SourceRange) -> Result<SourceBatch> {
        let (Some(start), Some(end)) = (from_json(&range.start), from_json(&range.end)) else {
            return plan_err!("kafka source {}: bad range {range:?}", self.name);
        };
        let work: Vec<(Tp, i64, i64)> = end
            .iter()
            .map(|(tp, until)| (tp.clone(), start.get(tp).copied().unwrap_or(*until), *until))
            .collect();
        let fetched = futures::future::try_join_all(
            work.iter()
                .map(|(tp, from, until)| self.fetch(tp, *from, *until)),
        )
        .await?;
        let mut rejected = Vec::new();
        let mut out = Vec::with_capacity(work.len());
        for ((tp, _, _), records) in work.iter().zip(&fetched) {
            if records.is_empty() {
                out.push(Vec::new());
                continue;
            }
            out.push(vec![self.to_batch(tp, records, &mut rejected)?]);
        }
        Ok(SourceBatch {
            partitions: out,
            rejected,
        })
    }

    fn cluster_scan(&self, range: &SourceRange, _partitions: usize) -> Result<Option<ClusterScan>> {
        // Bad records set aside go to the driver's dead letter: such a stream is read here.
        if self.sets_aside_bad_rows() {
            return Ok(None);
        }
        let (Some(start), Some(end)) = (from_json(&range.start), from_json(&range.end)) else {
            return plan_err!("kafka source {}: bad range {range:?}", self.name);
        };
        // The executors read the log only: the offsets store is the driver's.
        let mut options = self.options.clone();
        options.remove("offsets_store");
        options.remove("offsets_query");
        // Spark's KafkaRDD: a part per topic partition, its offsets [from, until).
        let mut parts: Vec<Value> = end
            .iter()
            .map(|(tp, until)| {
                let from = start.get(tp).copied().unwrap_or(*until);
                json!({"name": self.name, "options": options, "topic": tp.0,
                       "partition": tp.1, "from": from, "until": until})
            })
            .collect();
        if parts.is_empty() {
            parts.push(json!({"name": self.name, "options": options, "topic": "", "partition": 0, "from": 0, "until": 0}));
        }
        Ok(Some(ClusterScan {
            kind: "kafka".into(),
            parts,
            rows: None,
            ..Default::default()
        }))
    }

    fn record_limit(&self) -> RecordLimit {
        RecordLimit::Honoured
    }

    fn lag(&self) -> Option<u64> {
        Some(self.offsets.lock().lag)
    }

    async fn is_drained(&self) -> Result<bool> {
        let frozen = self.offsets.lock().frozen.clone();
        let ends = match frozen {
            Some(f) => f,
            None => self.ends().await?,
        };
        let o = self.offsets.lock();
        Ok(ends
            .iter()
            .all(|(tp, end)| o.next.get(tp).is_some_and(|n| n >= end)))
    }

    fn sets_aside_bad_rows(&self) -> bool {
        self.decoder.on_error() != OnError::Fail
    }
}

/// The clients of the streams this executor read, by stream name and options: a
/// partition's client is made once, not every batch.
static READERS: std::sync::LazyLock<Mutex<HashMap<String, Arc<KafkaSource>>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// A part of a kafka scan (`cluster_scan`), read on an executor: one topic partition's
/// offsets `[from, until)`.
pub(crate) fn read_part(part: &Value, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let bad = || Error::Internal(format!("a kafka scan's bad part: {part}"));
    let until = part.get("until").and_then(|v| v.as_i64()).ok_or_else(bad)?;
    let from = part.get("from").and_then(|v| v.as_i64()).ok_or_else(bad)?;
    if from >= until {
        return Ok(Vec::new());
    }
    let name = part.get("name").and_then(|n| n.as_str()).ok_or_else(bad)?;
    let options = part.get("options").ok_or_else(bad)?;
    let key = format!("{name} {options}");
    let source = READERS.lock().get(&key).cloned();
    let source = match source {
        Some(s) => s,
        None => {
            let (name, options) = crate::named_options(part, "a kafka scan")?;
            let s = Arc::new(KafkaSource::from_options(
                &name,
                Arc::clone(schema),
                &options,
            )?);
            READERS.lock().insert(key, Arc::clone(&s));
            s
        }
    };
    let tp: Tp = (
        part.get("topic")
            .and_then(|t| t.as_str())
            .ok_or_else(bad)?
            .to_string(),
        part.get("partition")
            .and_then(|p| p.as_i64())
            .ok_or_else(bad)? as i32,
    );
    tokio::runtime::Handle::current().block_on(async {
        let records = source.fetch(&tp, from, until).await?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut rejected = Vec::new();
        let batch = source.to_batch(&tp, &records, &mut rejected)?;
        if let Some(r) = rejected.first() {
            // Scans reach executors only under on_error = 'fail'.
            return Err(source.error(format!("{}: {}", r.position, r.error)));
        }
        Ok(vec![batch])
    })
}

/// `connector = 'kafka'`.
#[derive(Debug)]
pub struct KafkaFactory;

const KAFKA_OPTIONS: [&str; 16] = [
    "security_protocol",
    "ssl_ca_location",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "bootstrap_servers",
    "topic",
    "starting_offsets",
    "max_rate_per_partition",
    "format",
    "on_error",
    "strict",
    "timeout",
    "partitions",
    "offsets_store",
    "offsets_query",
];

impl SourceFactory for KafkaFactory {
    fn options(&self) -> &[&'static str] {
        &KAFKA_OPTIONS
    }

    fn create(
        &self,
        name: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(KafkaSource::from_options(name, schema, options)?))
    }

    fn default_schema(&self, options: &ConnectorOptions) -> Option<SchemaRef> {
        match options
            .get("format")
            .map(|f| f.to_ascii_lowercase())
            .as_deref()
        {
            Some("raw") | Some("text") => Some(Arc::new(Schema::new(vec![
                datafusion::arrow::datatypes::Field::new(
                    "value",
                    datafusion::arrow::datatypes::DataType::Utf8,
                    true,
                ),
            ]))),
            _ => None,
        }
    }
}
