//! A query's checkpoint directory: what lets a restarted query go on exactly where the
//! killed one stopped.
//!
//! ```text
//!  <dir>/metadata              the query's fingerprint and its description, the batch grid
//!  <dir>/offsets/<batch id>    step 1: each source's range, written before anything runs
//!  <dir>/commits/<batch id>    step 5: every sink committed the batch
//!  <dir>/state/<batch id>/     after the commit: each stateful operator's state as Arrow
//!                              IPC (`op-<i>.arrow`), then `manifest` naming them
//! ```
//!
//! On a local disk every file is written to a temporary name, fsynced and renamed, so a
//! reader sees it whole or not at all; on an object store (`s3://`, `memory://`) every
//! file is one put, which is atomic. Every file carries a CRC-32 of its body (a header
//! line for the JSON files, the manifest for state files): a corrupt or truncated file
//! is reported, never used. The newest [`RETAINED`] entries are kept, older ones deleted.
//!
//! One running query per checkpoint: locally an exclusive lock on `<dir>/lock`; on an
//! object store a lease, `<dir>/lock` naming its owner, renewed every [`LEASE_RENEW`]
//! by a task of its own (whatever the batch interval); another query is refused while
//! the lease is younger than [`LEASE`], and a graceful stop deletes it.

mod storage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::source::SourceRange;
use crate::time::Time;
use storage::Storage;

/// How many batches of offsets and commits are kept (Spark keeps 100).
pub const RETAINED: u64 = 100;

/// What one batch covered, as the offset log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsetEntry {
    pub batch_id: u64,
    pub batch_time_ms: i64,
    /// Per source, in the query's source order: its name and range.
    pub ranges: Vec<(String, SourceRange)>,
}

/// The query a checkpoint belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Metadata {
    version: u32,
    /// One line per source, operator and output, with schemas; the fingerprint is its
    /// CRC, the lines say what differs.
    description: Vec<String>,
    interval_ms: u64,
    /// The batch grid: batch times are `zero + k * interval`.
    zero_time_ms: i64,
    /// Made when the checkpoint is created: what tells this pipeline's writes from
    /// another's (database sinks key their commit records by it).
    #[serde(default)]
    id: Option<String>,
}

/// A state snapshot of every stateful operator after one batch.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub batch_id: u64,
    /// Per operator index: its batches and its small JSON metadata.
    pub operators: Vec<(usize, OperatorState)>,
}

/// An operator's state: Arrow batches and small metadata (a watermark).
#[derive(Debug, Clone, Default)]
pub struct OperatorState {
    pub batches: Vec<RecordBatch>,
    pub meta: Value,
}

impl OperatorState {
    /// An operator whose state is one table of `schema`: its batches as that table (the
    /// columns relabelled to the query's names), or an error naming `what` when the
    /// checkpoint holds another number of columns.
    pub fn into_table(
        self,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        what: &str,
    ) -> Result<RecordBatch> {
        let mut rows = Vec::with_capacity(self.batches.len());
        for b in self.batches {
            if b.num_columns() != schema.fields().len() {
                return Err(Error::Checkpoint(format!(
                    "the {what} state in the checkpoint has {} columns, this query keeps {}",
                    b.num_columns(),
                    schema.fields().len()
                )));
            }
            rows.push(RecordBatch::try_new(
                Arc::clone(schema),
                b.columns().to_vec(),
            )?);
        }
        Ok(datafusion::arrow::compute::concat_batches(schema, &rows)?)
    }
}

/// What a restarted query finds.
#[derive(Debug, Default)]
pub struct Recovered {
    pub zero_time: Option<Time>,
    /// Newest planned batch.
    pub last_planned: Option<OffsetEntry>,
    /// Newest committed batch id.
    pub last_committed: Option<u64>,
    pub snapshot: Option<Snapshot>,
}

/// Where a checkpoint lives.
#[derive(Debug, Clone)]
pub enum CheckpointLocation {
    /// A local directory.
    Local(PathBuf),
    /// A folder of an object store.
    Store(crate::store::Location),
}

impl CheckpointLocation {
    /// A local path, `file://...`, or an object-store URL (`s3://bucket/prefix`, with
    /// the endpoint and credentials from `AWS_*` variables, or `memory://name/prefix`).
    pub fn parse(url: &str) -> Result<Self> {
        match url.split_once("://") {
            None => Ok(Self::Local(PathBuf::from(url))),
            Some(("file", path)) => Ok(Self::Local(PathBuf::from(path))),
            Some((_, _)) => Ok(Self::Store(crate::store::open(
                "checkpoint_location",
                url,
                &Default::default(),
            )?)),
        }
    }

