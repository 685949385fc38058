//! Keyed state that scales: hash-partitioned, updated incrementally on every core,
//! spilled to local disk beyond a memory budget, checkpointed by change.
//!
//! ```text
//!  a batch's rows (keys + values)
//!      │ hash(keys) ─▶ partition (state_partitions of them)
//!      ▼
//!  Partition 0 … Partition N-1       one worker thread per core takes partitions
//!   touch: previous values of the batch's keys   (O(touched keys))
//!   caller merges them with the batch's rows      (accumulators over touched keys)
//!   put: the new values appended as one segment   (the checkpoint's delta)
//!      │ memory over state_memory ─▶ the partition spills (Arrow IPC, local disk)
//!      ▼
//!  checkpoint: the rows written since the previous one (a delta); a full snapshot
//!  once the deltas since the last one hold as many rows as the state
//! ```
//!
//! Every row carries `__updated`, the batch time it was last written: with
//! `state_ttl` a key not updated for that long is evicted (read as absent, dropped
//! when its segment is cleaned, counted).

mod index;
mod nested;
mod partition;
mod rows;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use parking_lot::Mutex;

use crate::error::{Error, Result};
pub(crate) use nested::{Nested, min_per_list};
pub(crate) use partition::{BoundFn, Partition};
pub(crate) use rows::KeyedRows;

/// At most this many deltas follow a full snapshot (a restore reads that many files).
const MAX_DELTAS: usize = 64;

/// The name of the column holding each row's last update (batch time, ms).
pub const UPDATED: &str = "__updated";

/// `__updated` of a checkpoint row that removes its key (written when an operator
/// removes a key, read back by a restore).
pub(crate) const TOMBSTONE: i64 = i64::MIN;

/// How a query keeps its keyed state (`SET state_partitions`, `state_memory`,
/// `state_ttl`).
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// Hash partitions of the key space: the unit of parallelism and of spilling.
    pub partitions: usize,
    /// Memory the state may take before partitions spill to disk, in bytes.
    pub memory: usize,
    /// Keys not updated for this long are evicted.
    pub ttl: Option<Duration>,
    /// The folder spilled partitions go in (each state makes a folder of its own
    /// there, `flumen-state-<pid>-<n>`, removed with it); the temporary folder by
    /// default.
    pub spill_dir: Option<PathBuf>,
    /// What the stores sharing this config hold in memory together: `memory` is
    /// their budget. A [`crate::StreamingContext`] gives its queries' operators a
    /// ledger of their own, whatever this holds.
    pub ledger: MemoryLedger,
}

/// The bytes a query's stateful operators hold in memory together, which
/// `state_memory` budgets: each store reports its own ([`Share`]), and spills while
/// the total is over the budget.
#[derive(Debug, Clone, Default)]
pub struct MemoryLedger(Arc<AtomicUsize>);

impl MemoryLedger {
    /// The bytes every store of the query reported, together.
    pub fn total(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Two configs are alike whatever ledger they count on.
impl PartialEq for MemoryLedger {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// One store's part of its query's [`MemoryLedger`]: what it last reported, taken
/// back when the store goes.
#[derive(Debug)]
pub(crate) struct Share {
    ledger: MemoryLedger,
    mine: usize,
}

impl Share {
    pub(crate) fn new(ledger: &MemoryLedger) -> Self {
        Self {
            ledger: ledger.clone(),
            mine: 0,
        }
    }

    /// Reports `bytes` as this store's memory.
    pub(crate) fn report(&mut self, bytes: usize) {
        let was = std::mem::replace(&mut self.mine, bytes);
        if bytes >= was {
            self.ledger.0.fetch_add(bytes - was, Ordering::Relaxed);
        } else {
            self.ledger.0.fetch_sub(was - bytes, Ordering::Relaxed);
        }
    }

    /// The memory of the query's other stores.
    pub(crate) fn others(&self) -> usize {
        self.ledger.total().saturating_sub(self.mine)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.report(0);
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            memory: default_memory(),
            ttl: None,
            spill_dir: None,
            ledger: MemoryLedger::default(),
        }
    }
}

/// One per core.
pub fn default_partitions() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A quarter of the machine's memory (1 GiB when it cannot be read).
pub fn default_memory() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    total.map_or(1 << 30, |t| t / 4)
}

/// What the state holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StateStats {
    pub rows: u64,
    pub memory_bytes: u64,
    pub spilled_bytes: u64,
    /// Keys evicted by `state_ttl` since the query started.
    pub evicted: u64,
}

