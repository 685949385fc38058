//! Many rows per key, appended and never rewritten: the rows a stream join keeps of
//! one side until the other side's watermark passes them.
//!
//! ```text
//!  segments   one per batch, immutable, in arrival order: its rows as they came (no
//!             copy), their key hashes, the newest event time among them
//!  index      hash-partitioned by key into state_partitions parts, built and read
//!             in parallel: key hash ─▶ chain of (segment, row), newest first; built
//!             lazily, the first time a probe needs it, then kept up to date
//!
//!  matching(probe)  every kept row while they number at most INDEX_RATIO times the
//!                   probe's (the join's own hash table over them costs less than
//!                   random lookups into a large index; past half that, the index is
//!                   built ahead, a little each batch); beyond, the rows whose key
//!                   hash a probe row has, gathered from the segments holding them:
//!                   O(those rows), never the whole state
//!  evict(bound)     segments whose newest time is before the bound go (their index
//!                   entries at the next rebuild, once half the entries are dead)
//!  spill            over the memory budget the oldest segments go to Arrow IPC files
//!                   of their own; one is read back only when a row of it is asked for
//!  checkpoint       the segments written since the previous checkpoint (a delta), or
//!                   every segment (full) once the deltas hold as many rows as the state
//! ```
//!
//! The rows stay in arrival order rather than being split by key: a join's state
//! leaves in time order (whole segments as the watermark passes them), the oldest
//! rows are the ones to spill, and a batch is kept without copying it.
//!
//! A hash can be shared by two keys: `matching` then returns rows of both, and the
//! join's own condition, which compares the keys, keeps the right ones. Rows the
//! bound passed but whose segment still holds newer rows stay until it goes: they
//! are candidates the join's time condition rejects, never wrong matches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{max, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::hash_utils::create_hashes;

use super::partition::{read_spill, write_spill};
use super::{
    MAX_DELTAS, ROUTE, Share, SnapshotKind, SpillDir, StateConfig, StateStats, in_parallel, pack,
    partition_of, unpack,
};
use crate::error::Result;

/// End of an index chain.
const NONE: u32 = u32::MAX;

/// A probe reads every kept row while they number at most this many times its own
/// rows, and looks its keys up in the index beyond: DataFusion's hash join over the
/// rows, built on the probe and streaming the kept rows, costs a few nanoseconds a
/// kept row, a lookup into an index larger than the caches about a hundred.
const INDEX_RATIO: usize = 16;

/// `written` of a segment read back from a checkpoint that did not record it:
/// `state_ttl` counts it from the first batch after the restore.
const RESTORED: i64 = i64::MAX;

/// The column a checkpoint adds to each segment's rows: when it was written (ms).
const WRITTEN: &str = "__written";

/// Hashes the already well mixed key hashes once more, so that the hash table's
/// control bits (the top ones) do not repeat the partition's (also the top ones).
#[derive(Default)]
struct Remix(u64);

impl Hasher for Remix {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, h: u64) {
        self.0 = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Remix>>;

/// One batch's rows.
struct Segment {
    /// `None` while spilled.
    rows: Option<RecordBatch>,
    /// The spill file and its size, once spilled.
    spilled: Option<(PathBuf, u64)>,
    /// The key hash of each row, once the segment is indexed (the index is rebuilt
    /// from them); computed only then, so a join that never uses the index never
    /// hashes its kept rows.
    hashes: Option<Vec<u64>>,
    len: usize,
    /// The newest event time (ms) among the rows.
    newest: i64,
    /// The batch time (ms) it was written at ([`RESTORED`]: read from a checkpoint).
    written: i64,
}

impl Segment {
    fn memory(&self) -> usize {
        self.rows.as_ref().map_or(0, |b| b.get_array_memory_size())
            + self.hashes.as_ref().map_or(0, |h| h.capacity() * 8)
    }

    /// Its rows, read back from its spill file if spilled (not kept resident).
    fn read(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        match (&self.rows, &self.spilled) {
            (Some(b), _) => Ok(b.clone()),
            (None, Some((path, _))) => {
                let mut batches = read_spill(path)?;
                // Written as one batch, read back as one.
                match batches.len() {
                    1 => Ok(batches.remove(0)),
                    _ => Ok(datafusion::arrow::compute::concat_batches(
                        schema, &batches,
                    )?),
                }
            }
            (None, None) => Ok(RecordBatch::new_empty(Arc::clone(schema))),
        }
    }