    /// `self/name` (one path segment per `/`).
    pub fn child(&self, name: &str) -> Self {
        match self {
            Self::Local(dir) => Self::Local(dir.join(name)),
            Self::Store(l) => Self::Store(l.sub(name)),
        }
    }

    /// The location as the user would write it.
    pub fn display(&self) -> String {
        match self {
            Self::Local(dir) => dir.display().to_string(),
            Self::Store(l) => l.url.clone(),
        }
    }
}

impl From<PathBuf> for CheckpointLocation {
    fn from(dir: PathBuf) -> Self {
        Self::Local(dir)
    }
}

impl From<&Path> for CheckpointLocation {
    fn from(dir: &Path) -> Self {
        Self::Local(dir.to_path_buf())
    }
}

/// How long an object-store lease keeps another query out after its last renewal.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a running query renews its lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Checkpoint {
    storage: Arc<Storage>,
    /// The checkpoint's id (see [`Checkpoint::id`]).
    id: String,
    /// Object stores: renews the lease every [`LEASE_RENEW`], whatever the batch
    /// interval (a batch longer than [`LEASE`] must not lose it); stopped on drop.
    renewer: Option<tokio::task::JoinHandle<()>>,
    /// Per operator: the snapshots (batch ids, oldest first) its newest state is read
    /// from — a full snapshot, then deltas. Purging keeps them.
    chains: parking_lot::Mutex<BTreeMap<usize, Vec<u64>>>,
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if let Some(r) = &self.renewer {
            r.abort();
        }
        self.storage.unlock();
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A new checkpoint's id: 128 bits from the process's randomly keyed hasher, the
/// time and a counter.
pub(crate) fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(n);
        h.write_i64(wall_ms());
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

/// A folder of a query's checkpoint where one source keeps what it must remember
/// across restarts (the `files` source: the files it took). Entries are small JSON
/// values, each written whole (sealed with a CRC-32 like every checkpoint file).
#[derive(Debug, Clone)]
pub struct SourceStore {
    storage: Arc<Storage>,
    dir: String,
}

impl SourceStore {
    /// Writes entry `name` whole or not at all.
    pub async fn write(&self, name: &str, value: &Value) -> Result<()> {
        let body = serde_json::to_vec(value).expect("json values serialize");
        self.storage
            .put(&format!("{}/{name}", self.dir), seal(&body))
            .await
    }

    /// Entry `name`, `None` if it does not exist; a corrupt entry is an error naming it.
    pub async fn read(&self, name: &str) -> Result<Option<Value>> {
        let rel = format!("{}/{name}", self.dir);
        let Some(bytes) = self.storage.get(&rel).await? else {
            return Ok(None);
        };
        let shown = self.storage.display(&rel);
        let body = unseal(&shown, &bytes)?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::Checkpoint(format!("{shown} is not a checkpoint entry: {e}")))
    }

    /// The names of the entries, sorted.
    pub async fn names(&self) -> Result<Vec<String>> {
        self.storage.names(&self.dir).await
    }

    /// Deletes entry `name` (a failure only leaves it behind, with a warning).
    pub async fn delete(&self, name: &str) {
        self.storage.delete(&format!("{}/{name}", self.dir)).await
    }

    /// Entry `name` as the user would find it.
    pub fn display(&self, name: &str) -> String {
        self.storage.display(&format!("{}/{name}", self.dir))
    }
}

/// How state files are written: Arrow IPC with LZ4 frames (a delta's `__updated`
/// column, one value repeated, and small counts shrink to little).
pub(crate) fn ipc_options() -> Result<datafusion::arrow::ipc::writer::IpcWriteOptions> {
    Ok(datafusion::arrow::ipc::writer::IpcWriteOptions::default()
        .try_with_compression(Some(datafusion::arrow::ipc::CompressionType::LZ4_FRAME))?)
}

/// Runs of batches sharing a schema (a join keeps two sides, map_with_state keys and
/// state): one Arrow IPC file each, read back in order.
fn runs_by_schema(batches: &[RecordBatch]) -> Vec<&[RecordBatch]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=batches.len() {
        if i == batches.len() || batches[i].schema() != batches[start].schema() {
            runs.push(&batches[start..i]);
            start = i;
        }
    }
    runs
}

