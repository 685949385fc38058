//! One state partition: a key index and a log of immutable Arrow segments.
//!
//! ```text
//!  index: KeyIndex     key ─▶ slot        loc[slot] ─▶ (segment, row) or none
//!  segments: BTreeMap<id, Segment>        each: keys + values + __updated, live rows
//!
//!  touch(keys)  intern the batch's keys; gather the touched keys' previous values
//!               from whatever segments hold them (O(touched), never the whole state)
//!  put(values)  append one segment of the new values; older versions become dead
//!  clean        copy the oldest segments' live rows forward once half of them are
//!               dead (or too many segments), dropping expired rows (state_ttl)
//!  spill/load   live rows to one Arrow IPC file and back (the memory budget)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{filter_record_batch, interleave, take, take_record_batch};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};

use super::index::KeyIndex;
use super::{TOMBSTONE, pack, unpack};
use crate::error::{Error, Result};

const NONE: u64 = u64::MAX;

/// Per row of a batch of the store's rows: the bound it is due at (a window's or a
/// session's end), if any.
pub(crate) type BoundFn = dyn Fn(&RecordBatch) -> Result<Vec<Option<i64>>> + Send + Sync;

/// At most this many segments before the oldest are copied forward, live or not.
const MAX_SEGMENTS: usize = 32;

/// One immutable run of rows: keys, values, the batch time each was last updated.
struct Segment {
    rows: RecordBatch,
    /// Rows known to be superseded or removed (a bit each): the cleaning pass skips
    /// them without looking up their key's place. A row not marked here is live only
    /// if its key's place still points at it.
    dead: Vec<u64>,
    /// The slot of each row.
    slots: Vec<u32>,
    /// Rows still the newest version of their key.
    live: usize,
    /// A lower bound of the live rows' eviction bound (a window's or session's end;
    /// `i64::MAX`: none has one), once computed: [`Partition::evict_until`] and
    /// [`Partition::touch_due`] skip the segment while it is above the watermark.
    min_bound: Option<i64>,
    /// A lower bound of the live rows' `__updated`, once computed:
    /// [`Partition::touch_due`] skips the segment while it is above the idle bound.
    min_updated: Option<i64>,
}

/// What the index and segments of a resident partition hold.
struct Resident {
    /// `None` for a keyless aggregate: one slot.
    index: Option<KeyIndex>,
    loc: Vec<u64>,
    live: usize,
    segments: BTreeMap<u32, Segment>,
    next_segment: u32,
    /// Scratch: slot → position among the touched keys. (Kept apart from `loc`: at
    /// 4 bytes a key it stays in the last-level cache far longer than the two would
    /// together.)
    mark: Vec<u32>,
}

/// The touched keys of one batch, as [`Partition::touch`] found them.
pub(crate) struct Touched {
    /// One row per touched key (the first of the batch's rows with it).
    pub keys: Vec<ArrayRef>,
    /// Per input row: its touched key's position.
    pub row_group: Vec<usize>,
    /// The previous values (value columns) of the touched keys that had any.
    pub previous: Vec<ArrayRef>,
    /// Per previous row: its touched key's position.
    pub previous_group: Vec<usize>,
    /// Per touched key: the batch row it was first seen in.
    pub first: Vec<u32>,
    slots: Vec<usize>,
}

impl Touched {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Keeps only the keys the state did not hold (their first rows stay in
    /// [`Touched::first`]); `row_group` and the previous values no longer apply.
    pub fn retain_new(&mut self) -> Result<()> {
        let mut old = vec![false; self.slots.len()];
        for g in &self.previous_group {
            old[*g] = true;
        }
        let keep: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|i| !old[*i as usize])
            .collect();
        let indices = UInt32Array::from(keep.clone());
        self.keys = self
            .keys
            .iter()
            .map(|k| take(k.as_ref(), &indices, None))
            .collect::<Result<Vec<_>, _>>()?;
        self.slots = keep.iter().map(|i| self.slots[*i as usize]).collect();
        self.first = keep.iter().map(|i| self.first[*i as usize]).collect();
        self.row_group.clear();
        self.previous.clear();
        self.previous_group.clear();
        Ok(())
    }
}