/// Which kind of snapshot [`KeyedState::checkpoint`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// Every live row.
    Full,
    /// The rows written since the previous checkpoint.
    Delta,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Delta => "delta",
        }
    }
}

/// The keyed state of one operator.
pub struct KeyedState {
    schema: SchemaRef,
    keys: usize,
    config: StateConfig,
    partitions: Vec<Partition>,
    hashes: Vec<u64>,
    /// Rows in the deltas written since the last full snapshot, and how many deltas.
    since_full: usize,
    deltas: usize,
    checkpointed: bool,
    /// This store's part of the query's memory.
    share: Share,
    _spill_dir: SpillDir,
}

/// A temporary folder removed with the state.
struct SpillDir(PathBuf);

impl SpillDir {
    /// A folder of its own, inside the one the user named (or the temporary folder):
    /// removing it when the state goes never touches anything else. Not created
    /// until something spills.
    fn new(config: &StateConfig) -> Self {
        let n_dir = SPILL_DIRS.fetch_add(1, Ordering::Relaxed);
        let parent = match &config.spill_dir {
            Some(d) => d.clone(),
            None => {
                if n_dir == 0 {
                    remove_orphaned_spills();
                }
                std::env::temp_dir()
            }
        };
        Self(parent.join(format!("flumen-state-{}-{n_dir}", std::process::id())))
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static SPILL_DIRS: AtomicUsize = AtomicUsize::new(0);

/// Spill folders of processes that are gone (killed before they could remove them):
/// the first state a process makes deletes them, so `kill -9` does not fill the disk.
fn remove_orphaned_spills() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("flumen-state-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        let gone = pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The hash that routes keys to partitions: fixed, so a key's partition is the same
/// in every run.
const ROUTE: RandomState = RandomState::with_seed(0x005e_edf1);

/// The partition of a key hash among `n`: its high bits (the hash tables inside a
/// partition use the low ones).
fn partition_of(hash: u64, n: usize) -> usize {
    (((hash >> 32) * n as u64) >> 32) as usize
}

/// A row's place: segment id in the high half, row in the low one.
fn pack(segment: u32, row: usize) -> u64 {
    (u64::from(segment) << 32) | row as u64
}

fn unpack(loc: u64) -> (u32, usize) {
    ((loc >> 32) as u32, (loc & 0xffff_ffff) as usize)
}

/// `columns` (the first `keys` of them the key) split into `n` partitions by the key's
/// hash: per partition, its rows (`None`: none). `hashes` is scratch.
pub(crate) fn route(
    columns: &[ArrayRef],
    keys: usize,
    rows: usize,
    n: usize,
    hashes: &mut Vec<u64>,
) -> Result<Vec<Option<Vec<ArrayRef>>>> {
    if n == 1 || keys == 0 {
        let mut out = vec![None; n];
        out[0] = (rows > 0).then(|| columns.to_vec());
        return Ok(out);
    }
    hashes.clear();
    hashes.resize(rows, 0);
    create_hashes(&columns[..keys], &ROUTE, hashes)?;
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (row, h) in hashes.iter().enumerate() {
        indices[partition_of(*h, n)].push(row as u32);
    }
    indices
        .into_iter()
        .map(|rows| {
            if rows.is_empty() {
                return Ok(None);
            }
            let rows = UInt32Array::from(rows);
            Ok(Some(
                columns
                    .iter()
                    .map(|c| take(c.as_ref(), &rows, None))
                    .collect::<Result<Vec<_>, _>>()?,
            ))
        })
        .collect()
}

/// Runs `work` on each item (one thread per core takes them in turn); the results in
/// the items' order, or the first error.
pub(crate) fn in_parallel<P, I, T, F>(items: Vec<(&mut P, I)>, work: F) -> Result<Vec<T>>
where
    P: Send,
    I: Send,
    T: Send,
    F: Fn(&mut P, I) -> Result<T> + Sync,
{
    let queue: Mutex<Vec<(usize, &mut P, I)>> = Mutex::new(
        items
            .into_iter()
            .enumerate()
            .map(|(i, (p, input))| (i, p, input))
            .rev()
            .collect(),
    );
    let results: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let drain = || {
        loop {
            let Some((i, p, input)) = queue.lock().pop() else {
                return;
            };
            // A panic (in a user's map_with_state function, say) fails the batch
            // with its message: the scoped thread's would only say that one panicked.
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(p, input)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(Error::Internal(format!(
                        "a state partition's work panicked: {what}"
                    )))
                });
            match done {
                Ok(t) => results.lock().push((i, t)),
                Err(e) => {
                    *failed.lock() = Some(e);
                    return;
                }
            }
        }
    };
    let workers = default_partitions().min(queue.lock().len());
    if workers <= 1 {
        drain();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(drain);
            }
        });
    }
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    let mut results = results.into_inner();
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, t)| t).collect())
}