fn entry_name(batch_id: u64) -> String {
    format!("{batch_id:020}")
}

/// `flumen-checkpoint 1 <crc32> <length>\n<body>`.
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "flumen-checkpoint 1 {:08x} {}\n",
        crc32fast::hash(body),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn unseal(shown: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |why: &str| {
        Error::Checkpoint(format!(
            "{shown} is corrupt ({why}); restore it or delete the checkpoint to start over"
        ))
    };
    let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
        return Err(corrupt("no header"));
    };
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("bad header"))?;
    let parts: Vec<&str> = header.split(' ').collect();
    let [magic, "1", crc, len] = parts.as_slice() else {
        return Err(corrupt("bad header"));
    };
    if *magic != "flumen-checkpoint" {
        return Err(corrupt("bad header"));
    }
    let body = &bytes[nl + 1..];
    let len: usize = len.parse().map_err(|_| corrupt("bad header"))?;
    if body.len() != len {
        return Err(corrupt(&format!(
            "truncated: {} of {len} bytes",
            body.len()
        )));
    }
    if format!("{:08x}", crc32fast::hash(body)) != *crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(body.to_vec())
}

impl Checkpoint {
    async fn read_json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T> {
        self.read_json_if_there(rel)
            .await?
            .ok_or_else(|| Error::Checkpoint(format!("{} is missing", self.storage.display(rel))))
    }

    /// [`Checkpoint::read_json`], `None` when `rel` does not exist.
    async fn read_json_if_there<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
    ) -> Result<Option<T>> {
        let Some(bytes) = self.storage.get(rel).await? else {
            return Ok(None);
        };
        let shown = self.storage.display(rel);
        let body = unseal(&shown, &bytes)?;
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::Checkpoint(format!("{shown} is not a checkpoint entry: {e}")))
    }

    async fn write_json<T: Serialize>(&self, rel: &str, value: &T) -> Result<()> {
        let body = serde_json::to_vec(value).expect("checkpoint entries serialize");
        self.storage.put(rel, seal(&body)).await
    }
}