/// A partition written to disk: its live rows, one Arrow IPC file.
struct Spilled {
    path: PathBuf,
    rows: usize,
    bytes: u64,
    /// The lowest `__updated` among the rows: no key is idle before it.
    min_updated: i64,
    /// The lowest eviction bound among the rows, when every segment knew its own.
    min_bound: Option<i64>,
}

pub(crate) struct Partition {
    /// keys + values + `__updated`.
    schema: SchemaRef,
    keys: usize,
    resident: Option<Resident>,
    spilled: Option<Spilled>,
    spill_path: PathBuf,
    /// Rows written since the last checkpoint took them (when tracked).
    pub(crate) pending: Vec<RecordBatch>,
    pub(crate) track_changes: bool,
    pub(crate) evicted: u64,
    /// The rows' eviction bound, when the operator has one: a segment put knows its
    /// lowest at once (so a spilled partition need not be read to learn it).
    pub(crate) bound: Option<Arc<BoundFn>>,
}

impl Partition {
    pub fn new(schema: SchemaRef, keys: usize, spill_path: PathBuf) -> Self {
        Self {
            schema,
            keys,
            resident: None,
            spilled: None,
            spill_path,
            pending: Vec::new(),
            track_changes: false,
            evicted: 0,
            bound: None,
        }
    }

    fn values(&self) -> std::ops::Range<usize> {
        self.keys..self.schema.fields().len() - 1
    }

    fn empty_resident(&self) -> Result<Resident> {
        let index = if self.keys == 0 {
            None
        } else {
            let key_schema = Arc::new(self.schema.project(&(0..self.keys).collect::<Vec<_>>())?);
            Some(KeyIndex::new(key_schema)?)
        };
        Ok(Resident {
            index,
            loc: Vec::new(),
            live: 0,
            segments: BTreeMap::new(),
            next_segment: 0,
            mark: Vec::new(),
        })
    }

    /// The resident tables, read back from disk if spilled.
    fn resident(&mut self) -> Result<&mut Resident> {
        if self.resident.is_none() {
            let mut r = self.empty_resident()?;
            if let Some(s) = self.spilled.take() {
                for b in read_spill(&s.path)? {
                    ingest(&mut r, b, self.keys)?;
                }
                let _ = std::fs::remove_file(&s.path);
            }
            self.resident = Some(r);
        }
        match self.resident.as_mut() {
            Some(r) => Ok(r),
            None => crate::internal_err!("state partition not resident"),
        }
    }

    /// Rows of `rows` (the store's layout) become the newest versions of their keys
    /// (a restore: later rows win).
    pub fn ingest(&mut self, rows: RecordBatch) -> Result<()> {
        let keys = self.keys;
        ingest(self.resident()?, rows, keys)
    }

