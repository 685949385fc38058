//! The `files` sink: each batch's output as files on any object-store URL, written so
//! that a replayed batch rewrites the same files with the same content, and a commit
//! log that lets readers see only committed batches (Spark's `_spark_metadata`).
//!
//! ```text
//!  write(T, p):  part-<T ms, 13 digits>-<p, 5 digits>.<ext>   (one object put: atomic)
//!                or, with prefix/suffix (text): <prefix>-<T ms>[-<p>].<suffix>
//!                with partition_by = 'col': col=<value>/part-...
//!                with partition_by = 'a, b': a=<value>/b=<value>/part-...
//!  commit(T):    _flumen_log/<T ms, 13 digits>   JSON {"batch_time_ms", "files": [...]}
//!  every 10th:   _flumen_log/<T>.compact          the union of every entry so far;
//!                then the entries it folded in are deleted
//! ```
//!
//! With `partition_commit_trigger = 'partition-time'` (Flink's partition commit), a
//! partition folder gets an empty `_SUCCESS` file once the query's watermark passes its
//! time (its values put into `partition_time_pattern`) plus `partition_commit_delay`:
//! the partitions of committed batches wait in `pending` (after a restart, found again
//! from the commit log less the folders that have their `_SUCCESS`).
//!
//! Empty batches write neither files nor a log entry. A reader that honours the log
//! (Flumen's `files` source does) takes the union of the files the log's entries list
//! (an entry may repeat files another lists: a replayed batch, or a compaction that
//! has written its `.compact` and not yet deleted what it folded in).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{Array, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::cluster::write::ClusterWrite;
use flumen_engine::registry::{ConnectorOptions, SinkFactory};
use flumen_engine::{Error, Result, Sink, Time, WriteKey, plan_err};
use object_store::{ObjectStoreExt, PutPayload};
use parking_lot::Mutex;

use crate::store::{Location, STORE_OPTIONS};

/// The folder of the commit log, beside the data.
pub const LOG_DIR: &str = "_flumen_log";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Parquet,
    Csv,
    Json,
    Text,
    Arrow,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Text => "txt",
            Format::Arrow => "arrow",
        }
    }
}

#[derive(Debug)]
pub struct FilesSink {
    name: String,
    /// Its options: what a task on an executor writing it needs.
    options: ConnectorOptions,
    location: Location,
    format: Format,
    /// Hive partition columns, outermost folder first (empty: none).
    partition_by: Vec<String>,
    /// Spark's `saveAsTextFiles(prefix, suffix)` naming.
    prefix: Option<String>,
    suffix: Option<String>,
    /// Files written per batch, until its commit.
    written: Mutex<BTreeMap<Time, Vec<String>>>,
    /// Log entries written since the last compaction (`None`: not counted yet).
    since_compaction: tokio::sync::Mutex<Option<usize>>,
    /// Flink's partition commit by partition time, when asked for.
    partition_commit: Option<PartitionCommit>,
}

/// The name of the file that marks a partition complete (Flink's and Hadoop's).
pub const SUCCESS_FILE: &str = "_SUCCESS";

/// `partition_commit_trigger = 'partition-time'`: a partition is committed (its
/// [`SUCCESS_FILE`] written) once the watermark passes its time plus `delay`.
#[derive(Debug)]
struct PartitionCommit {
    delay_ms: i64,
    /// Its time: `$column` replaced by the partition's value (Flink's
    /// `partition.time-extractor.timestamp-pattern`), read as `yyyy-MM-dd[ HH:mm[:ss]]`.
    pattern: String,
    /// Partition folders of committed batches without their file yet, each with its
    /// time (read once, as it enters); `None` until found again from the commit log
    /// (the first watermark after a start).
    pending: tokio::sync::Mutex<Option<BTreeMap<String, i64>>>,
}