impl KeyedState {
    /// State whose rows are `keys` key columns then `values` columns.
    pub fn try_new(
        keys: &[Arc<Field>],
        values: &[Arc<Field>],
        config: StateConfig,
    ) -> Result<Self> {
        if config.partitions == 0 {
            return crate::plan_err!("state_partitions must be at least 1");
        }
        let mut fields: Vec<Arc<Field>> = keys.to_vec();
        fields.extend(values.iter().cloned());
        fields.push(Arc::new(Field::new(UPDATED, DataType::Int64, false)));
        let schema = Arc::new(Schema::new(fields));
        let n = if keys.is_empty() {
            1
        } else {
            config.partitions
        };
        let dir = SpillDir::new(&config);
        let share = Share::new(&config.ledger);
        let partitions = (0..n)
            .map(|p| {
                Partition::new(
                    Arc::clone(&schema),
                    keys.len(),
                    dir.0.join(format!("p{p}.arrow")),
                )
            })
            .collect();
        Ok(Self {
            schema,
            keys: keys.len(),
            config,
            partitions,
            hashes: Vec::new(),
            since_full: 0,
            deltas: 0,
            checkpointed: false,
            share,
            _spill_dir: dir,
        })
    }

    /// The rows' eviction bound (a window's or session's end), so that each segment
    /// knows its lowest as it is written.
    pub(crate) fn set_bound(&mut self, bound: Arc<BoundFn>) {
        for p in &mut self.partitions {
            p.bound = Some(Arc::clone(&bound));
        }
    }

    /// The layout of every row: keys, values, `__updated`.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The batch time before which a row has expired, at batch time `now` (ms).
    pub fn cutoff(&self, now: i64) -> Option<i64> {
        self.config
            .ttl
            .map(|t| now.saturating_sub(t.as_millis() as i64))
    }

    /// `columns` (keys first) split by partition: per partition, its rows.
    pub(crate) fn route(
        &mut self,
        columns: &[ArrayRef],
        rows: usize,
    ) -> Result<Vec<Option<Vec<ArrayRef>>>> {
        route(
            columns,
            self.keys,
            rows,
            self.partitions.len(),
            &mut self.hashes,
        )
    }