    /// Interns `keys` (`rows` rows) and gathers the touched keys' previous values;
    /// values last updated before `cutoff` are expired: evicted, not returned.
    pub fn touch(
        &mut self,
        keys: &[ArrayRef],
        rows: usize,
        cutoff: Option<i64>,
    ) -> Result<Touched> {
        let nk = self.keys;
        let values = self.values();
        let schema = Arc::clone(&self.schema);
        let mut evicted = 0;
        let r = self.resident()?;
        let mut slots = Vec::with_capacity(rows);
        match r.index.as_mut() {
            Some(index) => index.intern(&keys[..nk], &mut slots)?,
            None => slots.resize(rows, 0),
        }
        let len = r.index.as_mut().map_or(1, |i| i.len());
        r.loc.resize(len, NONE);
        r.mark.resize(len, u32::MAX);
        let mut touched = Vec::new();
        let mut first = Vec::new();
        let mut row_group = Vec::with_capacity(rows);
        for (row, s) in slots.iter().enumerate() {
            let m = &mut r.mark[*s];
            if *m == u32::MAX {
                *m = touched.len() as u32;
                touched.push(*s);
                first.push(row as u32);
            }
            row_group.push(*m as usize);
        }
        for s in &touched {
            r.mark[*s] = u32::MAX;
        }
        // The previous versions, wherever they are.
        // Segment ids run from the oldest kept to `next_segment`: a direct map from id
        // to its position among the segments this batch reads.
        let base = r.segments.keys().next().copied().unwrap_or(0);
        let mut source_of = vec![u32::MAX; (r.next_segment - base) as usize];
        let mut sources: Vec<u32> = Vec::new();
        let mut picks = Vec::new();
        let mut previous_group = Vec::new();
        for (i, s) in touched.iter().enumerate() {
            let l = r.loc[*s];
            if l == NONE {
                continue;
            }
            let (seg, row) = unpack(l);
            if let Some(cutoff) = cutoff {
                let updated =
                    r.segments[&seg].rows.columns()[values.end].as_primitive::<Int64Type>();
                if updated.value(row) < cutoff {
                    evicted += 1;
                    r.loc[*s] = NONE;
                    r.live -= 1;
                    release(&mut r.segments, l);
                    continue;
                }
            }
            let source = &mut source_of[(seg - base) as usize];
            if *source == u32::MAX {
                *source = sources.len() as u32;
                sources.push(seg);
            }
            picks.push((*source as usize, row));
            previous_group.push(i);
        }
        let mut previous = Vec::with_capacity(values.len());
        for c in values.clone() {
            let arrays: Vec<&dyn Array> = sources
                .iter()
                .map(|s| r.segments[s].rows.column(c).as_ref())
                .collect();
            previous.push(if picks.is_empty() {
                datafusion::arrow::array::new_empty_array(schema.field(c).data_type())
            } else {
                interleave(&arrays, &picks)?
            });
        }
        let first_rows = UInt32Array::from(first.clone());
        let keys = keys[..nk]
            .iter()
            .map(|k| take(k.as_ref(), &first_rows, None))
            .collect::<Result<Vec<_>, _>>()?;
        self.evicted += evicted;
        Ok(Touched {
            keys,
            row_group,
            previous,
            previous_group,
            first,
            slots: touched,
        })
    }

    /// The touched keys' new values (one row per touched key, in its order), written
    /// at `now` (ms); where `keep` is false the key is removed instead (its row goes to
    /// the next checkpoint as a tombstone). Then the oldest segments are cleaned.
    pub fn put(
        &mut self,
        touched: Touched,
        values: Vec<ArrayRef>,
        keep: Option<&BooleanArray>,
        now: i64,
        cutoff: Option<i64>,
    ) -> Result<()> {
        let n = touched.len();
        let mut columns = touched.keys;
        columns.extend(values);
        columns.push(Arc::new(Int64Array::from_value(now, n)));
        let mut rows = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let mut slots = touched.slots;
        let keep = keep.filter(|k| k.true_count() < n);
        let mut removed = 0;
        if let Some(keep) = keep {
            let gone = datafusion::arrow::compute::not(keep)?;
            let gone = filter_record_batch(&rows, &gone)?;
            let updated = gone.num_columns() - 1;
            let mut columns = gone.columns().to_vec();
            columns[updated] = Arc::new(Int64Array::from_value(TOMBSTONE, gone.num_rows()));
            if self.track_changes {
                self.pending
                    .push(RecordBatch::try_new(Arc::clone(&self.schema), columns)?);
            }
            let r = self.resident()?;
            for (i, s) in slots.iter().enumerate() {
                if keep.is_valid(i) && keep.value(i) {
                    continue;
                }
                let old = std::mem::replace(&mut r.loc[*s], NONE);
                if old != NONE {
                    r.live -= 1;
                    release(&mut r.segments, old);
                }
                removed += 1;
            }
            rows = filter_record_batch(&rows, keep)?;
            slots = slots
                .into_iter()
                .enumerate()
                .filter(|(i, _)| keep.is_valid(*i) && keep.value(*i))
                .map(|(_, s)| s)
                .collect();
        }
        let n = rows.num_rows();
        if self.track_changes && n > 0 {
            self.pending.push(rows.clone());
        }
        let min_bound = match &self.bound {
            Some(f) if n > 0 => Some(f(&rows)?.into_iter().flatten().min().unwrap_or(i64::MAX)),
            _ => None,
        };
        let r = self.resident()?;
        let id = r.next_segment;
        r.next_segment += 1;
        for (i, s) in slots.iter().enumerate() {
            let old = std::mem::replace(&mut r.loc[*s], pack(id, i));
            if old == NONE {
                r.live += 1;
            } else {
                release(&mut r.segments, old);
            }
        }
        let slots = slots.iter().map(|s| *s as u32).collect();
        if n > 0 {
            r.segments.insert(
                id,
                Segment {
                    rows,
                    dead: Vec::new(),
                    slots,
                    live: n,
                    min_bound,
                    min_updated: Some(now),
                },
            );
        }
        self.clean(n, cutoff)?;
        if removed > 0 {
            self.compact_index()?;
        }
        Ok(())
    }