impl PartitionCommit {
    fn from_options(
        name: &str,
        options: &ConnectorOptions,
        partition_by: &[String],
    ) -> Result<Option<Self>> {
        let Some(trigger) = options.get("partition_commit_trigger") else {
            for o in ["partition_commit_delay", "partition_time_pattern"] {
                if options.contains_key(o) {
                    return plan_err!(
                        "sink {name}: {o} goes with partition_commit_trigger = 'partition-time'"
                    );
                }
            }
            return Ok(None);
        };
        if !trigger.eq_ignore_ascii_case("partition-time") {
            return plan_err!(
                "sink {name}: partition_commit_trigger '{trigger}' is not supported; \
                 'partition-time' commits a partition (writes its {SUCCESS_FILE}) once the \
                 watermark passes its time plus partition_commit_delay"
            );
        }
        let Some(first) = partition_by.first() else {
            return plan_err!(
                "sink {name}: partition_commit_trigger commits partitions, and the sink has \
                 none: set partition_by"
            );
        };
        let delay_ms = match options.get("partition_commit_delay") {
            Some(d) => flumen_engine::time::parse_duration_text(d, true)
                .map_err(|e| Error::Plan(format!("sink {name}: partition_commit_delay: {e}")))?
                .as_millis() as i64,
            None => 0,
        };
        let pattern = options
            .get("partition_time_pattern")
            .cloned()
            .unwrap_or_else(|| format!("${first}"));
        // Every `$name` in the pattern is a partition column.
        for (i, _) in pattern.match_indices('$') {
            let name_len = pattern[i + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(pattern.len() - i - 1);
            let column = &pattern[i + 1..i + 1 + name_len];
            if !partition_by.iter().any(|p| p == column) {
                return plan_err!(
                    "sink {name}: partition_time_pattern '{pattern}' names ${column}, which is not \
                     a partition_by column ({})",
                    partition_by.join(", ")
                );
            }
        }
        Ok(Some(Self {
            delay_ms,
            pattern,
            pending: tokio::sync::Mutex::new(None),
        }))
    }

    /// The time (ms) of the partition in folder `dir` (`a=<value>/b=<value>`).
    fn time_of(&self, sink: &str, dir: &str) -> Result<i64> {
        let mut values: Vec<(String, String)> = dir
            .split('/')
            .filter_map(|part| part.split_once('='))
            .map(|(c, v)| (c.to_string(), unescape(v)))
            .collect();
        // Longest names first: `$dt` is not replaced inside `$dt_hour`.
        values.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        let mut text = self.pattern.clone();
        for (c, v) in &values {
            text = text.replace(&format!("${c}"), v);
        }
        let text = text.trim();
        let full = match text.len() {
            10 => format!("{text}T00:00:00"),
            16 => format!("{text}:00"),
            _ => text.to_string(),
        };
        datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(&full)
            .map(|ns| ns.div_euclid(1_000_000))
            .map_err(|_| Error::Sink {
                sink_name: sink.to_string(),
                message: format!(
                    "partition {dir}: '{text}' (partition_time_pattern '{}') is not a time \
                     (yyyy-MM-dd, yyyy-MM-dd HH:mm or yyyy-MM-dd HH:mm:ss); its {SUCCESS_FILE} \
                     cannot be written",
                    self.pattern
                ),
                retryable: false,
            })
    }
}

/// A path segment's value with its `%XX` escapes ([`escape`]) decoded.
fn unescape(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every this many entries, the commit log is compacted into one `.compact` entry.
pub const COMPACT_EVERY: usize = 10;

/// Whether `name` (the last path segment) is a commit-log entry: `<13 digits>` or
/// `<13 digits>.compact`.
fn is_log_entry(name: &str) -> bool {
    let stem = name.strip_suffix(".compact").unwrap_or(name);
    stem.len() == 13 && stem.bytes().all(|b| b.is_ascii_digit())
}

impl FilesSink {
    fn error(&self, message: String) -> Error {
        Error::Sink {
            sink_name: self.name.clone(),
            message,
            retryable: true,
        }
    }

    fn file_name(&self, key: &WriteKey) -> String {
        let t = key.batch_time.as_millis();
        match &self.prefix {
            Some(prefix) => {
                let suffix = self.suffix.as_deref().unwrap_or(self.format.ext());
                if key.partition == 0 {
                    format!("{prefix}-{t}.{suffix}")
                } else {
                    format!("{prefix}-{t}-{}.{suffix}", key.partition)
                }
            }
            None => format!("part-{t:013}-{:05}.{}", key.partition, self.format.ext()),
        }
    }

    fn encode(&self, batches: &[RecordBatch]) -> Result<Vec<u8>> {
        let schema = batches[0].schema();
        let mut out = Vec::new();
        match self.format {
            Format::Parquet => {
                let mut w =
                    datafusion::parquet::arrow::ArrowWriter::try_new(&mut out, schema, None)
                        .map_err(|e| self.error(format!("encoding parquet: {e}")))?;
                for b in batches {
                    w.write(b)
                        .map_err(|e| self.error(format!("encoding parquet: {e}")))?;
                }
                w.close()
                    .map_err(|e| self.error(format!("encoding parquet: {e}")))?;
            }
            Format::Csv => {
                if let Some(bytes) = crate::csv_out::encode(batches) {
                    return Ok(bytes);
                }
                let mut w = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in batches {
                    w.write(b)?;
                }
            }
            Format::Json => {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            Format::Arrow => {
                let mut w = datafusion::arrow::ipc::writer::FileWriter::try_new(&mut out, &schema)?;
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            Format::Text => {
                for b in batches {
                    let col = cast(b.column(0), &DataType::Utf8)?;
                    let col = col
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .expect("cast to Utf8");
                    for i in 0..col.len() {
                        if col.is_valid(i) {
                            out.extend_from_slice(col.value(i).as_bytes());
                        }
                        out.push(b'\n');
                    }
                }
            }
        }
        Ok(out)
    }

    /// The store's path of `name` (inside the sink's folder).
    fn path_of(&self, name: &str) -> object_store::path::Path {
        // Already escaped (Hive's %XX): parsed as is, not escaped again.
        let joined = if self.location.prefix.as_ref().is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.location.prefix)
        };
        object_store::path::Path::parse(&joined).unwrap_or_else(|_| self.location.child(name))
    }

    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path_of(name);
        self.location
            .store
            .put(&path, PutPayload::from(Bytes::from(bytes)))
            .await
            .map_err(|e| self.error(format!("writing {}: {e}", self.location.url_of(name))))?;
        Ok(())
    }

    /// The rows of `batches` split by the value of the `partition_by` column, which
    /// the files leave out (it is in the path).
    fn split(
        &self,
        batches: &[RecordBatch],
        column: &str,
    ) -> Result<Vec<(String, Vec<RecordBatch>)>> {
        let mut groups: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
        for b in batches {
            let index = b.schema().index_of(column).map_err(|_| {
                Error::Plan(format!(
                    "sink {}: partition_by column '{column}' is not in the output",
                    self.name
                ))
            })?;
            let values = cast(b.column(index), &DataType::Utf8)?;
            let values = values
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8");
            // One pass: the rows of each value, then one `take` per value.
            let mut rows: BTreeMap<Option<&str>, Vec<u32>> = BTreeMap::new();
            for i in 0..values.len() {
                let v = values.is_valid(i).then(|| values.value(i));
                rows.entry(v).or_default().push(i as u32);
            }
            let mut rest = b.clone();
            rest.remove_column(index);
            for (v, indices) in rows {
                let part = take_record_batch(&rest, &UInt32Array::from(indices))?;
                // Hive's name for null.
                let dir = format!(
                    "{column}={}",
                    v.map(escape)
                        .unwrap_or_else(|| "__HIVE_DEFAULT_PARTITION__".into())
                );
                groups.entry(dir).or_default().push(part);
            }
        }
        Ok(groups.into_iter().collect())
    }

    /// [`Self::split`] by every column of `columns` in turn: one folder level each.
    fn split_all(
        &self,
        batches: &[RecordBatch],
        columns: &[String],
    ) -> Result<Vec<(String, Vec<RecordBatch>)>> {
        let Some((first, rest)) = columns.split_first() else {
            return Ok(vec![(String::new(), batches.to_vec())]);
        };
        let mut out = Vec::new();
        for (dir, part) in self.split(batches, first)? {
            for (sub, rows) in self.split_all(&part, rest)? {
                let path = if sub.is_empty() {
                    dir.clone()
                } else {
                    format!("{dir}/{sub}")
                };
                out.push((path, rows));
            }
        }
        Ok(out)
    }
}

impl FilesSink {
    /// Writes one partition of one batch; the files written (none for no rows).
    async fn write_files(&self, key: &WriteKey, batches: Vec<RecordBatch>) -> Result<Vec<String>> {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let name = self.file_name(key);
        let mut files = Vec::new();
        if self.partition_by.is_empty() {
            let bytes = self.encode(&batches)?;
            self.put(&name, bytes).await?;
            files.push(name);
            return Ok(files);
        }
        for (dir, part) in self.split_all(&batches, &self.partition_by)? {
            let path = format!("{dir}/{name}");
            let bytes = self.encode(&part)?;
            self.put(&path, bytes).await?;
            files.push(path);
        }
        Ok(files)
    }
}

/// A partition of a batch written by a task on an executor (the sink's
/// `write_on_cluster`): the sink made again from its name and options.
pub(crate) fn write_part(
    spec: &serde_json::Value,
    batch_ms: i64,
    partition: usize,
    batches: Vec<RecordBatch>,
) -> Result<Vec<String>> {
    let (name, options) = crate::named_options(spec, "a files sink's task")?;
    let sink = FilesSink::from_options(&name, &options)?;
    let key = WriteKey {
        query_id: String::new(),
        batch_time: Time::from_millis(batch_ms),
        partition,
    };
    tokio::runtime::Handle::current().block_on(sink.write_files(&key, batches))
}

/// A partition value as a path segment: `/` and other awkward characters %-escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_ascii_alphanumeric() || "-_.".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

#[async_trait]
impl Sink for FilesSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(&self, _query_id: &str, schema: SchemaRef) -> Result<()> {
        if self.format == Format::Text && schema.fields().len() != 1 {
            return plan_err!(
                "sink {}: format 'text' writes one column, the query gives {} ({}); select one (e.g. concat_ws(',', ...))",
                self.name,
                schema.fields().len(),
                crate::column_list(&schema)
            );
        }
        for c in &self.partition_by {
            if schema.index_of(c).is_err() {
                return plan_err!(
                    "sink {}: partition_by column '{c}' is not in the output ({})",
                    self.name,
                    crate::column_list(&schema)
                );
            }
        }
        if self.partition_by.len() >= schema.fields().len() {
            return plan_err!(
                "sink {}: partition_by takes every column of the output ({}), leaving none for \
                 the files",
                self.name,
                crate::column_list(&schema)
            );
        }
        Ok(())
    }