impl Checkpoint {
    /// Opens (creating if needed) the checkpoint of the query `description` describes.
    /// An existing checkpoint of another query is refused, naming what differs.
    pub async fn open(
        location: impl Into<CheckpointLocation>,
        description: Vec<String>,
        interval: Duration,
    ) -> Result<(Self, Recovered)> {
        let storage = Arc::new(Storage::open(location.into()).await?);
        let renewer = storage.leased().then(|| {
            let storage = Arc::clone(&storage);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_RENEW).await;
                    if let Err(e) = storage.renew().await {
                        log::warn!(
                            "checkpoint: renewing the lease: {e}; trying again in {LEASE_RENEW:?}"
                        );
                    }
                }
            })
        });
        let mut cp = Self {
            storage,
            renewer,
            id: new_id(),
            chains: Default::default(),
        };
        let mut recovered = Recovered::default();
        let meta = cp.read_json_if_there::<Metadata>("metadata").await?;
        if meta.is_none() {
            cp.check_empty().await?;
        }
        if let Some(meta) = meta {
            // Checkpoints made before ids existed: one derived from where it lives and
            // its batch grid, the same at every restart.
            cp.id = meta.id.clone().unwrap_or_else(|| {
                format!(
                    "{:08x}{:016x}",
                    crc32fast::hash(cp.storage.display("").as_bytes()),
                    meta.zero_time_ms
                )
            });
            let interval_ms = interval.as_millis() as u64;
            if meta.interval_ms != interval_ms {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} was written with a batch interval of {} ms, this query has {interval_ms} ms; \
                     use another checkpoint location or the old interval",
                    cp.storage.display(""),
                    meta.interval_ms
                )));
            }
            if meta.description != description {
                let removed: Vec<&str> = meta
                    .description
                    .iter()
                    .filter(|l| !description.contains(l))
                    .map(String::as_str)
                    .collect();
                let added: Vec<&str> = description
                    .iter()
                    .filter(|l| !meta.description.contains(l))
                    .map(String::as_str)
                    .collect();
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} belongs to a different query; it has {}; this query has {}; \
                     use another checkpoint location, or delete this one to start over",
                    cp.storage.display(""),
                    if removed.is_empty() {
                        "the same parts in another order".to_string()
                    } else {
                        removed.join("; ")
                    },
                    if added.is_empty() {
                        "fewer parts".to_string()
                    } else {
                        added.join("; ")
                    },
                )));
            }
            recovered.zero_time = Some(Time::from_millis(meta.zero_time_ms));
            let offsets = cp.storage.ids("offsets").await?;
            let commits = cp.storage.ids("commits").await?;
            cp.check_consecutive("offsets", &offsets)?;
            cp.check_consecutive("commits", &commits)?;
            // Every commit entry is read: a torn or foreign one is reported.
            for id in &commits {
                let rel = format!("commits/{}", entry_name(*id));
                let entry: Value = cp.read_json(&rel).await?;
                if entry["batch_id"].as_u64() != Some(*id) {
                    return Err(Error::Checkpoint(format!(
                        "{} records batch {} under the name of batch {id}; restore it or \
                         delete the checkpoint to start over",
                        cp.storage.display(&rel),
                        entry["batch_id"]
                    )));
                }
            }
            recovered.last_planned = match offsets.last() {
                Some(id) => Some(
                    cp.read_json(&format!("offsets/{}", entry_name(*id)))
                        .await?,
                ),
                None => None,
            };
            recovered.last_committed = commits.last().copied();
            if let Some(c) = recovered.last_committed {
                // A batch is planned (offsets) before it commits; a commit without its
                // offsets means the offset log lost entries, and starting over would
                // write every committed batch again.
                let planned = recovered.last_planned.as_ref().map(|p| p.batch_id);
                if planned.is_none_or(|p| p < c) {
                    return Err(Error::Checkpoint(format!(
                        "{} has batch {c} committed but {}; the offset log is incomplete, so \
                         the query cannot tell where its sources stood; restore it or delete \
                         the checkpoint to start over",
                        cp.storage.display(""),
                        match planned {
                            Some(p) => format!("offsets/ ends at batch {p}"),
                            None => "offsets/ is empty or missing".into(),
                        }
                    )));
                }
                if offsets.first().is_some_and(|first| *first > commits[0]) {
                    return Err(Error::Checkpoint(format!(
                        "{} is missing: commits/ starts at batch {} but offsets/ at batch {}; \
                         restore it or delete the checkpoint to start over",
                        cp.storage
                            .display(&format!("offsets/{}", entry_name(commits[0]))),
                        commits[0],
                        offsets[0]
                    )));
                }
            }
            recovered.snapshot = cp.newest_snapshot(recovered.last_committed).await?;
        }
        Ok((cp, recovered))
    }

    /// Records the query and its batch grid, once.
    pub async fn write_metadata(
        &self,
        description: Vec<String>,
        interval: Duration,
        zero_time: Time,
    ) -> Result<()> {
        if self.storage.exists("metadata").await? {
            return Ok(());
        }
        self.write_json(
            "metadata",
            &Metadata {
                version: 1,
                description,
                interval_ms: interval.as_millis() as u64,
                zero_time_ms: zero_time.as_millis(),
                id: Some(self.id.clone()),
            },
        )
        .await
    }

    /// What tells this pipeline from any other: made when the checkpoint is created,
    /// the same at every restart.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The folder of the checkpoint where source `name` keeps what it must remember
    /// across restarts.
    pub fn source_store(&self, name: &str) -> SourceStore {
        SourceStore {
            storage: Arc::clone(&self.storage),
            dir: format!("sources/{name}"),
        }
    }

    /// A checkpoint without `metadata` must hold nothing else: offsets, commits or
    /// state without it are a damaged checkpoint, not a new one.
    async fn check_empty(&self) -> Result<()> {
        for sub in ["offsets", "commits", "state"] {
            if !self.storage.names(sub).await?.is_empty() {
                return Err(Error::Checkpoint(format!(
                    "{} is missing but {} holds entries: the checkpoint is damaged; restore \
                     it or delete the checkpoint to start over",
                    self.storage.display("metadata"),
                    self.storage.display(sub)
                )));
            }
        }
        Ok(())
    }

    /// Entries are written one batch after another and purged oldest first, so their
    /// ids have no gap; a gap is a lost entry, named.
    fn check_consecutive(&self, sub: &str, ids: &[u64]) -> Result<()> {
        for w in ids.windows(2) {
            if w[1] != w[0] + 1 {
                return Err(Error::Checkpoint(format!(
                    "{} is missing (the entries before and after it are there); restore it \
                     or delete the checkpoint to start over",
                    self.storage
                        .display(&format!("{sub}/{}", entry_name(w[0] + 1)))
                )));
            }
        }
        Ok(())
    }

    /// Step 1: the batch's ranges, durable before the batch reads anything.
    pub async fn write_offsets(&self, entry: &OffsetEntry) -> Result<()> {
        self.write_json(&format!("offsets/{}", entry_name(entry.batch_id)), entry)
            .await
    }

    /// The recorded ranges of batch `batch_id`.
    pub async fn read_offsets(&self, batch_id: u64) -> Result<OffsetEntry> {
        self.read_json(&format!("offsets/{}", entry_name(batch_id)))
            .await
    }

    /// Step 5: every sink committed batch `batch_id`.
    pub async fn write_commit(&self, batch_id: u64, batch_time: Time) -> Result<()> {
        self.write_json(
            &format!("commits/{}", entry_name(batch_id)),
            &serde_json::json!({"batch_id": batch_id, "batch_time_ms": batch_time.as_millis()}),
        )
        .await?;
        self.purge(batch_id).await
    }

    /// Writes the state of every stateful operator after batch `snapshot.batch_id`;
    /// per operator, the bytes written. An operator whose meta says `"state": "delta"`
    /// gave the rows changed since its previous snapshot: the manifest names that one
    /// (`prev`), and a restore reads the chain back to a full snapshot.
    pub async fn write_snapshot(&self, snapshot: &Snapshot) -> Result<Vec<(usize, u64)>> {
        let dir = format!("state/{}", entry_name(snapshot.batch_id));
        let mut manifest = Vec::new();
        let mut written = Vec::new();
        let mut chains = self.chains.lock().clone();
        for (index, state) in &snapshot.operators {
            let mut parts = Vec::new();
            let mut bytes_written = 0;
            for (k, run) in runs_by_schema(&state.batches).into_iter().enumerate() {
                let file = format!("op-{index}-{k}.arrow");
                let mut bytes = Vec::new();
                let mut w =
                    FileWriter::try_new_with_options(&mut bytes, &run[0].schema(), ipc_options()?)?;
                for b in run {
                    w.write(b)?;
                }
                w.finish()?;
                drop(w);
                parts.push(serde_json::json!({
                    "file": file,
                    "crc32": format!("{:08x}", crc32fast::hash(&bytes)),
                    "len": bytes.len(),
                }));
                bytes_written += bytes.len() as u64;
                self.storage.put(&format!("{dir}/{file}"), bytes).await?;
            }
            let mut entry = serde_json::json!({
                "operator": index,
                "parts": parts,
                "meta": state.meta,
            });
            let chain = chains.entry(*index).or_default();
            if state.meta["state"] == "delta" {
                entry["prev"] = serde_json::json!(chain.last());
            } else {
                chain.clear();
            }
            chain.push(snapshot.batch_id);
            manifest.push(entry);
            written.push((*index, bytes_written));
        }
        // The manifest last: a snapshot without one is incomplete and never read.
        self.write_json(&format!("{dir}/manifest"), &manifest)
            .await?;
        *self.chains.lock() = chains;
        Ok(written)
    }

    /// The manifest of the snapshot of batch `id`, if it is complete.
    async fn manifest(&self, id: u64) -> Result<Option<Vec<Value>>> {
        let rel = format!("state/{}/manifest", entry_name(id));
        self.read_json_if_there::<Vec<Value>>(&rel).await
    }

    /// The batches of one operator's manifest entry, checked.
    async fn read_parts(&self, dir: &str, entry: &Value) -> Result<Vec<RecordBatch>> {
        let manifest_rel = format!("{dir}/manifest");
        let Some(parts) = entry["parts"].as_array() else {
            return Err(Error::Checkpoint(format!(
                "{} is not a snapshot manifest",
                self.storage.display(&manifest_rel)
            )));
        };
        let mut batches = Vec::new();
        for part in parts {
            let (Some(file), Some(crc), Some(len)) = (
                part["file"].as_str(),
                part["crc32"].as_str(),
                part["len"].as_u64(),
            ) else {
                return Err(Error::Checkpoint(format!(
                    "{} is not a snapshot manifest",
                    self.storage.display(&manifest_rel)
                )));
            };
            let rel = format!("{dir}/{file}");
            let shown = self.storage.display(&rel);
            let Some(bytes) = self.storage.get(&rel).await? else {
                return Err(Error::Checkpoint(format!(
                    "{shown} is missing; restore it or delete the checkpoint to start over"
                )));
            };
            if bytes.len() as u64 != len || format!("{:08x}", crc32fast::hash(&bytes)) != crc {
                return Err(Error::Checkpoint(format!(
                    "{shown} is corrupt (checksum or length mismatch); restore it or delete the checkpoint to start over"
                )));
            }
            for b in FileReader::try_new(std::io::Cursor::new(bytes), None)? {
                batches.push(b?);
            }
        }
        Ok(batches)
    }

    /// One operator's state as of snapshot `id` (entry `entry` of its manifest): its
    /// batches, preceded by those of the snapshots a delta builds on; the chain's ids.
    async fn read_chain(
        &self,
        id: u64,
        index: u64,
        entry: &Value,
    ) -> Result<(Vec<RecordBatch>, Vec<u64>)> {
        let mut chain = vec![(id, entry.clone())];
        while let Some(prev) = chain.last().and_then(|(_, e)| e["prev"].as_u64()) {
            let missing = || {
                Error::Checkpoint(format!(
                    "{}, which the state snapshot of batch {id} builds on, is missing or                      incomplete; restore it or delete the checkpoint to start over",
                    self.storage
                        .display(&format!("state/{}/manifest", entry_name(prev)))
                ))
            };
            if prev >= chain.last().map_or(0, |(i, _)| *i) {
                return Err(missing());
            }
            let manifest = self.manifest(prev).await?.ok_or_else(missing)?;
            let e = manifest
                .into_iter()
                .find(|m| m["operator"].as_u64() == Some(index))
                .ok_or_else(missing)?;
            chain.push((prev, e));
        }
        let mut batches = Vec::new();
        let mut ids = Vec::with_capacity(chain.len());
        for (id, e) in chain.iter().rev() {
            batches.extend(
                self.read_parts(&format!("state/{}", entry_name(*id)), e)
                    .await?,
            );
            ids.push(*id);
        }
        Ok((batches, ids))
    }

    /// The newest complete snapshot at or before `upto`.
    async fn newest_snapshot(&self, upto: Option<u64>) -> Result<Option<Snapshot>> {
        let Some(upto) = upto else {
            return Ok(None);
        };
        for id in self.storage.ids("state").await?.into_iter().rev() {
            if id > upto {
                continue;
            }
            let Some(manifest) = self.manifest(id).await? else {
                // Killed while writing it: an older one will do.
                continue;
            };
            let mut operators = Vec::new();
            let mut chains = BTreeMap::new();
            for m in manifest {
                let Some(index) = m["operator"].as_u64() else {
                    return Err(Error::Checkpoint(format!(
                        "{} is not a snapshot manifest",
                        self.storage
                            .display(&format!("state/{}/manifest", entry_name(id)))
                    )));
                };
                let (batches, chain) = self.read_chain(id, index, &m).await?;
                chains.insert(index as usize, chain);
                operators.push((
                    index as usize,
                    OperatorState {
                        batches,
                        meta: m["meta"].clone(),
                    },
                ));
            }
            *self.chains.lock() = chains;
            return Ok(Some(Snapshot {
                batch_id: id,
                operators,
            }));
        }
        Ok(None)
    }

    /// Deletes entries older than the newest [`RETAINED`] and snapshots older than the
    /// newest complete one.
    async fn purge(&self, committed: u64) -> Result<()> {
        let keep_from = committed.saturating_sub(RETAINED - 1);
        // Commits first: a purge cut short leaves offsets older than every commit,
        // never commits without their offsets.
        for sub in ["commits", "offsets"] {
            for id in self.storage.ids(sub).await? {
                if id >= keep_from {
                    break;
                }
                self.storage
                    .delete(&format!("{sub}/{}", entry_name(id)))
                    .await;
            }
        }
        let ids = self.storage.ids("state").await?;
        let mut newest = None;
        for id in ids.iter().rev() {
            if self
                .storage
                .exists(&format!("state/{}/manifest", entry_name(*id)))
                .await?
            {
                newest = Some(*id);
                break;
            }
        }
        if let Some(newest) = newest {
            // What the newest snapshot's deltas build on stays.
            let kept: std::collections::HashSet<u64> =
                self.chains.lock().values().flatten().copied().collect();
            for id in ids.iter().filter(|id| **id < newest && !kept.contains(id)) {
                self.storage
                    .delete_folder(&format!("state/{}", entry_name(*id)))
                    .await;
            }
        }
        Ok(())
    }

    /// Where the checkpoint lives, as the user wrote it.
    pub fn display(&self) -> String {
        self.storage.display("")
    }

    /// Gives up the lease (object stores) at a graceful stop; a local lock goes
    /// with the process.
    pub async fn close(&self) {
        if let Some(r) = &self.renewer {
            r.abort();
        }
        self.storage.release().await;
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[tokio::test]
    async fn a_truncated_or_altered_entry_is_reported() {
        let dir = std::env::temp_dir().join(format!("flumen-cp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (cp, rec) = Checkpoint::open(
            dir.as_path(),
            vec!["a".into()],
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(rec.last_planned.is_none());
        cp.write_metadata(
            vec!["a".into()],
            std::time::Duration::from_secs(1),
            Time::from_millis(0),
        )
        .await
        .unwrap();
        let entry = OffsetEntry {
            batch_id: 3,
            batch_time_ms: 4000,
            ranges: vec![(
                "s".into(),
                SourceRange {
                    start: 1.into(),
                    end: 2.into(),
                },
            )],
        };
        cp.write_offsets(&entry).await.unwrap();
        assert_eq!(cp.read_offsets(3).await.unwrap(), entry);
        let path = dir.join("offsets").join(entry_name(3));
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = cp.read_offsets(3).await.unwrap_err().to_string();
        assert!(err.contains("is corrupt (truncated"), "{err}");
        let mut altered = bytes.clone();
        *altered.last_mut().unwrap() = b' ';
        fs::write(&path, &altered).unwrap();
        let err = cp.read_offsets(3).await.unwrap_err().to_string();
        assert!(err.contains("is corrupt (checksum mismatch)"), "{err}");
        // While it is open, no one else may use it.
        let err = Checkpoint::open(
            dir.as_path(),
            vec!["a".into()],
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("is in use by another running query"), "{err}");
        drop(cp);
        // Another query's checkpoint is refused, naming what differs.
        let err = Checkpoint::open(
            dir.as_path(),
            vec!["b".into()],
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("belongs to a different query; it has a; this query has b"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    /// A checkpoint with batches 0..4 planned and committed.
    async fn four_batches(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flumen-cp-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let interval = std::time::Duration::from_secs(1);
        let (cp, _) = Checkpoint::open(dir.as_path(), vec!["a".into()], interval)
            .await
            .unwrap();
        cp.write_metadata(vec!["a".into()], interval, Time::from_millis(0))
            .await
            .unwrap();
        for id in 0..4 {
            cp.write_offsets(&OffsetEntry {
                batch_id: id,
                batch_time_ms: id as i64 * 1000,
                ranges: vec![],
            })
            .await
            .unwrap();
            cp.write_commit(id, Time::from_millis(id as i64 * 1000))
                .await
                .unwrap();
        }
        dir
    }

    async fn open_error(dir: &Path) -> String {
        Checkpoint::open(dir, vec!["a".into()], std::time::Duration::from_secs(1))
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    #[tokio::test]
    async fn a_checkpoint_with_holes_is_refused_naming_the_file() {
        // Sound: it opens, with its id kept.
        let dir = four_batches("sound").await;
        let (cp, rec) = Checkpoint::open(
            dir.as_path(),
            vec!["a".into()],
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(rec.last_committed, Some(3));
        let id = cp.id().to_string();
        drop(cp);
        let (cp, _) = Checkpoint::open(
            dir.as_path(),
            vec!["a".into()],
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(cp.id(), id);
        drop(cp);

        let dir = four_batches("no-offsets").await;
        fs::remove_dir_all(dir.join("offsets")).unwrap();
        let err = open_error(&dir).await;
        assert!(
            err.contains("has batch 3 committed but offsets/ is empty or missing"),
            "{err}"
        );

        let dir = four_batches("gap").await;
        fs::remove_file(dir.join("offsets").join(entry_name(1))).unwrap();
        let err = open_error(&dir).await;
        assert!(
            err.contains(&format!("offsets/{} is missing", entry_name(1))),
            "{err}"
        );

        let dir = four_batches("torn-commit").await;
        let c = dir.join("commits").join(entry_name(2));
        let bytes = fs::read(&c).unwrap();
        fs::write(&c, &bytes[..bytes.len() - 4]).unwrap();
        let err = open_error(&dir).await;
        assert!(
            err.contains(&format!("commits/{} is corrupt", entry_name(2))),
            "{err}"
        );

        let dir = four_batches("garbage").await;
        fs::write(dir.join("commits").join("notes.txt"), b"hello").unwrap();
        let err = open_error(&dir).await;
        assert!(
            err.contains("commits/notes.txt is not a checkpoint entry"),
            "{err}"
        );

        let dir = four_batches("moved-commit").await;
        fs::copy(
            dir.join("commits").join(entry_name(1)),
            dir.join("commits").join(entry_name(3)),
        )
        .unwrap();
        let err = open_error(&dir).await;
        assert!(
            err.contains("records batch 1 under the name of batch 3"),
            "{err}"
        );

        let dir = four_batches("no-metadata").await;
        fs::remove_file(dir.join("metadata")).unwrap();
        let err = open_error(&dir).await;
        assert!(err.contains("metadata is missing but"), "{err}");
    }

    fn one_column(values: &[i64]) -> RecordBatch {
        RecordBatch::try_from_iter(vec![(
            "v",
            Arc::new(datafusion::arrow::array::Int64Array::from(values.to_vec()))
                as datafusion::arrow::array::ArrayRef,
        )])
        .unwrap()
    }

    fn state(kind: &str, values: &[i64]) -> OperatorState {
        OperatorState {
            batches: vec![one_column(values)],
            meta: serde_json::json!({ "state": kind }),
        }
    }

    #[tokio::test]
    async fn a_delta_is_read_back_after_the_snapshots_it_builds_on_which_the_purge_keeps() {
        let dir = four_batches("deltas").await;
        let interval = std::time::Duration::from_secs(1);
        let (cp, _) = Checkpoint::open(dir.as_path(), vec!["a".into()], interval)
            .await
            .unwrap();
        // Batch 0: a full snapshot; 1 and 2: deltas on it; 3: a delta on 2.
        for (id, kind, values) in [
            (0, "full", vec![1, 2]),
            (1, "delta", vec![3]),
            (2, "delta", vec![4]),
            (3, "delta", vec![5]),
        ] {
            let written = cp
                .write_snapshot(&Snapshot {
                    batch_id: id,
                    operators: vec![(0, state(kind, &values))],
                })
                .await
                .unwrap();
            assert_eq!(written.len(), 1);
            assert!(written[0].1 > 0);
            cp.write_commit(id, Time::from_millis(id as i64 * 1000))
                .await
                .unwrap();
        }
        // The purge at commit 3 kept the chain 0..=3.
        for id in 0..4 {
            assert!(
                dir.join("state")
                    .join(entry_name(id))
                    .join("manifest")
                    .exists()
            );
        }
        drop(cp);
        let (cp, rec) = Checkpoint::open(dir.as_path(), vec!["a".into()], interval)
            .await
            .unwrap();
        let snapshot = rec.snapshot.unwrap();
        assert_eq!(snapshot.batch_id, 3);
        let (_, op) = &snapshot.operators[0];
        let values: Vec<i64> = op
            .batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(
            values,
            [1, 2, 3, 4, 5],
            "the full snapshot, then each delta"
        );
        // A full snapshot ends the chain: the purge drops what came before it.
        cp.write_offsets(&OffsetEntry {
            batch_id: 4,
            batch_time_ms: 4000,
            ranges: vec![],
        })
        .await
        .unwrap();
        cp.write_snapshot(&Snapshot {
            batch_id: 4,
            operators: vec![(0, state("full", &[9]))],
        })
        .await
        .unwrap();
        cp.write_commit(4, Time::from_millis(4000)).await.unwrap();
        assert!(!dir.join("state").join(entry_name(0)).exists());
        assert!(dir.join("state").join(entry_name(4)).exists());
        drop(cp);

        // A link of the chain lost: named, not silently skipped.
        let dir = four_batches("lost-delta").await;
        let (cp, _) = Checkpoint::open(dir.as_path(), vec!["a".into()], interval)
            .await
            .unwrap();
        for (id, kind) in [(2, "full"), (3, "delta")] {
            cp.write_snapshot(&Snapshot {
                batch_id: id,
                operators: vec![(0, state(kind, &[id as i64]))],
            })
            .await
            .unwrap();
        }
        drop(cp);
        fs::remove_dir_all(dir.join("state").join(entry_name(2))).unwrap();
        let err = open_error(&dir).await;
        assert!(
            err.contains("which the state snapshot of batch 3 builds on, is missing"),
            "{err}"
        );
    }
}