    /// Whether a key may be due at `up_to` (last updated then or before, or with
    /// `by_bound` its eviction bound at or below it) without reading a spilled
    /// partition back.
    pub fn may_be_due(&self, up_to: i64, by_bound: bool) -> bool {
        let due = |m: Option<i64>| m.is_none_or(|m| m <= up_to);
        match (&self.resident, &self.spilled) {
            (Some(r), _) => {
                r.live > 0
                    && r.segments
                        .values()
                        .any(|s| due(if by_bound { s.min_bound } else { s.min_updated }))
            }
            (None, Some(s)) => due(if by_bound {
                s.min_bound
            } else {
                Some(s.min_updated)
            }),
            (None, None) => false,
        }
    }

    /// Adds to `touched` the live keys due at `up_to` that it does not hold yet (they
    /// have no rows: [`Touched::first`] `u32::MAX`): those last updated at or before
    /// it, or with `bound` those whose bound (per row, e.g. a session's end) is. The
    /// caller puts or removes every touched key, so each segment remembers the lowest
    /// bound among its other live rows and is skipped while that is above `up_to`; a
    /// spilled partition is read back only when it may hold a due key.
    pub fn touch_due(
        &mut self,
        touched: &mut Touched,
        up_to: i64,
        bound: Option<&BoundFn>,
    ) -> Result<()> {
        if !self.may_be_due(up_to, bound.is_some()) {
            return Ok(());
        }
        let updated_col = self.schema.fields().len() - 1;
        let r = self.resident()?;
        for s in &touched.slots {
            r.mark[*s] = 0;
        }
        let mut sources: Vec<u32> = Vec::new();
        let mut picks = Vec::new();
        let mut due = Vec::new();
        for (id, seg) in r.segments.iter_mut() {
            let cached = match bound {
                Some(_) => &mut seg.min_bound,
                None => &mut seg.min_updated,
            };
            if cached.is_some_and(|m| m > up_to) {
                continue;
            }
            let bounds: Vec<Option<i64>> = match bound {
                Some(f) => f(&seg.rows)?,
                None => seg
                    .rows
                    .column(updated_col)
                    .as_primitive::<Int64Type>()
                    .iter()
                    .collect(),
            };
            let mut min = i64::MAX;
            let mut source = None;
            for (row, slot) in seg.slots.iter().enumerate() {
                let slot = *slot as usize;
                if r.loc[slot] != pack(*id, row) || r.mark[slot] == 0 {
                    continue;
                }
                let Some(b) = bounds.get(row).copied().flatten() else {
                    continue;
                };
                if b > up_to {
                    min = min.min(b);
                    continue;
                }
                let s = *source.get_or_insert_with(|| {
                    sources.push(*id);
                    sources.len() - 1
                });
                picks.push((s, row));
                due.push(slot);
            }
            match bound {
                Some(_) => seg.min_bound = Some(min),
                None => seg.min_updated = Some(min),
            }
        }
        for s in &touched.slots {
            r.mark[*s] = u32::MAX;
        }
        let idle = due;
        if idle.is_empty() {
            return Ok(());
        }
        let gathered = (0..updated_col)
            .map(|c| {
                let arrays: Vec<&dyn Array> = sources
                    .iter()
                    .map(|s| r.segments[s].rows.column(c).as_ref())
                    .collect();
                interleave(&arrays, &picks)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (keys, values) = gathered.split_at(self.keys);
        let start = touched.slots.len();
        for (mine, more) in touched.keys.iter_mut().zip(keys) {
            *mine = datafusion::arrow::compute::concat(&[mine.as_ref(), more.as_ref()])?;
        }
        for (mine, more) in touched.previous.iter_mut().zip(values) {
            *mine = datafusion::arrow::compute::concat(&[mine.as_ref(), more.as_ref()])?;
        }
        touched.previous_group.extend(start..start + idle.len());
        touched
            .first
            .extend(std::iter::repeat_n(u32::MAX, idle.len()));
        touched.slots.extend(idle);
        Ok(())
    }

    /// Copies the oldest segments' live rows into one new segment when half of them
    /// are dead, some have expired, or there are too many segments; at most about
    /// `budget` rows, so a batch's cleaning follows its own size.
    fn clean(&mut self, budget: usize, cutoff: Option<i64>) -> Result<()> {
        let updated_col = self.schema.fields().len() - 1;
        let schema = Arc::clone(&self.schema);
        let r = self.resident()?;
        let mut chosen = Vec::new();
        let mut copied = 0;
        for (id, seg) in r.segments.iter() {
            if chosen.len() + 1 >= r.segments.len() {
                break; // never the newest
            }
            let expired = cutoff.is_some_and(|c| {
                datafusion::arrow::compute::min(
                    seg.rows.column(updated_col).as_primitive::<Int64Type>(),
                )
                .is_some_and(|m| m < c)
            });
            let crowded = r.segments.len() - chosen.len() > MAX_SEGMENTS;
            if !(seg.live * 2 <= seg.rows.num_rows() || expired || crowded) {
                break;
            }
            if copied > 0 && copied + seg.live > budget.max(65_536) {
                break;
            }
            copied += seg.live;
            chosen.push(*id);
        }
        if chosen.is_empty() {
            return Ok(());
        }
        let id = r.next_segment;
        r.next_segment += 1;
        let mut parts = Vec::with_capacity(chosen.len());
        let mut slots = Vec::new();
        let mut evicted = 0;
        for seg_id in chosen {
            let Some(seg) = r.segments.remove(&seg_id) else {
                continue;
            };
            let updated = seg.rows.column(updated_col).as_primitive::<Int64Type>();
            let mut keep = Vec::with_capacity(seg.rows.num_rows());
            for (row, slot) in seg.slots.iter().enumerate() {
                let is_live = !seg.known_dead(row) && r.loc[*slot as usize] == pack(seg_id, row);
                let is_expired = cutoff.is_some_and(|c| updated.value(row) < c);
                if is_live && is_expired {
                    r.loc[*slot as usize] = NONE;
                    r.live -= 1;
                    evicted += 1;
                }
                let kept = is_live && !is_expired;
                if kept {
                    r.loc[*slot as usize] = pack(id, slots.len());
                    slots.push(*slot);
                }
                keep.push(kept);
            }
            parts.push(filter_record_batch(&seg.rows, &BooleanArray::from(keep))?);
        }
        let rows = datafusion::arrow::compute::concat_batches(&schema, &parts)?;
        if rows.num_rows() > 0 {
            let live = rows.num_rows();
            r.segments.insert(
                id,
                Segment {
                    rows,
                    dead: Vec::new(),
                    slots,
                    live,
                    min_bound: None,
                    min_updated: None,
                },
            );
        }
        self.evicted += evicted;
        if evicted > 0 {
            self.compact_index()?;
        }
        Ok(())
    }

    /// Drops the live rows whose bound (`bound` gives it per row: a window's end) is at
    /// most `up_to` (the watermark); how many, and the rows themselves when `keep_rows`
    /// (append-mode windows emit what they drop). A segment is read again only while
    /// it may hold such rows.
    pub fn evict_until(
        &mut self,
        up_to: i64,
        bound: &BoundFn,
        keep_rows: bool,
    ) -> Result<(usize, Vec<RecordBatch>)> {
        if self.resident.is_none() && !self.may_be_due(up_to, true) {
            return Ok((0, Vec::new()));
        }
        let r = self.resident()?;
        let Resident {
            loc,
            live,
            segments,
            ..
        } = r;
        let mut evicted = 0;
        let mut taken = Vec::new();
        let mut rows_due: Vec<u32> = Vec::new();
        let ids: Vec<u32> = segments.keys().copied().collect();
        for id in ids {
            let Some(seg) = segments.get_mut(&id) else {
                continue;
            };
            if seg.min_bound.is_some_and(|m| m > up_to) {
                continue;
            }
            let bounds = bound(&seg.rows)?;
            let mut min = i64::MAX;
            rows_due.clear();
            for (row, slot) in seg.slots.iter().enumerate() {
                if loc[*slot as usize] != pack(id, row) {
                    continue;
                }
                match bounds.get(row).copied().flatten() {
                    Some(b) if b <= up_to => {
                        loc[*slot as usize] = NONE;
                        rows_due.push(row as u32);
                    }
                    Some(b) => min = min.min(b),
                    None => {}
                }
            }
            for row in &rows_due {
                seg.mark_dead(*row as usize);
            }
            let dead = rows_due.len();
            if keep_rows && dead > 0 {
                taken.push(if dead == seg.rows.num_rows() {
                    seg.rows.clone()
                } else {
                    take_record_batch(&seg.rows, &UInt32Array::from(rows_due.clone()))?
                });
            }
            seg.live -= dead;
            seg.min_bound = Some(min);
            *live -= dead;
            evicted += dead;
            if seg.live == 0 {
                segments.remove(&id);
            }
        }
        self.compact_index()?;
        Ok((evicted, taken))
    }

    /// Rebuilds the key index from the live rows once most of its keys are gone
    /// (closed windows, expired keys): the index never forgets a key by itself.
    fn compact_index(&mut self) -> Result<()> {
        let Some(r) = self.resident.as_mut() else {
            return Ok(());
        };
        if r.loc.len() <= 2 * r.live + 4096 {
            return Ok(());
        }
        let rows = self.scan(None)?;
        let mut fresh = self.empty_resident()?;
        for b in rows {
            ingest(&mut fresh, b, self.keys)?;
        }
        self.resident = Some(fresh);
        Ok(())
    }

    /// Every live row (keys, values, `__updated`), expired ones left out.
    pub fn scan(&mut self, cutoff: Option<i64>) -> Result<Vec<RecordBatch>> {
        let updated_col = self.schema.fields().len() - 1;
        if self.resident.is_none() {
            let Some(s) = &self.spilled else {
                return Ok(Vec::new());
            };
            return read_spill(&s.path)?
                .into_iter()
                .map(|b| unexpired(b, updated_col, cutoff))
                .collect();
        }
        let r = self.resident()?;
        let mut out = Vec::with_capacity(r.segments.len());
        for (id, seg) in &r.segments {
            let keep: BooleanArray = seg
                .slots
                .iter()
                .enumerate()
                .map(|(row, slot)| Some(r.loc[*slot as usize] == pack(*id, row)))
                .collect();
            out.push(unexpired(
                filter_record_batch(&seg.rows, &keep)?,
                updated_col,
                cutoff,
            )?);
        }
        Ok(out)
    }

    /// Writes the live rows to this partition's spill file and frees the memory.
    pub fn spill(&mut self) -> Result<()> {
        if self.resident.is_none() {
            return Ok(());
        }
        let rows = self.scan(None)?;
        let path = self.spill_path.clone();
        let bytes = write_spill(&path, &self.schema, &rows)?;
        let updated_col = self.schema.fields().len() - 1;
        let min_updated = rows
            .iter()
            .filter_map(|b| {
                datafusion::arrow::compute::min(b.column(updated_col).as_primitive::<Int64Type>())
            })
            .min()
            .unwrap_or(i64::MAX);
        let min_bound = self.resident.as_ref().and_then(|r| {
            r.segments
                .values()
                .map(|s| s.min_bound)
                .try_fold(i64::MAX, |m, b| b.map(|b| m.min(b)))
        });
        self.spilled = Some(Spilled {
            path,
            rows: rows.iter().map(|b| b.num_rows()).sum(),
            bytes,
            min_updated,
            min_bound,
        });
        self.resident = None;
        Ok(())
    }

    /// Keys held (live, expired ones not yet evicted included).
    pub fn rows(&self) -> usize {
        match (&self.resident, &self.spilled) {
            (Some(r), _) => r.live,
            (None, Some(s)) => s.rows,
            (None, None) => 0,
        }
    }

    /// Memory the index, locations and segments take, and the rows kept for the next
    /// checkpoint once they are all that holds them (a spilled partition's; while
    /// resident they share the segments' buffers).
    pub fn memory(&self) -> usize {
        let pending = || {
            self.pending
                .iter()
                .map(|b| b.get_array_memory_size())
                .sum::<usize>()
        };
        self.resident.as_ref().map_or_else(pending, |r| {
            r.index.as_ref().map_or(0, |i| i.size())
                + r.loc.capacity() * 8
                + r.mark.capacity() * 4
                + r.segments
                    .values()
                    .map(|s| {
                        s.rows.get_array_memory_size()
                            + s.slots.capacity() * 4
                            + s.dead.capacity() * 8
                    })
                    .sum::<usize>()
        })
    }

    /// Bytes on disk.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled.as_ref().map_or(0, |s| s.bytes)
    }

    /// Forgets everything (a restore follows).
    pub fn clear(&mut self) {
        self.resident = None;
        if let Some(s) = self.spilled.take() {
            let _ = std::fs::remove_file(&s.path);
        }
        self.pending.clear();
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Some(s) = &self.spilled {
            let _ = std::fs::remove_file(&s.path);
        }
    }
}

fn spill_error(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("state spill file {}: {e}", path.display()),
    ))
}