    async fn write(&self, key: &WriteKey, batches: Vec<RecordBatch>) -> Result<()> {
        let files = self.write_files(key, batches).await?;
        self.written
            .lock()
            .entry(key.batch_time)
            .or_default()
            .extend(files);
        Ok(())
    }

    /// Each partition is its own files, encoded on its own core.
    fn writes_partitions_in_parallel(&self) -> bool {
        true
    }

    fn write_on_cluster(&self) -> Option<ClusterWrite> {
        Some(ClusterWrite {
            kind: "files".into(),
            spec: serde_json::json!({"name": self.name, "options": self.options}),
        })
    }

    fn written_by_tasks(&self, batch_time: Time, written: Vec<String>) -> Result<()> {
        self.written
            .lock()
            .entry(batch_time)
            .or_default()
            .extend(written);
        Ok(())
    }

    async fn commit(&self, _query_id: &str, batch_time: Time, _partitions: usize) -> Result<()> {
        let mut files = self.written.lock().remove(&batch_time).unwrap_or_default();
        if files.is_empty() {
            return Ok(());
        }
        files.sort();
        files.dedup();
        let entry = serde_json::json!({
            "batch_time_ms": batch_time.as_millis(),
            "files": files,
        });
        self.put(
            &format!("{LOG_DIR}/{:013}", batch_time.as_millis()),
            serde_json::to_vec(&entry).expect("json"),
        )
        .await?;
        if let Some(pc) = &self.partition_commit
            && let Some(pending) = pc.pending.lock().await.as_mut()
        {
            self.add_pending(pc, pending, files.iter())?;
        }
        let mut since = self.since_compaction.lock().await;
        let count = match *since {
            Some(n) => n + 1,
            None => self
                .log_entries()
                .await?
                .iter()
                .filter(|p| !p.as_ref().ends_with(".compact"))
                .count(),
        };
        *since = Some(count);
        if count >= COMPACT_EVERY {
            self.compact(batch_time).await?;
            *since = Some(0);
        }
        Ok(())
    }