    fn remove_file(&self) {
        if let Some((path, _)) = &self.spilled {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// One hash partition of the index.
#[derive(Default)]
struct Shard {
    /// Key hash ─▶ the newest entry with it.
    head: ByHash<u32>,
    /// Per entry: the next older entry of the same hash, and its row.
    next: Vec<u32>,
    loc: Vec<u64>,
}

impl Shard {
    fn add(&mut self, rows: &[(u64, u64)]) {
        for (loc, h) in rows {
            let entry = self.loc.len() as u32;
            self.loc.push(*loc);
            self.next.push(self.head.insert(*h, entry).unwrap_or(NONE));
        }
    }

    /// The rows (packed locations) with one of the hashes `asked`, in segments still
    /// kept.
    fn lookup(
        &self,
        asked: &HashSet<u64, BuildHasherDefault<Remix>>,
        segments: &BTreeMap<u32, Segment>,
    ) -> Vec<u64> {
        let mut out = Vec::new();
        for h in asked {
            let mut entry = self.head.get(h).copied().unwrap_or(NONE);
            while entry != NONE {
                let loc = self.loc[entry as usize];
                if segments.contains_key(&unpack(loc).0) {
                    out.push(loc);
                }
                entry = self.next[entry as usize];
            }
        }
        out
    }

    fn memory(&self) -> usize {
        self.head.capacity() * 12 + self.next.capacity() * 4 + self.loc.capacity() * 8
    }
}

/// The rows one side of a stream join keeps, keyed by its join columns.
pub(crate) struct KeyedRows {
    schema: SchemaRef,
    /// The key columns (none: every row matches every probe).
    keys: Vec<usize>,
    /// The event-time column (a timestamp); `None`: the rows have no time (a
    /// regular join's), so none is ever evicted by time.
    time: Option<usize>,
    /// The query's state budget (`state_memory`), and this side's part of it.
    memory: usize,
    share: Share,
    ttl: Option<std::time::Duration>,
    segments: BTreeMap<u32, Segment>,
    next_segment: u32,
    /// The index, one shard per state partition (none without keys).
    shards: Vec<Shard>,
    /// Index entries, and how many of them point into segments that went.
    entries: usize,
    dead: usize,
    /// Segments from this id on are not indexed yet.
    indexed_upto: u32,
    /// Segments written since the last checkpoint.
    pending: Vec<u32>,
    /// Rows in the deltas written since the last full snapshot, and how many deltas.
    since_full: usize,
    deltas: usize,
    checkpointed: bool,
    evicted: u64,
    restamp: bool,
    spill_dir: SpillDir,
}

impl KeyedRows {
    /// Rows of `schema`, keyed by the columns `keys`, their event time in column
    /// `time` (if any); spilled while the query's state is over `config.memory`.
    pub fn try_new(
        schema: SchemaRef,
        keys: Vec<usize>,
        time: Option<usize>,
        config: &StateConfig,
    ) -> Result<Self> {
        if config.partitions == 0 {
            return crate::plan_err!("state_partitions must be at least 1");
        }
        let shards = if keys.is_empty() {
            0
        } else {
            config.partitions
        };
        Ok(Self {
            schema,
            keys,
            time,
            memory: config.memory,
            share: Share::new(&config.ledger),
            ttl: config.ttl,
            segments: BTreeMap::new(),
            next_segment: 0,
            shards: (0..shards).map(|_| Shard::default()).collect(),
            entries: 0,
            dead: 0,
            indexed_upto: 0,
            pending: Vec::new(),
            since_full: 0,
            deltas: 0,
            checkpointed: false,
            evicted: 0,
            restamp: false,
            spill_dir: SpillDir::new(config),
        })
    }

    /// The key columns.
    pub fn keys(&self) -> &[usize] {
        &self.keys
    }

    /// Partitions of the index (1 without keys).
    pub fn partitions(&self) -> usize {
        self.shards.len().max(1)
    }

    /// The key hashes of `batch`'s rows, its key columns `keys` (of the same types as
    /// this state's, so equal keys hash alike).
    fn hash(batch: &RecordBatch, keys: &[usize]) -> Result<Vec<u64>> {
        let mut hashes = vec![0; batch.num_rows()];
        if !keys.is_empty() {
            let columns: Vec<_> = keys.iter().map(|k| Arc::clone(batch.column(*k))).collect();
            create_hashes(&columns, &ROUTE, &mut hashes)?;
        }
        Ok(hashes)
    }

    /// The kept rows that may match `probe`'s rows (the other side's, its key columns
    /// `keys`): those with the same key hash; every row when the state has no key, or
    /// holds at most [`INDEX_RATIO`] times the probe's rows (reading them costs less
    /// than the lookups).
    pub fn matching(&mut self, probe: &[RecordBatch], keys: &[usize]) -> Result<Vec<RecordBatch>> {
        let probed: usize = probe.iter().map(RecordBatch::num_rows).sum();
        let kept: usize = self.segments.values().map(|s| s.len).sum();
        let indexable = !self.shards.is_empty() && keys.len() == self.keys.len();
        if !indexable || kept <= probed.saturating_mul(INDEX_RATIO) {
            if indexable && kept > probed.saturating_mul(INDEX_RATIO / 2) {
                // On the way to needing the index: build it ahead, oldest segments
                // first, twice the probe's rows a batch, so that no one batch pays
                // for indexing the whole state.
                self.index_ahead(probed.saturating_mul(2))?;
            }
            return self
                .segments
                .values()
                .map(|s| s.read(&self.schema))
                .collect();
        }
        let unindexed: Vec<u32> = self
            .segments
            .range(self.indexed_upto..)
            .map(|(id, _)| *id)
            .collect();
        self.indexed_upto = self.next_segment;
        self.index(&unindexed)?;
        let n = self.shards.len();
        let mut asked: Vec<HashSet<u64, BuildHasherDefault<Remix>>> = vec![HashSet::default(); n];
        for b in probe {
            for h in Self::hash(b, keys)? {
                asked[partition_of(h, n)].insert(h);
            }
        }
        let segments = &self.segments;
        let items = self
            .shards
            .iter_mut()
            .zip(asked)
            .filter(|(_, a)| !a.is_empty())
            .collect();
        let found = in_parallel(items, |shard: &mut Shard, asked| {
            Ok(shard.lookup(&asked, segments))
        })?;
        let mut rows: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for loc in found.into_iter().flatten() {
            let (segment, row) = unpack(loc);
            rows.entry(segment).or_default().push(row as u32);
        }
        let mut out = Vec::with_capacity(rows.len());
        for (id, mut picked) in rows {
            let Some(seg) = self.segments.get(&id) else {
                continue;
            };
            let batch = seg.read(&self.schema)?;
            if picked.len() == seg.len {
                out.push(batch);
                continue;
            }
            picked.sort_unstable();
            out.push(take_record_batch(&batch, &UInt32Array::from(picked))?);
        }
        Ok(out)
    }

    /// Indexes the oldest segments not indexed yet, about `rows` rows of them (one
    /// segment at least).
    fn index_ahead(&mut self, rows: usize) -> Result<()> {
        let mut ids = Vec::new();
        let mut taken = 0;
        for (id, seg) in self.segments.range(self.indexed_upto..) {
            if taken > 0 && taken + seg.len > rows {
                break;
            }
            taken += seg.len;
            ids.push(*id);
        }
        let Some(last) = ids.last() else {
            return Ok(());
        };
        self.indexed_upto = last + 1;
        self.index(&ids)
    }

    /// Indexes the rows of segments `ids`, each shard its keys, in parallel.
    fn index(&mut self, ids: &[u32]) -> Result<()> {
        let n = self.shards.len();
        if n == 0 {
            return Ok(());
        }
        let mut routed: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
        for id in ids {
            let Some(seg) = self.segments.get_mut(id) else {
                continue;
            };
            if seg.hashes.is_none() {
                seg.hashes = Some(Self::hash(&seg.read(&self.schema)?, &self.keys)?);
            }
            for (row, h) in seg.hashes.iter().flatten().enumerate() {
                routed[partition_of(*h, n)].push((pack(*id, row), *h));
                self.entries += 1;
            }
        }
        let items = self.shards.iter_mut().zip(routed).collect();
        in_parallel(items, |shard: &mut Shard, rows: Vec<(u64, u64)>| {
            shard.add(&rows);
            Ok(())
        })?;
        Ok(())
    }

    /// Keeps `batches` (rows of this state's schema), written at batch time `now`
    /// (ms); spills the oldest segments while the state is over its budget.
    pub fn insert(&mut self, batches: Vec<RecordBatch>, now: i64) -> Result<()> {
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            let newest = match self.time {
                Some(t) => {
                    let times =
                        crate::ops::timestamp_millis(b.column(t), "a stream join's time column")?;
                    max(&times).unwrap_or(i64::MIN)
                }
                None => i64::MAX,
            };
            let id = self.next_segment;
            self.next_segment += 1;
            self.segments.insert(
                id,
                Segment {
                    len: b.num_rows(),
                    rows: Some(b),
                    spilled: None,
                    hashes: None,
                    newest,
                    written: now,
                },
            );
            self.pending.push(id);
        }
        self.spill_over_budget()
    }

    fn memory_bytes(&self) -> usize {
        self.segments.values().map(Segment::memory).sum::<usize>()
            + self.shards.iter().map(Shard::memory).sum::<usize>()
    }

    /// Spills the oldest resident segments until the query's state (this side and
    /// its other stores) fits its budget, or none is left to spill (the index stays
    /// in memory).
    fn spill_over_budget(&mut self) -> Result<()> {
        let mut total = self.share.others() + self.memory_bytes();
        for (id, seg) in self.segments.iter_mut() {
            if total <= self.memory {
                break;
            }
            let Some(rows) = seg.rows.take() else {
                continue;
            };
            let path = self.spill_dir.0.join(format!("s{id}.arrow"));
            match write_spill(&path, &self.schema, std::slice::from_ref(&rows)) {
                Ok(bytes) => seg.spilled = Some((path, bytes)),
                Err(e) => {
                    seg.rows = Some(rows);
                    return Err(e);
                }
            }
            total = total.saturating_sub(rows.get_array_memory_size());
        }
        self.share.report(self.memory_bytes());
        Ok(())
    }

    /// Drops the segments `gone` says go; how many rows they held. The index is
    /// rebuilt once half its entries point nowhere (amortised O(1) per row).
    fn drop_where(&mut self, gone: impl Fn(&Segment) -> bool) -> Result<usize> {
        let ids: Vec<u32> = self
            .segments
            .iter()
            .filter(|(_, s)| gone(s))
            .map(|(id, _)| *id)
            .collect();
        let mut rows = 0;
        for id in ids {
            if let Some(seg) = self.segments.remove(&id) {
                seg.remove_file();
                rows += seg.len;
                if id < self.indexed_upto {
                    self.dead += seg.len;
                }
            }
        }
        if self.dead > 0 && self.dead * 2 >= self.entries {
            for shard in &mut self.shards {
                *shard = Shard::default();
            }
            self.entries = 0;
            self.dead = 0;
            let ids: Vec<u32> = self
                .segments
                .range(..self.indexed_upto)
                .map(|(id, _)| *id)
                .collect();
            self.index(&ids)?;
        }
        self.share.report(self.memory_bytes());
        Ok(rows)
    }

    /// Drops the rows whose segment's newest time is before `bound` (ms); how many.
    pub fn evict(&mut self, bound: i64) -> Result<usize> {
        self.drop_where(|s| s.newest < bound)
    }

    /// [`Self::evict`], returning the rows it drops (an outer join emits those of them
    /// that never matched).
    pub fn evict_returning(&mut self, bound: i64) -> Result<Vec<RecordBatch>> {
        let gone = self.rows_where(|s| s.newest < bound)?;
        self.evict(bound)?;
        Ok(gone)
    }

    /// The rows of the segments `gone` picks, read back from a spill file if need be.
    fn rows_where(&self, gone: impl Fn(&Segment) -> bool) -> Result<Vec<RecordBatch>> {
        self.segments
            .values()
            .filter(|s| gone(s))
            .map(|s| s.read(&self.schema))
            .collect()
    }

    /// With `state_ttl`, drops the rows written more than that before `now` (ms);
    /// counted as evicted.
    pub fn expire(&mut self, now: i64) -> Result<()> {
        self.expire_taking(now, false).map(|_| ())
    }

    /// [`Self::expire`], returning the rows it drops.
    pub fn expire_returning(&mut self, now: i64) -> Result<Vec<RecordBatch>> {
        self.expire_taking(now, true)
    }

    fn expire_taking(&mut self, now: i64, take: bool) -> Result<Vec<RecordBatch>> {
        if self.restamp {
            self.restamp = false;
            for s in self.segments.values_mut() {
                if s.written == RESTORED {
                    s.written = now;
                }
            }
        }
        let Some(ttl) = self.ttl else {
            return Ok(Vec::new());
        };
        let cutoff = now.saturating_sub(ttl.as_millis() as i64);
        let rows = if take {
            self.rows_where(|s| s.written < cutoff)?
        } else {
            Vec::new()
        };
        let gone = self.drop_where(|s| s.written < cutoff)?;
        self.evicted += gone as u64;
        Ok(rows)
    }

    pub fn stats(&self) -> StateStats {
        StateStats {
            rows: self.segments.values().map(|s| s.len as u64).sum(),
            memory_bytes: self.memory_bytes() as u64,
            spilled_bytes: self
                .segments
                .values()
                .filter_map(|s| s.spilled.as_ref().map(|(_, b)| *b))
                .sum(),
            evicted: self.evicted,
        }
    }

    /// Rows written since the previous checkpoint (still kept).
    fn pending_rows(&self) -> usize {
        self.pending
            .iter()
            .filter_map(|id| self.segments.get(id))
            .map(|s| s.len)
            .sum()
    }

    /// Whether the next checkpoint should be a full one: the first, or once the
    /// deltas since the last full one would hold as many rows as the state, or
    /// number [`MAX_DELTAS`].
    pub fn wants_full(&self) -> bool {
        let live = self.stats().rows as usize;
        !self.checkpointed
            || self.since_full + self.pending_rows() >= live.max(1)
            || self.deltas >= MAX_DELTAS
    }

    /// A segment as a checkpoint holds it: its rows and a last column, [`WRITTEN`],
    /// the batch time it was written at (so `state_ttl` goes on counting from there
    /// after a restart).
    fn checkpointed(&self, seg: &Segment) -> Result<RecordBatch> {
        let rows = seg.read(&self.schema)?;
        let mut fields = self.schema.fields().to_vec();
        fields.push(Arc::new(Field::new(WRITTEN, DataType::Int64, false)));
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(Int64Array::from_value(
            seg.written,
            rows.num_rows(),
        )));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    /// What a checkpoint writes: the segments kept since the previous one (`full`:
    /// every one), each as [`KeyedRows::checkpointed`] gives it.
    pub fn checkpoint(&mut self, full: bool) -> Result<(SnapshotKind, Vec<RecordBatch>)> {
        self.checkpointed = true;
        let pending = std::mem::take(&mut self.pending);
        if full {
            self.since_full = 0;
            self.deltas = 0;
            let rows = self
                .segments
                .values()
                .map(|s| self.checkpointed(s))
                .collect::<Result<_>>()?;
            return Ok((SnapshotKind::Full, rows));
        }
        let rows: Vec<RecordBatch> = pending
            .iter()
            .filter_map(|id| self.segments.get(id))
            .map(|s| self.checkpointed(s))
            .collect::<Result<_>>()?;
        self.since_full += rows.iter().map(RecordBatch::num_rows).sum::<usize>();
        self.deltas += 1;
        Ok((SnapshotKind::Delta, rows))
    }

    /// Replaces the rows with `batches` (a full snapshot and its deltas, each batch a
    /// segment as [`KeyedRows::checkpointed`] gives it, or without the [`WRITTEN`]
    /// column from before it was written: `state_ttl` counts those from the next
    /// batch), indexed by this state's partition count.
    pub fn restore(&mut self, batches: Vec<RecordBatch>) -> Result<()> {
        let width = self.schema.fields().len();
        let mut segments = Vec::with_capacity(batches.len());
        for b in batches {
            let written = match b.num_columns() {
                n if n == width => RESTORED,
                n if n == width + 1 => b
                    .column(width)
                    .as_primitive_opt::<Int64Type>()
                    .and_then(|w| w.iter().flatten().max())
                    .unwrap_or(RESTORED),
                n => {
                    return Err(crate::error::Error::Checkpoint(format!(
                        "a stream join's snapshot has {n} columns on a side with {width}"
                    )));
                }
            };
            let rows =
                RecordBatch::try_new(Arc::clone(&self.schema), b.columns()[..width].to_vec())?;
            segments.push((rows, written));
        }
        for seg in self.segments.values() {
            seg.remove_file();
        }
        self.segments.clear();
        for shard in &mut self.shards {
            *shard = Shard::default();
        }
        self.entries = 0;
        self.dead = 0;
        self.indexed_upto = self.next_segment;
        self.since_full = 0;
        self.deltas = 0;
        for (rows, written) in segments {
            self.insert(vec![rows], written)?;
        }
        self.pending.clear();
        self.restamp = true;
        Ok(())
    }
}

impl Drop for KeyedRows {
    fn drop(&mut self) {
        for seg in self.segments.values() {
            seg.remove_file();
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    fn batch(rows: &[(i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(rows.iter().map(|r| r.0).collect::<Int64Array>()),
                Arc::new(TimestampMillisecondArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    /// 100 rows of keys no probe asks for, newer than any other row: a state large
    /// enough that small probes use the index.
    fn filler() -> RecordBatch {
        let rows: Vec<(i64, i64)> = (0..100).map(|i| (1_000 + i, 100)).collect();
        batch(&rows)
    }

    fn sorted(batches: &[RecordBatch]) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = batches
            .iter()
            .flat_map(|b| {
                let k = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone();
                let t = b
                    .column(1)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .unwrap()
                    .clone();
                (0..b.num_rows()).map(move |i| (k.value(i), t.value(i)))
            })
            .collect();
        out.sort_unstable();
        out
    }

    fn config(partitions: usize, ttl: Option<std::time::Duration>) -> StateConfig {
        config_in(partitions, ttl, usize::MAX)
    }

    fn config_in(
        partitions: usize,
        ttl: Option<std::time::Duration>,
        memory: usize,
    ) -> StateConfig {
        StateConfig {
            partitions,
            ttl,
            memory,
            ..Default::default()
        }
    }

    /// Past half the read-all ratio the index is built ahead, oldest segments first,
    /// about twice a probe's rows a batch; the lookups it then serves find every row
    /// of the asked keys, in the segments indexed ahead and in those indexed after.
    #[test]
    fn the_index_is_built_ahead_a_little_each_batch() {
        let mut s = KeyedRows::try_new(schema(), vec![0], Some(1), &config(3, None)).unwrap();
        let mut all = Vec::new();
        for seg in 0..20i64 {
            let rows: Vec<(i64, i64)> = (0..10).map(|i| (i % 5, seg * 10 + i)).collect();
            all.extend(rows.iter().copied());
            s.insert(vec![batch(&rows)], seg).unwrap();
        }
        // 200 kept rows, a 15-row probe: between 8 and 16 times.
        let probe = batch(&[(7, 0); 15]);
        for (step, indexed) in [(1, 3), (2, 6), (3, 9)] {
            let got = s.matching(std::slice::from_ref(&probe), &[0]).unwrap();
            assert_eq!(sorted(&got).len(), 200, "every kept row is read");
            assert_eq!(s.indexed_upto, indexed, "after probe {step}");
        }
        // A small probe goes through the index.
        let got = s.matching(&[batch(&[(2, 0)])], &[0]).unwrap();
        let mut want: Vec<(i64, i64)> = all.iter().copied().filter(|r| r.0 == 2).collect();
        want.sort_unstable();
        assert_eq!(sorted(&got), want);
        assert_eq!(s.indexed_upto, 20);
        // Under half the ratio nothing is indexed ahead.
        let mut fresh = KeyedRows::try_new(schema(), vec![0], Some(1), &config(3, None)).unwrap();
        fresh.insert(vec![batch(&all)], 0).unwrap();
        fresh.matching(&[batch(&[(7, 0); 30])], &[0]).unwrap();
        assert_eq!(fresh.indexed_upto, 0);
    }

    #[test]
    fn rows_of_the_asked_keys_come_back_from_memory_and_from_spill_files() {
        for (partitions, memory) in [(1, usize::MAX), (3, usize::MAX), (3, 0)] {
            let mut s = KeyedRows::try_new(
                schema(),
                vec![0],
                Some(1),
                &config_in(partitions, None, memory),
            )
            .unwrap();
            s.insert(vec![batch(&[(1, 10), (2, 20), (1, 30)])], 0)
                .unwrap();
            s.insert(vec![batch(&[(3, 40), (2, 50)])], 1).unwrap();
            s.insert(vec![filler()], 2).unwrap();
            let probe = batch(&[(2, 0), (1, 0), (2, 0), (9, 0)]);
            let got = s.matching(std::slice::from_ref(&probe), &[0]).unwrap();
            assert_eq!(sorted(&got), [(1, 10), (1, 30), (2, 20), (2, 50)]);
            assert_eq!(s.stats().rows, 105);
            assert_eq!(
                s.stats().spilled_bytes > 0,
                memory == 0,
                "{partitions} {memory}"
            );
            // Segments whose newest row is before 45 go.
            assert_eq!(s.evict(45).unwrap(), 3);
            let got = s.matching(&[batch(&[(2, 0)])], &[0]).unwrap();
            assert_eq!(sorted(&got), [(2, 50)]);
            // A probe of more than a sixteenth of the state reads all of it.
            let got = s.matching(&[batch(&[(9, 0); 7])], &[0]).unwrap();
            assert_eq!(sorted(&got).len(), 102);
        }
    }

    #[test]
    fn a_state_without_keys_gives_every_row() {
        let mut s = KeyedRows::try_new(schema(), vec![], Some(1), &config(4, None)).unwrap();
        assert_eq!(s.partitions(), 1);
        s.insert(vec![batch(&[(1, 10), (2, 20)])], 0).unwrap();
        let got = s.matching(&[batch(&[(7, 0)])], &[]).unwrap();
        assert_eq!(sorted(&got), [(1, 10), (2, 20)]);
    }

    #[test]
    fn deltas_hold_the_rows_since_the_last_checkpoint_and_a_restore_repartitions() {
        let mut s = KeyedRows::try_new(schema(), vec![0], Some(1), &config(2, None)).unwrap();
        s.insert(vec![batch(&[(1, 10), (2, 20), (3, 30)]), filler()], 0)
            .unwrap();
        assert!(s.wants_full());
        let (kind, full) = s.checkpoint(true).unwrap();
        assert_eq!((kind, sorted(&full).len()), (SnapshotKind::Full, 103));
        s.insert(vec![batch(&[(4, 40)])], 1).unwrap();
        assert!(!s.wants_full());
        let (kind, delta) = s.checkpoint(false).unwrap();
        assert_eq!((kind, sorted(&delta)), (SnapshotKind::Delta, vec![(4, 40)]));
        let (_, empty) = s.checkpoint(false).unwrap();
        assert!(sorted(&empty).is_empty());
        let mut r = KeyedRows::try_new(schema(), vec![0], Some(1), &config(5, None)).unwrap();
        let mut chain = full;
        chain.extend(delta);
        r.restore(chain).unwrap();
        assert_eq!(r.stats().rows, 104);
        let got = r.matching(&[batch(&[(4, 0), (1, 0)])], &[0]).unwrap();
        assert_eq!(sorted(&got), [(1, 10), (4, 40)]);
    }

    #[test]
    fn ttl_drops_rows_written_too_long_ago_and_counts_them() {
        let ttl = Some(std::time::Duration::from_millis(100));
        let mut s = KeyedRows::try_new(schema(), vec![0], Some(1), &config(2, ttl)).unwrap();
        s.insert(vec![batch(&[(1, 10), (2, 20)])], 1_000).unwrap();
        s.insert(vec![batch(&[(1, 30)])], 1_050).unwrap();
        s.expire(1_120).unwrap();
        let got = s.matching(&[batch(&[(1, 0), (2, 0)])], &[0]).unwrap();
        assert_eq!(sorted(&got), [(1, 30)]);
        assert_eq!(s.stats().evicted, 2);
        // Restored from its checkpoint, a row's age goes on from when it was written:
        // written at 1,050, it goes at 1,151, not 100 ms after the restart.
        let (_, rows) = s.checkpoint(true).unwrap();
        let mut r = KeyedRows::try_new(schema(), vec![0], Some(1), &config(3, ttl)).unwrap();
        r.restore(rows).unwrap();
        r.expire(1_140).unwrap();
        assert_eq!(r.stats().rows, 1);
        r.expire(1_151).unwrap();
        assert_eq!(r.stats().rows, 0);
    }
}