/// Writes `rows` to the spill file `path` (Arrow IPC; its folder made if missing);
/// the bytes written.
pub(super) fn write_spill(
    path: &std::path::Path,
    schema: &SchemaRef,
    rows: &[RecordBatch],
) -> Result<u64> {
    let write = || -> std::io::Result<u64> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(path)?;
        let options = crate::checkpoint::ipc_options().map_err(std::io::Error::other)?;
        let mut w = datafusion::arrow::ipc::writer::FileWriter::try_new_with_options(
            std::io::BufWriter::new(file),
            schema,
            options,
        )
        .map_err(std::io::Error::other)?;
        for b in rows {
            w.write(b).map_err(std::io::Error::other)?;
        }
        w.finish().map_err(std::io::Error::other)?;
        Ok(std::fs::metadata(path)?.len())
    };
    write().map_err(|e| spill_error(path, e))
}

/// The rows of the spill file `path`.
pub(super) fn read_spill(path: &std::path::Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(|e| spill_error(path, e))?;
    datafusion::arrow::ipc::reader::FileReader::try_new(file, None)?
        .map(|b| Ok(b?))
        .collect()
}

/// `batch` without the rows updated before `cutoff`.
fn unexpired(batch: RecordBatch, updated_col: usize, cutoff: Option<i64>) -> Result<RecordBatch> {
    let Some(cutoff) = cutoff else {
        return Ok(batch);
    };
    let updated = batch.column(updated_col).as_primitive::<Int64Type>();
    let keep: BooleanArray = updated
        .iter()
        .map(|u| Some(u.is_none_or(|u| u >= cutoff)))
        .collect();
    Ok(filter_record_batch(&batch, &keep)?)
}