    fn needs_watermark(&self) -> bool {
        self.partition_commit.is_some()
    }

    /// Writes the `_SUCCESS` file of every pending partition whose time plus the
    /// delay the watermark has passed (Flink: `watermark > time + delay`).
    async fn advance_watermark(&self, watermark: Time) -> Result<()> {
        let Some(pc) = &self.partition_commit else {
            return Ok(());
        };
        let mut pending = pc.pending.lock().await;
        if pending.is_none() {
            *pending = Some(self.uncommitted_partitions(pc).await?);
        }
        let Some(pending) = pending.as_mut() else {
            return Ok(());
        };
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, time)| watermark.as_millis() > time.saturating_add(pc.delay_ms))
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in due {
            self.put(&format!("{dir}/{SUCCESS_FILE}"), Vec::new())
                .await?;
            pending.remove(&dir);
        }
        Ok(())
    }
}

impl FilesSink {
    /// The partition folders of the files the commit log lists that have no
    /// [`SUCCESS_FILE`] yet: what a restarted sink still has to commit.
    async fn uncommitted_partitions(&self, pc: &PartitionCommit) -> Result<BTreeMap<String, i64>> {
        let mut log = CommitLog::default();
        log.refresh(&self.location).await?;
        let dirs: BTreeSet<&str> = log
            .files
            .iter()
            .filter_map(|f| Some(f.rsplit_once('/')?.0))
            .collect();
        let mut pending = BTreeMap::new();
        for dir in dirs {
            // Looked up by the path `put` wrote (stores list names in their own escaping).
            match self
                .location
                .store
                .head(&self.path_of(&format!("{dir}/{SUCCESS_FILE}")))
                .await
            {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => {
                    pending.insert(dir.to_string(), pc.time_of(&self.name, dir)?);
                }
                Err(e) => {
                    return Err(self.error(format!(
                        "reading {}: {e}",
                        self.location.url_of(&format!("{dir}/{SUCCESS_FILE}"))
                    )));
                }
            }
        }
        Ok(pending)
    }