    /// Runs `work` on each partition given rows, in parallel (one thread per core),
    /// spilling a partition after its work while the state is over its memory budget;
    /// the results in partition order.
    pub(crate) fn for_each<I, T, F>(&mut self, inputs: Vec<Option<I>>, work: F) -> Result<Vec<T>>
    where
        I: Send,
        T: Send,
        F: Fn(&mut Partition, I) -> Result<T> + Sync,
    {
        let budget = self.config.memory;
        // The query's other stores count against the budget too.
        let resident = AtomicUsize::new(
            self.share.others() + self.partitions.iter().map(|p| p.memory()).sum::<usize>(),
        );
        let items = self
            .partitions
            .iter_mut()
            .zip(inputs)
            .filter_map(|(p, input)| input.map(|input| (p, input)))
            .collect();
        let out = in_parallel(items, |p: &mut Partition, input| -> Result<T> {
            let before = p.memory();
            let out = work(p, input)?;
            let after = p.memory();
            let total = resident.fetch_add(after, Ordering::Relaxed) + after - before;
            resident.fetch_sub(before, Ordering::Relaxed);
            if total > budget {
                p.spill()?;
                resident.fetch_sub(after, Ordering::Relaxed);
            }
            Ok(out)
        });
        self.share
            .report(self.partitions.iter().map(|p| p.memory()).sum());
        out
    }

    /// Every partition, with or without input (complete mode, snapshots).
    pub(crate) fn all<T, F>(&mut self, work: F) -> Result<Vec<T>>
    where
        T: Send,
        F: Fn(&mut Partition, ()) -> Result<T> + Sync,
    {
        let inputs = vec![Some(()); self.partitions.len()];
        self.for_each(inputs, work)
    }

    /// Drops, in every partition, the rows whose bound (a window's end, per row from
    /// `bound`) the watermark `up_to` passed; how many.
    pub(crate) fn evict_until(&mut self, up_to: i64, bound: &BoundFn) -> Result<usize> {
        Ok(self
            .all(|p, ()| Ok(p.evict_until(up_to, bound, false)?.0))?
            .into_iter()
            .sum())
    }

    /// [`KeyedState::evict_until`], returning the rows dropped (keys, values,
    /// `__updated`): what closed.
    pub(crate) fn take_until(&mut self, up_to: i64, bound: &BoundFn) -> Result<Vec<RecordBatch>> {
        Ok(self
            .all(|p, ()| Ok(p.evict_until(up_to, bound, true)?.1))?
            .into_iter()
            .flatten()
            .collect())
    }

    pub fn stats(&self) -> StateStats {
        StateStats {
            rows: self.partitions.iter().map(|p| p.rows() as u64).sum(),
            memory_bytes: self.partitions.iter().map(|p| p.memory() as u64).sum(),
            spilled_bytes: self.partitions.iter().map(|p| p.spilled_bytes()).sum(),
            evicted: self.partitions.iter().map(|p| p.evicted).sum(),
        }
    }

    /// What a checkpoint writes: the rows written since the previous checkpoint, or
    /// every live row once the deltas since the last full snapshot hold as many rows
    /// as the state, or number [`MAX_DELTAS`] (so a restore reads at most about twice
    /// the state, and a batch's checkpoint bytes follow the keys it touched).
    pub fn checkpoint(&mut self, now: Option<i64>) -> Result<(SnapshotKind, Vec<RecordBatch>)> {
        let first = !self.checkpointed;
        self.checkpointed = true;
        for p in &mut self.partitions {
            p.track_changes = true;
        }
        let pending: usize = self
            .partitions
            .iter()
            .flat_map(|p| p.pending.iter().map(|b| b.num_rows()))
            .sum();
        let live = self.stats().rows as usize;
        if !first && self.since_full + pending < live.max(1) && self.deltas < MAX_DELTAS {
            self.since_full += pending;
            self.deltas += 1;
            let mut out = Vec::new();
            for p in &mut self.partitions {
                out.append(&mut p.pending);
            }
            return Ok((SnapshotKind::Delta, out));
        }
        self.since_full = 0;
        self.deltas = 0;
        let cutoff = now.and_then(|n| self.cutoff(n));
        let scanned = self.all(|p, ()| {
            p.pending.clear();
            p.scan(cutoff)
        })?;
        Ok((SnapshotKind::Full, scanned.into_iter().flatten().collect()))
    }