impl Segment {
    fn mark_dead(&mut self, row: usize) {
        let word = row / 64;
        if self.dead.len() <= word {
            self.dead
                .resize(self.rows.num_rows().div_ceil(64).max(word + 1), 0);
        }
        self.dead[word] |= 1 << (row % 64);
    }

    fn known_dead(&self, row: usize) -> bool {
        self.dead
            .get(row / 64)
            .is_some_and(|w| (w >> (row % 64)) & 1 == 1)
    }
}

/// The row at `at` (`pack(segment, row)`) is no longer live; an empty segment goes.
fn release(segments: &mut BTreeMap<u32, Segment>, at: u64) {
    let (id, row) = unpack(at);
    if let Some(seg) = segments.get_mut(&id) {
        seg.live -= 1;
        seg.mark_dead(row);
        if seg.live == 0 {
            segments.remove(&id);
        }
    }
}

/// `rows` become one segment of `r`, each row the newest version of its key; a
/// tombstone row (`__updated` = [`TOMBSTONE`]) removes its key.
fn ingest(r: &mut Resident, rows: RecordBatch, keys: usize) -> Result<()> {
    let n = rows.num_rows();
    if n == 0 {
        return Ok(());
    }
    let mut slots = Vec::with_capacity(n);
    match r.index.as_mut() {
        Some(index) => index.intern(&rows.columns()[..keys], &mut slots)?,
        None => slots.resize(n, 0),
    }
    let len = r.index.as_mut().map_or(1, |i| i.len());
    r.loc.resize(len, NONE);
    let id = r.next_segment;
    r.next_segment += 1;
    let updated = Arc::clone(rows.column(rows.num_columns() - 1));
    let updated = updated.as_primitive::<Int64Type>();
    let min_updated = updated.values().iter().filter(|u| **u != TOMBSTONE).min();
    r.segments.insert(
        id,
        Segment {
            rows,
            dead: Vec::new(),
            slots: slots.iter().map(|s| *s as u32).collect(),
            live: n,
            min_bound: None,
            min_updated: Some(min_updated.copied().unwrap_or(i64::MAX)),
        },
    );
    // Every row is counted live until superseded or found a tombstone: the segment
    // goes only once none is left.
    for (row, s) in slots.iter().enumerate() {
        let tombstone = updated.value(row) == TOMBSTONE;
        let new = if tombstone { NONE } else { pack(id, row) };
        let old = std::mem::replace(&mut r.loc[*s], new);
        if old == NONE {
            if !tombstone {
                r.live += 1;
            }
        } else {
            if tombstone {
                r.live -= 1;
            }
            release(&mut r.segments, old);
        }
        if tombstone {
            release(&mut r.segments, pack(id, row));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn partition() -> Partition {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, true),
            Field::new(super::super::UPDATED, DataType::Int64, false),
        ]));
        Partition::new(schema, 1, std::env::temp_dir().join("unused.arrow"))
    }

    /// Each key's count after `keys` are put one batch after another (a key's value:
    /// its previous value + its rows in the batch).
    fn count(p: &mut Partition, keys: &[i64], now: i64) -> Vec<(i64, i64)> {
        let k: ArrayRef = Arc::new(Int64Array::from(keys.to_vec()));
        let t = p.touch(&[k], keys.len(), None).unwrap();
        let mut n = vec![0i64; t.len()];
        for g in &t.row_group {
            n[*g] += 1;
        }
        let previous = t.previous[0].as_primitive::<Int64Type>();
        for (j, g) in t.previous_group.iter().enumerate() {
            n[*g] += previous.value(j);
        }
        let out: Vec<(i64, i64)> = t.keys[0]
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .copied()
            .zip(n.iter().copied())
            .collect();
        p.put(t, vec![Arc::new(Int64Array::from(n))], None, now, None)
            .unwrap();
        out
    }

    /// A batch's rows are grouped by key and merged with the key's newest value, and
    /// the cleaning pass (which skips rows known dead) keeps every key's newest value
    /// while copying old segments forward.
    #[test]
    fn keys_are_grouped_and_counted_across_batches_and_cleaning() {
        let mut p = partition();
        let mut want = std::collections::HashMap::new();
        for b in 0..80i64 {
            let keys: Vec<i64> = (0..500).map(|i| (i * 7 + b * 13) % 300).collect();
            for k in &keys {
                *want.entry(*k).or_insert(0i64) += 1;
            }
            let mut got = count(&mut p, &keys, b);
            got.sort_unstable();
            let mut expect: Vec<(i64, i64)> = got.iter().map(|(k, _)| (*k, want[k])).collect();
            expect.sort_unstable();
            assert_eq!(got, expect, "batch {b}");
        }
        assert_eq!(p.rows(), 300);
        assert!(
            p.resident.as_ref().unwrap().segments.len() <= MAX_SEGMENTS + 1,
            "old segments were cleaned"
        );
    }
}