    /// The partition folders of `files` (committed) added to `pending` with their time.
    fn add_pending<'a>(
        &self,
        pc: &PartitionCommit,
        pending: &mut BTreeMap<String, i64>,
        files: impl Iterator<Item = &'a String>,
    ) -> Result<()> {
        for dir in files.filter_map(|f| Some(f.rsplit_once('/')?.0)) {
            if !pending.contains_key(dir) {
                pending.insert(dir.to_string(), pc.time_of(&self.name, dir)?);
            }
        }
        Ok(())
    }

    /// The entries of the commit log, oldest first.
    async fn log_entries(&self) -> Result<Vec<object_store::path::Path>> {
        use futures::TryStreamExt;
        let log = self.location.child(LOG_DIR);
        let mut listed: Vec<_> = self
            .location
            .store
            .list(Some(&log))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.error(format!("listing {}/{LOG_DIR}: {e}", self.location.url)))?;
        listed.retain(|p| p.filename().is_some_and(is_log_entry));
        listed.sort();
        Ok(listed)
    }

    /// Folds every entry of the log into `<T>.compact`, then deletes them. A crash
    /// in between leaves entries the compact file repeats: readers take the union.
    async fn compact(&self, batch_time: Time) -> Result<()> {
        let entries = self.log_entries().await?;
        let mut files = std::collections::BTreeSet::new();
        for path in &entries {
            for f in read_log_entry(&self.location, path).await? {
                files.insert(f);
            }
        }
        let name = format!("{:013}.compact", batch_time.as_millis());
        let entry = serde_json::json!({
            "batch_time_ms": batch_time.as_millis(),
            "files": files,
        });
        self.put(
            &format!("{LOG_DIR}/{name}"),
            serde_json::to_vec(&entry).expect("json"),
        )
        .await?;
        for path in entries {
            if path.filename() == Some(name.as_str()) {
                continue;
            }
            match self.location.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(format!("deleting {path}: {e}"))),
            }
        }
        Ok(())
    }
}