    /// After a [`KeyedState::restore`] of a full snapshot and `deltas` deltas holding
    /// `since_full` rows: the next checkpoint writes the rows put from now on (a delta),
    /// or everything once the chain is as long as the state.
    pub fn resume_tracking(&mut self, since_full: usize, deltas: usize) {
        self.checkpointed = true;
        self.since_full = since_full;
        self.deltas = deltas;
        for p in &mut self.partitions {
            p.track_changes = true;
            p.pending.clear();
        }
    }

    /// [`KeyedState::checkpoint`] as an operator's snapshot: the rows, and in the meta
    /// their kind (`"state"`: a delta is chained to the snapshot before it) and the
    /// partition count.
    pub fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        let (kind, batches) = self.checkpoint(None)?;
        Ok(crate::checkpoint::OperatorState {
            batches,
            meta: serde_json::json!({ "state": kind.as_str(), "partitions": self.config.partitions }),
        })
    }

    /// Replaces the state with `rows` (a full snapshot then its deltas, in order:
    /// later rows win), re-partitioned by this state's partition count. Rows without
    /// `__updated` (checkpoints from before the store) get `i64::MAX`: `state_ttl`
    /// counts them from their next update.
    pub fn restore(&mut self, rows: Vec<RecordBatch>) -> Result<()> {
        for p in &mut self.partitions {
            p.clear();
        }
        self.since_full = 0;
        self.deltas = 0;
        let n = self.partitions.len();
        let mut routed: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        for b in rows {
            let b = self.conform(b)?;
            for (p, cols) in self
                .route(b.columns(), b.num_rows())?
                .into_iter()
                .enumerate()
            {
                if let Some(cols) = cols {
                    routed[p].push(RecordBatch::try_new(Arc::clone(&self.schema), cols)?);
                }
            }
        }
        let inputs = routed.into_iter().map(Some).collect();
        self.for_each(inputs, |p, batches: Vec<RecordBatch>| {
            for b in batches {
                p.ingest(b)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// `batch` in this state's layout (an older checkpoint has no `__updated`).
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let width = self.schema.fields().len();
        let mut columns = batch.columns().to_vec();
        if columns.len() + 1 == width {
            columns.push(Arc::new(Int64Array::from_value(i64::MAX, batch.num_rows())));
        }
        if columns.len() != width {
            return Err(Error::Checkpoint(format!(
                "the state in the checkpoint has {} columns, this operator keeps {}",
                batch.num_columns(),
                width - 1
            )));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spill_folder_given_keeps_what_else_it_holds() {
        let given = std::env::temp_dir().join(format!("flumen-given-{}", std::process::id()));
        std::fs::create_dir_all(&given).unwrap();
        std::fs::write(given.join("keep.txt"), b"mine").unwrap();
        let field = Arc::new(Field::new("k", DataType::Int64, false));
        let config = StateConfig {
            partitions: 2,
            memory: 1,
            spill_dir: Some(given.clone()),
            ..StateConfig::default()
        };
        let mut state = KeyedState::try_new(&[field], &[], config).unwrap();
        let keys: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let routed = state.route(&[keys], 3).unwrap();
        state
            .for_each(routed, |p, cols: Vec<ArrayRef>| {
                let touched = p.touch(&cols, cols[0].len(), None)?;
                p.put(touched, vec![], None, 0, None)
            })
            .unwrap();
        assert!(state.stats().spilled_bytes > 0);
        drop(state);
        assert_eq!(std::fs::read(given.join("keep.txt")).unwrap(), b"mine");
        assert_eq!(
            std::fs::read_dir(&given).unwrap().count(),
            1,
            "only keep.txt left"
        );
        std::fs::remove_dir_all(&given).unwrap();
    }

    /// Keys 0..n put at `now` into `state` (value = key * 10), in one batch.
    fn put_keys(state: &mut KeyedState, keys: std::ops::Range<i64>, now: i64) {
        let n = (keys.end - keys.start) as usize;
        let k: ArrayRef = Arc::new(Int64Array::from_iter_values(keys));
        let routed = state.route(&[k], n).unwrap();
        state
            .for_each(routed, |p, cols: Vec<ArrayRef>| {
                let touched = p.touch(&cols, cols[0].len(), None)?;
                let v = datafusion::arrow::compute::kernels::numeric::mul(
                    &touched.keys[0],
                    &Int64Array::new_scalar(10),
                )?;
                p.put(touched, vec![v], None, now, None)
            })
            .unwrap();
    }

    fn keys_of(batches: &[RecordBatch]) -> Vec<i64> {
        let mut keys: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        keys.sort_unstable();
        keys
    }

    fn int_state(partitions: usize, memory: usize) -> KeyedState {
        int_state_in(StateConfig {
            partitions,
            memory,
            ..StateConfig::default()
        })
    }

    fn int_state_in(config: StateConfig) -> KeyedState {
        KeyedState::try_new(
            &[Arc::new(Field::new("k", DataType::Int64, false))],
            &[Arc::new(Field::new("v", DataType::Int64, true))],
            config,
        )
        .unwrap()
    }

    /// Keys last updated at 1 s are found idle at 3 s (those with rows then aside), in
    /// memory and spilled; removing them writes tombstones to the delta, and a restore
    /// of the full snapshot and that delta does not bring them back.
    #[test]
    fn idle_keys_are_found_and_removed_keys_stay_removed_after_a_restore() {
        for memory in [usize::MAX, 1] {
            let mut state = int_state(3, memory);
            put_keys(&mut state, 0..50, 1000);
            put_keys(&mut state, 50..1000, 2000);
            let (kind, full) = state.checkpoint(None).unwrap();
            assert_eq!(kind, SnapshotKind::Full);
            // At 3 s, with a 1.5 s timeout: 0..50 are idle; 10..20 have rows.
            let k: ArrayRef = Arc::new(Int64Array::from_iter_values(10..20));
            let routed = state.route(&[k], 10).unwrap();
            let inputs = routed
                .into_iter()
                .map(|r| {
                    Some(r.unwrap_or_else(|| {
                        vec![datafusion::arrow::array::new_empty_array(&DataType::Int64)]
                    }))
                })
                .collect();
            let idle = state
                .for_each(inputs, |p, cols: Vec<ArrayRef>| {
                    let mut touched = p.touch(&cols, cols[0].len(), None)?;
                    let with_rows = touched.len();
                    p.touch_due(&mut touched, 1500, None)?;
                    let n = touched.len();
                    let idle: Vec<i64> = touched.keys[0]
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()[with_rows..]
                        .to_vec();
                    assert!(touched.first[with_rows..].iter().all(|f| *f == u32::MAX));
                    // The idle keys are removed; those with rows kept.
                    let keep: datafusion::arrow::array::BooleanArray =
                        (0..n).map(|i| Some(i < with_rows)).collect();
                    let values = touched.previous.clone();
                    let mut ordered = vec![0u32; n];
                    for (j, g) in touched.previous_group.iter().enumerate() {
                        ordered[*g] = j as u32;
                    }
                    let values = values
                        .iter()
                        .map(|c| take(c.as_ref(), &UInt32Array::from(ordered.clone()), None))
                        .collect::<Result<Vec<_>, _>>()?;
                    p.put(touched, values, Some(&keep), 3000, None)?;
                    Ok(idle)
                })
                .unwrap();
            let mut idle: Vec<i64> = idle.into_iter().flatten().collect();
            idle.sort_unstable();
            let want: Vec<i64> = (0..10).chain(20..50).collect();
            assert_eq!(idle, want, "memory {memory}");
            assert_eq!(state.stats().rows, 960);
            let (kind, delta) = state.checkpoint(None).unwrap();
            assert_eq!(kind, SnapshotKind::Delta);
            let tombstones: usize = delta
                .iter()
                .map(|b| {
                    let u = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
                    u.values().iter().filter(|u| **u == TOMBSTONE).count()
                })
                .sum();
            assert_eq!(tombstones, 40);
            let mut restored = int_state(2, memory);
            let mut chain = full.clone();
            chain.extend(delta);
            restored.restore(chain).unwrap();
            assert_eq!(restored.stats().rows, 960);
            let live = restored.all(|p, ()| p.scan(None)).unwrap();
            let live: Vec<RecordBatch> = live.into_iter().flatten().collect();
            assert_eq!(keys_of(&live), (10..20).chain(50..1000).collect::<Vec<_>>());
            // Nothing is idle at 1.5 s any more.
            let no_input = vec![Some(()); 2];
            let found = restored
                .for_each(no_input, |p, ()| Ok(p.may_be_due(1500, false)))
                .unwrap();
            assert!(found.iter().all(|f| !f), "{found:?}");
        }
    }

    /// `state_memory` is the budget of a query, not of each operator: a store whose
    /// rows fit the budget alone spills once the query's other store holds the rest
    /// of it, and a store that goes gives its part back.
    #[test]
    fn the_stores_of_a_query_share_its_memory_budget() {
        let shared = StateConfig {
            partitions: 2,
            memory: usize::MAX,
            ..StateConfig::default()
        };
        let mut a = int_state_in(shared.clone());
        put_keys(&mut a, 0..2000, 1000);
        let a_bytes = a.stats().memory_bytes as usize;
        assert_eq!(shared.ledger.total(), a_bytes);
        let budget = a_bytes + a_bytes / 2;
        let mut alone = int_state(2, budget);
        put_keys(&mut alone, 0..2000, 1000);
        assert_eq!(alone.stats().spilled_bytes, 0, "fits the budget alone");
        let mut b = int_state_in(StateConfig {
            memory: budget,
            ..shared.clone()
        });
        put_keys(&mut b, 0..2000, 1000);
        assert!(b.stats().spilled_bytes > 0, "over the query's budget");
        assert_eq!(a.stats().spilled_bytes, 0);
        assert_eq!(
            shared.ledger.total(),
            a_bytes + b.stats().memory_bytes as usize
        );
        assert!(shared.ledger.total() <= budget);
        drop(b);
        assert_eq!(shared.ledger.total(), a_bytes);
    }

    /// Work that panics fails with the panic's message, whichever thread ran it.
    #[test]
    fn a_panic_in_a_partition_s_work_is_an_error_naming_it() {
        let mut parts = [0u32; 4];
        let items = parts.iter_mut().map(|p| (p, ())).collect();
        let err = in_parallel(items, |p: &mut u32, ()| -> Result<()> {
            *p += 1;
            panic!("boom in a partition")
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("a state partition's work panicked: boom in a partition"),
            "{err}"
        );
    }

    #[test]
    fn spill_folders_of_processes_that_are_gone_are_removed() {
        // No process has pid 4,000,000,000; this one's own folders stay.
        let orphan = std::env::temp_dir().join("flumen-state-4000000000-0");
        let mine = std::env::temp_dir().join(format!("flumen-state-{}-999", std::process::id()));
        for d in [&orphan, &mine] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("p0.arrow"), b"x").unwrap();
        }
        remove_orphaned_spills();
        assert!(!orphan.exists());
        assert!(mine.exists());
        std::fs::remove_dir_all(&mine).unwrap();
    }
}