/// The files one commit-log entry lists.
async fn read_log_entry(
    location: &Location,
    path: &object_store::path::Path,
) -> Result<Vec<String>> {
    let bytes = location
        .store
        .get(path)
        .await
        .map_err(|e| Error::Plan(format!("reading {path}: {e}")))?
        .bytes()
        .await
        .map_err(|e| Error::Plan(format!("reading {path}: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Plan(format!("{path} is not a commit log entry: {e}")))?;
    Ok(v["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect())
}

/// What a reader has read of a commit log: the entries, and the files they list.
#[derive(Debug, Default)]
pub struct CommitLog {
    entries: std::collections::HashSet<object_store::path::Path>,
    pub files: std::collections::HashSet<String>,
}

impl CommitLog {
    /// Reads the entries of the log in `location` not read before (one per committed
    /// batch), so a reader polling every batch reads each entry once.
    pub async fn refresh(&mut self, location: &Location) -> Result<()> {
        use futures::TryStreamExt;
        let log = location.child(LOG_DIR);
        let listed: Vec<_> = location
            .store
            .list(Some(&log))
            .try_collect()
            .await
            .map_err(|e| Error::Plan(format!("listing {}/{LOG_DIR}: {e}", location.url)))?;
        let listed: std::collections::HashSet<_> = listed
            .into_iter()
            .map(|m| m.location)
            .filter(|p| p.filename().is_some_and(is_log_entry))
            .collect();
        // Entries a compaction folded in and deleted are forgotten.
        self.entries.retain(|p| listed.contains(p));
        for path in listed {
            if self.entries.contains(&path) {
                continue;
            }
            let files = match read_log_entry(location, &path).await {
                Ok(files) => files,
                // Deleted since the listing by a compaction, whose `.compact` entry
                // (written first) the next refresh reads.
                Err(_) if location.store.head(&path).await.is_err() => continue,
                Err(e) => return Err(e),
            };
            self.files.extend(files);
            self.entries.insert(path);
        }
        Ok(())
    }
}

/// `connector = 'files'` (sink).
#[derive(Debug)]
pub struct FilesSinkFactory;

const SINK_OPTIONS: [&str; 12] = [
    "path",
    "format",
    "partition_by",
    "partition_commit_trigger",
    "partition_commit_delay",
    "partition_time_pattern",
    "prefix",
    "suffix",
    STORE_OPTIONS[0],
    STORE_OPTIONS[1],
    STORE_OPTIONS[2],
    STORE_OPTIONS[3],
];

impl SinkFactory for FilesSinkFactory {
    fn options(&self) -> &[&'static str] {
        &SINK_OPTIONS
    }

    fn create(&self, name: &str, options: &ConnectorOptions) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(FilesSink::from_options(name, options)?))
    }
}

impl FilesSink {
    fn from_options(name: &str, options: &ConnectorOptions) -> Result<Self> {
        let Some(path) = options.get("path") else {
            return plan_err!("sink {name}: connector 'files' needs path = '<directory or URL>'");
        };
        let format = match options
            .get("format")
            .map(|f| f.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("parquet") => Format::Parquet,
            Some("csv") => Format::Csv,
            Some("json") => Format::Json,
            Some("text") => Format::Text,
            Some("arrow") => Format::Arrow,
            Some(other) => {
                return plan_err!(
                    "sink {name}: unknown format '{other}' for connector 'files'; accepted: parquet, csv, json, text, arrow"
                );
            }
        };
        if (options.contains_key("prefix") || options.contains_key("suffix"))
            && format != Format::Text
        {
            return plan_err!(
                "sink {name}: prefix and suffix (saveAsTextFiles naming) go with format = 'text'"
            );
        }
        // A local directory is created when missing.
        if !path.contains("://") || path.starts_with("file://") {
            let dir = path.strip_prefix("file://").unwrap_or(path);
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Plan(format!("sink {name}: directory '{dir}': {e}")))?;
        }
        let location = crate::store::open(&format!("sink {name}"), path, options)?;
        let partition_by: Vec<String> = options
            .get("partition_by")
            .map(|cols| {
                cols.split(',')
                    .map(|c| c.trim().to_string())
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let partition_commit = PartitionCommit::from_options(name, options, &partition_by)?;
        Ok(FilesSink {
            name: name.to_string(),
            options: options.clone(),
            location,
            format,
            partition_commit,
            partition_by,
            prefix: options.get("prefix").cloned(),
            suffix: options.get("suffix").cloned(),
            written: Mutex::default(),
            since_compaction: tokio::sync::Mutex::new(None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> ConnectorOptions {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn commit(pairs: &[(&str, &str)]) -> Result<Option<PartitionCommit>> {
        let by = ["dt".to_string(), "hm".to_string()];
        PartitionCommit::from_options("s", &options(pairs), &by)
    }

    #[test]
    fn a_partition_time_comes_from_its_escaped_folder_names_and_the_pattern() {
        let pc = commit(&[
            ("partition_commit_trigger", "partition-time"),
            ("partition_time_pattern", "$dt $hm:00"),
        ])
        .unwrap()
        .unwrap();
        // 2026-01-01T12:34:00Z
        let dir = format!("dt=2026-01-01/hm={}", escape("12:34"));
        assert_eq!(dir, "dt=2026-01-01/hm=12%3A34");
        assert_eq!(pc.time_of("s", &dir).unwrap(), 1_767_270_840_000);
        // The default pattern is the first column; a day is its midnight.
        let day = commit(&[("partition_commit_trigger", "partition-time")])
            .unwrap()
            .unwrap();
        assert_eq!(day.pattern, "$dt");
        assert_eq!(day.time_of("s", &dir).unwrap(), 1_767_225_600_000);
        let err = pc
            .time_of("s", "dt=__HIVE_DEFAULT_PARTITION__/hm=x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partition dt=__HIVE_DEFAULT_PARTITION__/hm=x: '__HIVE_DEFAULT_PARTITION__ x:00' (partition_time_pattern '$dt $hm:00') is not a time"),
            "{err}"
        );
        assert_eq!(unescape("a%2Fb%"), "a/b%");
    }

    #[test]
    fn partition_commit_options_are_checked() {
        let err = |pairs: &[(&str, &str)]| match commit(pairs) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted {pairs:?}"),
        };
        assert!(
            err(&[("partition_commit_trigger", "process-time")])
                .contains("partition_commit_trigger 'process-time' is not supported")
        );
        assert!(
            err(&[("partition_commit_delay", "1 min")])
                .contains("partition_commit_delay goes with partition_commit_trigger")
        );
        assert!(
            err(&[
                ("partition_commit_trigger", "partition-time"),
                ("partition_time_pattern", "$day $hm:00"),
            ])
            .contains("names $day, which is not a partition_by column (dt, hm)")
        );
        assert!(
            err(&[
                ("partition_commit_trigger", "partition-time"),
                ("partition_commit_delay", "soon"),
            ])
            .contains("partition_commit_delay: ")
        );
        let none = PartitionCommit::from_options(
            "s",
            &options(&[("partition_commit_trigger", "partition-time")]),
            &[],
        );
        assert!(none.unwrap_err().to_string().contains("set partition_by"));
        let delayed = commit(&[
            ("partition_commit_trigger", "Partition-Time"),
            ("partition_commit_delay", "1 min"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(delayed.delay_ms, 60_000);
    }
}
