//! `StreamJoin`: an inner join of two streams over event time — an interval join
//! (`a.ts BETWEEN b.ts - INTERVAL '10' SECOND AND b.ts`) or a join of rows in the same
//! window (`a.window_start = b.window_start`). Both sides' rows are kept as state
//! until the other side's watermark proves that no future row can match them.
//!
//! ```text
//!  input (one tagged union of both sides) ─split─▶ new left L', new right R'
//!    out = join(L', R ∪ R') ∪ join(L, R')      (L, R: state of earlier batches)
//!    L ∪= L', R ∪= R'; evict rows the other side's watermark has passed
//! ```
//!
//! The join itself is DataFusion's: its plan is made once, over two slots, and run
//! twice per batch with the slots refilled.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, UInt32Array, new_empty_array,
};
use datafusion::arrow::compute::kernels::cmp::{gt_eq, lt};
use datafusion::arrow::compute::{
    concat_batches, filter_record_batch, is_not_null, max, take_record_batch,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, UInt32Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::dataframe::DataFrame;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;

use super::{OperatorContext, StreamOperator, positional_schema};
use crate::checkpoint::OperatorState;
use crate::slot::BatchSlot;
use crate::state::{BoundFn, KeyedState, Nested, StateConfig, StateStats, min_per_list};
use crate::time::format_duration;
use crate::{Result, internal_err};

/// The event-time column of one side of a [`StreamJoin`].
#[derive(Debug, Clone, Copy)]
pub struct JoinTime {
    /// The column's index in the side's schema (a timestamp).
    pub index: usize,
    /// The side's watermark is its latest time minus this; `None`: the side has no
    /// watermark, so the other side's rows are kept for ever.
    pub delay: Option<Duration>,
}

/// One side's rows kept across batches: in a keyed store, one row per value of the
/// equi-join keys holding that key's rows as lists.
struct Side {
    schema: SchemaRef,
    slot: Arc<BatchSlot>,
    time: JoinTime,
    nested: Nested,
    store: KeyedState,
    /// Per store row: its earliest row time (what eviction waits for).
    bound: Arc<BoundFn>,
    /// Watermark (ms), once a row was seen on a side with a delay.
    watermark: Option<i64>,
}

impl Side {
    fn new(schema: SchemaRef, time: JoinTime, partitions: usize, prefix: &str) -> Result<Self> {
        let (nested, store, bound) =
            Self::keyed(&schema, &time, Vec::new(), prefix, StateConfig::default())?;
        Ok(Self {
            slot: BatchSlot::new(Arc::clone(&schema), partitions),
            schema,
            time,
            nested,
            store,
            bound,
            watermark: None,
        })
    }

    /// The store keyed by `keys` (equi-join columns), every other column a list.
    fn key_by(&mut self, keys: Vec<usize>, prefix: &str, config: StateConfig) -> Result<()> {
        (self.nested, self.store, self.bound) =
            Self::keyed(&self.schema, &self.time, keys, prefix, config)?;
        Ok(())
    }

    fn keyed(
        schema: &SchemaRef,
        time: &JoinTime,
        keys: Vec<usize>,
        prefix: &str,
        config: StateConfig,
    ) -> Result<(Nested, KeyedState, Arc<BoundFn>)> {
        let lists: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !keys.contains(i))
            .collect();
        let bound: Arc<BoundFn> = match keys.iter().position(|k| *k == time.index) {
            Some(at) => Arc::new(move |rows: &RecordBatch| {
                Ok(
                    super::timestamp_millis(rows.column(at), "a stream join's time column")?
                        .iter()
                        .collect(),
                )
            }),
            None => {
                let at = keys.len()
                    + lists
                        .iter()
                        .position(|c| *c == time.index)
                        .unwrap_or_default();
                Arc::new(move |rows: &RecordBatch| {
                    min_per_list(rows.column(at), |times| {
                        super::timestamp_millis(times, "a stream join's time column")
                    })
                })
            }
        };
        let nested = Nested::new(Arc::clone(schema), keys, lists).with_prefix(prefix);
        let mut store = KeyedState::try_new(&nested.key_fields(), &nested.list_fields(), config)?;
        store.set_bound(Arc::clone(&bound));
        Ok((nested, store, bound))
    }

    /// The time column of `batch` in milliseconds since the epoch.
    fn millis(&self, batch: &RecordBatch) -> Result<Int64Array> {
        super::timestamp_millis(batch.column(self.time.index), "a stream join's time column")
    }

    /// Keep the rows of `batches` at or after `min_ms` (all rows but null times when
    /// `min_ms` is `None`); returns the kept rows and how many were older.
    fn keep_from(
        &self,
        batches: Vec<RecordBatch>,
        min_ms: Option<i64>,
    ) -> Result<(Vec<RecordBatch>, u64)> {
        let mut kept = Vec::with_capacity(batches.len());
        let mut older = 0u64;
        for b in batches {
            let ms = self.millis(&b)?;
            let keep: BooleanArray = match min_ms {
                Some(min) => gt_eq(&ms, &Int64Array::new_scalar(min))?,
                None => is_not_null(&ms)?,
            };
            if let Some(min) = min_ms {
                older += lt(&ms, &Int64Array::new_scalar(min))?.true_count() as u64;
            }
            if keep.true_count() == b.num_rows() && keep.null_count() == 0 {
                kept.push(b);
            } else {
                let f = filter_record_batch(&b, &keep)?;
                if f.num_rows() > 0 {
                    kept.push(f);
                }
            }
        }
        Ok((kept, older))
    }

    fn latest(&self, batches: &[RecordBatch]) -> Result<Option<i64>> {
        let mut latest = None;
        for b in batches {
            if let Some(m) = max(&self.millis(b)?) {
                latest = Some(latest.map_or(m, |l: i64| l.max(m)));
            }
        }
        Ok(latest)
    }

    /// Advance the watermark past `batches`' latest time.
    fn advance(&mut self, batches: &[RecordBatch]) -> Result<()> {
        let (Some(delay), Some(latest)) = (self.time.delay, self.latest(batches)?) else {
            return Ok(());
        };
        let candidate = latest.saturating_sub(delay.as_millis() as i64);
        self.watermark = Some(self.watermark.map_or(candidate, |w| w.max(candidate)));
        Ok(())
    }

    /// The key columns of `rows` (this side's or the other's, `keys` naming them)
    /// then each row's position.
    fn routing(rows: &RecordBatch, keys: &[usize]) -> Vec<ArrayRef> {
        let mut columns: Vec<ArrayRef> = keys.iter().map(|k| Arc::clone(rows.column(*k))).collect();
        columns.push(Arc::new(UInt32Array::from_iter_values(
            0..rows.num_rows() as u32,
        )));
        columns
    }

    /// This side's stored rows whose keys are those of the other side's new `rows`
    /// (`keys` their key columns): all the rows they can match, read from the
    /// partitions they hash to, in parallel.
    fn gather(&mut self, rows: &RecordBatch, keys: &[usize], now: i64) -> Result<Vec<RecordBatch>> {
        let columns = Self::routing(rows, keys);
        let routed = self.store.route(&columns, rows.num_rows())?;
        let cutoff = self.store.cutoff(now);
        let nk = keys.len();
        let nested = &self.nested;
        self.store.for_each(routed, |p, columns: Vec<ArrayRef>| {
            let touched = p.touch(&columns[..nk], columns[nk].len(), cutoff)?;
            nested.explode(&touched.keys, &touched.previous, &touched.previous_group)
        })
    }

    /// Adds `rows` (new, this side's) to the store and drops the stored rows older
    /// than `keep_from` (what the other side's watermark proves can match nothing
    /// more): the keys with new rows and the keys whose earliest row is that old.
    fn put(&mut self, rows: &RecordBatch, keep_from: Option<i64>, now: i64) -> Result<()> {
        let keys = self.nested.keys.clone();
        let nk = keys.len();
        let columns = Self::routing(rows, &keys);
        let routed = self.store.route(&columns, rows.num_rows())?;
        let cutoff = self.store.cutoff(now);
        let inputs: Vec<Option<Option<Vec<ArrayRef>>>> = if keep_from.is_some() {
            routed.into_iter().map(Some).collect()
        } else {
            routed.into_iter().map(|r| r.map(Some)).collect()
        };
        let (nested, bound, time) = (&self.nested, &self.bound, self.time.index);
        self.store.for_each(inputs, |p, routed| {
            let routed = match routed {
                Some(r) => r,
                None => {
                    if !keep_from.is_some_and(|k| p.may_be_due(k - 1, true)) {
                        return Ok(());
                    }
                    let mut empty: Vec<ArrayRef> = nested
                        .key_fields()
                        .iter()
                        .map(|f| new_empty_array(f.data_type()))
                        .collect();
                    empty.push(new_empty_array(&DataType::UInt32));
                    empty
                }
            };
            let n = routed[nk].len();
            let mut touched = p.touch(&routed[..nk], n, cutoff)?;
            if let Some(k) = keep_from {
                p.touch_due(&mut touched, k - 1, Some(bound.as_ref()))?;
            }
            if touched.len() == 0 {
                return Ok(());
            }
            let previous =
                nested.explode(&touched.keys, &touched.previous, &touched.previous_group)?;
            let positions = routed[nk].as_primitive::<UInt32Type>();
            let new = take_record_batch(rows, positions)?;
            let mut all = concat_batches(&nested.flat, [&previous, &new])?;
            if let Some(k) = keep_from {
                let ms = super::timestamp_millis(all.column(time), "a stream join's time column")?;
                all = filter_record_batch(&all, &gt_eq(&ms, &Int64Array::new_scalar(k))?)?;
            }
            let (lists, keep) = nested.nest(&all, &touched.keys)?;
            p.put(touched, lists, Some(&keep), now, cutoff)
        })?;
        Ok(())
    }
}

/// An inner join of two streams whose rows match only within a bounded distance in
/// event time: `left.time - right.time` lies in `[lo, hi]` (milliseconds; an open
/// end is `None`).
pub struct StreamJoin {
    left: Side,
    right: Side,
    lo: Option<i64>,
    hi: Option<i64>,
    template: LogicalPlan,
    plan: Option<Arc<dyn ExecutionPlan>>,
    task_ctx: Option<Arc<TaskContext>>,
    output_schema: SchemaRef,
    late_rows_last_batch: u64,
    /// The two time columns as the query names them (EXPLAIN).
    time_names: (String, String),
    /// The equi-join key columns of each side (pairwise equal), what the state is
    /// keyed and partitioned by.
    keys: (Vec<usize>, Vec<usize>),
    config: StateConfig,
}

impl StreamJoin {
    /// Key each side's state by these columns (`left[i] = right[i]` is part of the
    /// join condition; the same types on both sides): rows are then partitioned by
    /// key, and a batch reads only the stored rows with its keys.
    pub fn with_keys(mut self, left: Vec<usize>, right: Vec<usize>) -> Result<Self> {
        if left.len() != right.len() {
            return internal_err!(
                "stream join keys: {} left, {} right",
                left.len(),
                right.len()
            );
        }
        for (l, r) in left.iter().zip(&right) {
            let (lt, rt) = (
                self.left.schema.field(*l).data_type(),
                self.right.schema.field(*r).data_type(),
            );
            if lt != rt {
                return internal_err!("stream join key types differ: {lt} and {rt}");
            }
        }
        self.keys = (left, right);
        self.rekey()?;
        Ok(self)
    }

    /// How both sides' rows are kept (partitions, memory budget, time-to-live).
    pub fn with_state_config(mut self, config: StateConfig) -> Result<Self> {
        self.config = config;
        self.rekey()?;
        Ok(self)
    }

    fn rekey(&mut self) -> Result<()> {
        self.left
            .key_by(self.keys.0.clone(), "l", self.config.clone())?;
        self.right
            .key_by(self.keys.1.clone(), "r", self.config.clone())
    }

    /// The two time columns as the query names them (`a.ts`, `b.ts`), for EXPLAIN.
    pub fn with_time_names(mut self, left: String, right: String) -> Self {
        self.time_names = (left, right);
        self
    }

    /// The operator's input must be `[side: Boolean (true = left), left columns...,
    /// right columns...]`. `join` builds the join over two scans that produce the
    /// left and right columns (named `c0, c1, ...`).
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        input: &DataFrame,
        left: SchemaRef,
        right: SchemaRef,
        left_time: JoinTime,
        right_time: JoinTime,
        bounds: (Option<i64>, Option<i64>),
        join: impl FnOnce(LogicalPlan, LogicalPlan) -> Result<LogicalPlan>,
    ) -> Result<Self> {
        let input_fields = input.schema().fields().len();
        if input_fields != 1 + left.fields().len() + right.fields().len() {
            return internal_err!(
                "stream join input has {input_fields} columns, expected 1 + {} + {}",
                left.fields().len(),
                right.fields().len()
            );
        }
        let time_names = (
            left.field(left_time.index).name().clone(),
            right.field(right_time.index).name().clone(),
        );
        let partitions = input.task_ctx().session_config().target_partitions();
        let left = Side::new(positional_schema(&left), left_time, partitions, "l")?;
        let right = Side::new(positional_schema(&right), right_time, partitions, "r")?;
        let scan = |name: &str, side: &Side| -> Result<LogicalPlan> {
            Ok(
                LogicalPlanBuilder::scan(name, provider_as_source(side.slot.table()?), None)?
                    .build()?,
            )
        };
        let template = join(
            scan("__flumen_join_left", &left)?,
            scan("__flumen_join_right", &right)?,
        )?;
        let output_schema = positional_schema(&Arc::new(template.schema().as_arrow().clone()));
        Ok(Self {
            left,
            right,
            lo: bounds.0,
            hi: bounds.1,
            template,
            plan: None,
            task_ctx: None,
            output_schema,
            late_rows_last_batch: 0,
            time_names,
            keys: (Vec::new(), Vec::new()),
            config: StateConfig::default(),
        })
    }

    async fn run_join(
        &self,
        left: &[RecordBatch],
        right: &[RecordBatch],
    ) -> Result<Vec<RecordBatch>> {
        let (Some(plan), Some(task_ctx)) = (&self.plan, &self.task_ctx) else {
            return internal_err!("stream join run before it was planned");
        };
        self.left.slot.fill(left.to_vec());
        self.right.slot.fill(right.to_vec());
        let parts = crate::scheduler::execute(plan, task_ctx).await?;
        let mut out = Vec::new();
        for b in parts.into_iter().flatten() {
            if b.num_rows() > 0 {
                // Same columns, positional names.
                out.push(RecordBatch::try_new(
                    Arc::clone(&self.output_schema),
                    b.columns().to_vec(),
                )?);
            }
        }
        Ok(out)
    }

    /// Split the tagged input into the new left and right rows.
    fn split(&self, input: Vec<RecordBatch>) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
        let nl = self.left.schema.fields().len();
        let mut left = Vec::new();
        let mut right = Vec::new();
        for b in input {
            if b.num_rows() == 0 {
                continue;
            }
            let Some(tag) = b.column(0).as_boolean_opt() else {
                return internal_err!("stream join input's first column is not the side tag");
            };
            let is_left = tag.clone();
            let is_right = datafusion::arrow::compute::not(tag)?;
            let pick = |mask: &BooleanArray,
                        cols: &[ArrayRef],
                        schema: &SchemaRef|
             -> Result<Option<RecordBatch>> {
                if mask.true_count() == 0 {
                    return Ok(None);
                }
                let cols = cols
                    .iter()
                    .map(|c| {
                        if mask.true_count() == mask.len() {
                            Ok(Arc::clone(c))
                        } else {
                            Ok(datafusion::arrow::compute::filter(c.as_ref(), mask)?)
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Some(RecordBatch::try_new(Arc::clone(schema), cols)?))
            };
            let cols = b.columns();
            if let Some(l) = pick(&is_left, &cols[1..1 + nl], &self.left.schema)? {
                left.push(l);
            }
            if let Some(r) = pick(&is_right, &cols[1 + nl..], &self.right.schema)? {
                right.push(r);
            }
        }
        Ok((left, right))
    }
}

#[async_trait]
impl StreamOperator for StreamJoin {
    fn name(&self) -> String {
        "StreamJoin".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    fn explain(&self) -> String {
        let range = |v: Option<i64>| match v {
            Some(ms) if ms < 0 => format!(
                "-{}",
                format_duration(Duration::from_millis(ms.unsigned_abs()))
            ),
            Some(ms) => format_duration(Duration::from_millis(ms as u64)),
            None => "unbounded".into(),
        };
        let keep = |side: &str, other: &str, time: &JoinTime, bound: Option<i64>| match (
            time.delay, bound,
        ) {
            (Some(d), Some(_)) => format!(
                "{side} rows are kept until the watermark of {other} (latest - {}) passes them",
                format_duration(d)
            ),
            (None, _) => format!(
                "WARNING: {other} has no watermark, {side} rows are kept for ever (state grows without bound)"
            ),
            (_, None) => format!(
                "WARNING: the condition does not bound {side} rows in time, they are kept for ever (state grows without bound)"
            ),
        };
        let (lt, rt) = &self.time_names;
        let ttl = match self.config.ttl {
            Some(ttl) => format!(
                "; bounded by state_ttl too: a key without new rows on its side for {} is evicted with its rows",
                format_duration(ttl)
            ),
            None => String::new(),
        };
        format!(
            "StreamJoin (inner join of two streams over event time): {lt} - {rt} in [{}, {}]; {}; {}; rows older than their side's watermark are dropped and counted as late{ttl}",
            range(self.lo),
            range(self.hi),
            keep("left", "the right side", &self.right.time, self.lo),
            keep("right", "the left side", &self.left.time, self.hi),
        )
    }

    fn describe(&self) -> String {
        format!(
            "StreamJoinExec {} left time {:?} right time {:?} bounds [{:?}, {:?}]",
            self.template.display(),
            self.left.time,
            self.right.time,
            self.lo,
            self.hi
        )
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        let (state, _) = input.clone().into_parts();
        self.plan = Some(state.create_physical_plan(&self.template).await?);
        self.task_ctx = Some(Arc::new(TaskContext::from(&state)));
        Ok(input.clone().create_physical_plan().await?)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let (new_left, new_right) = self.split(input)?;
        // Rows older than their side's watermark are late: dropped and counted. Rows
        // without a time can match nothing.
        let (new_left, late_left) = self.left.keep_from(new_left, self.left.watermark)?;
        let (new_right, late_right) = self.right.keep_from(new_right, self.right.watermark)?;
        self.late_rows_last_batch = late_left + late_right;
        let new_left = concat_batches(&self.left.schema, &new_left)?;
        let new_right = concat_batches(&self.right.schema, &new_right)?;
        let now = ctx.batch_time.as_millis();
        let (left_keys, right_keys) = self.keys.clone();
        let mut out = Vec::new();
        // New left rows meet the stored right rows of their keys and the new right
        // rows; new right rows meet the stored left rows of their keys.
        if new_left.num_rows() > 0 {
            let mut right = self.right.gather(&new_left, &left_keys, now)?;
            right.push(new_right.clone());
            right.retain(|b| b.num_rows() > 0);
            if !right.is_empty() {
                out.extend(
                    self.run_join(std::slice::from_ref(&new_left), &right)
                        .await?,
                );
            }
        }
        if new_right.num_rows() > 0 {
            let mut left = self.left.gather(&new_right, &right_keys, now)?;
            left.retain(|b| b.num_rows() > 0);
            if !left.is_empty() {
                out.extend(
                    self.run_join(&left, std::slice::from_ref(&new_right))
                        .await?,
                );
            }
        }
        self.left.slot.clear();
        self.right.slot.clear();
        self.left.advance(std::slice::from_ref(&new_left))?;
        self.right.advance(std::slice::from_ref(&new_right))?;
        // A left row matches right rows with time in [t - hi, t - lo]; the right
        // side's future rows are at or after its watermark: left rows before
        // `wm_right + lo` can match nothing more (and the other way round).
        let left_from = self
            .lo
            .zip(self.right.watermark)
            .map(|(lo, wm)| wm.saturating_add(lo));
        let right_from = self
            .hi
            .zip(self.left.watermark)
            .map(|(hi, wm)| wm.saturating_sub(hi));
        self.left.put(&new_left, left_from, now)?;
        self.right.put(&new_right, right_from, now)?;
        Ok(Some(out))
    }

    /// Keys held on both sides (each with its rows).
    fn state_rows(&self) -> usize {
        self.state_stats().rows as usize
    }

    fn late_rows(&self) -> u64 {
        self.late_rows_last_batch
    }

    /// The left side's time column when the condition bounds how much later a right
    /// row may be (`lo`), the right side's when it bounds how much later a left row
    /// may be (`hi`), each once both sides have a watermark.
    fn watermarked_columns(&self) -> Vec<usize> {
        let mut out = Vec::new();
        if self.left.time.delay.is_some() && self.right.time.delay.is_some() {
            if self.lo.is_some() {
                out.push(self.left.time.index);
            }
            if self.hi.is_some() {
                out.push(self.left.schema.fields().len() + self.right.time.index);
            }
        }
        out
    }

    /// A future match has a new row on one side at or after that side's watermark;
    /// with `left.time - right.time` in `[lo, hi]`, its left time is at least
    /// `min(wm_left, wm_right + lo)` and its right time at least
    /// `min(wm_right, wm_left - hi)`.
    fn output_watermark(&self, column: usize) -> Option<i64> {
        let (l, r) = (self.left.watermark?, self.right.watermark?);
        let nl = self.left.schema.fields().len();
        if column == self.left.time.index {
            Some(l.min(r.saturating_add(self.lo?)))
        } else if column == nl + self.right.time.index {
            Some(r.min(l.saturating_sub(self.hi?)))
        } else {
            None
        }
    }

    /// The lower of the two sides' watermarks (the join's event time advances as its
    /// slower input does).
    fn watermark(&self) -> Option<i64> {
        match (self.left.watermark, self.right.watermark) {
            (Some(l), Some(r)) => Some(l.min(r)),
            (l, r) => l.or(r),
        }
    }

    fn state_bytes(&self) -> usize {
        self.state_stats().memory_bytes as usize
    }

    fn state_stats(&self) -> StateStats {
        let (l, r) = (self.left.store.stats(), self.right.store.stats());
        StateStats {
            rows: l.rows + r.rows,
            memory_bytes: l.memory_bytes + r.memory_bytes,
            spilled_bytes: l.spilled_bytes + r.spilled_bytes,
            evicted: l.evicted + r.evicted,
        }
    }

    /// Both sides' store rows (left first; a delta of the keys changed since the last
    /// checkpoint on both, or all of both) and watermarks.
    fn snapshot(&mut self) -> Result<OperatorState> {
        let full = self.left.store.needs_full() || self.right.store.needs_full();
        let (kind, mut batches) = self.left.store.checkpoint_as(None, full)?;
        let left_batches = batches.len();
        let (_, right) = self.right.store.checkpoint_as(None, full)?;
        batches.extend(right);
        Ok(OperatorState {
            batches,
            meta: serde_json::json!({
                "state": kind.as_str(),
                "partitions": self.config.partitions,
                "left_batches": left_batches,
                "left_watermark": self.left.watermark,
                "right_watermark": self.right.watermark,
            }),
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        self.left.watermark = state.meta["left_watermark"].as_i64();
        self.right.watermark = state.meta["right_watermark"].as_i64();
        if state.meta.get("state").is_some() {
            // A chain of snapshots: each batch names its side.
            let (left, right): (Vec<RecordBatch>, Vec<RecordBatch>) = state
                .batches
                .into_iter()
                .partition(|b| self.left.nested.names_match(b));
            self.left.store.restore(left)?;
            return self.right.store.restore(right);
        }
        // From before the store: every buffered row, the left side's first.
        let Some(n) = state.meta["left_batches"].as_u64() else {
            return Err(crate::error::Error::Checkpoint(
                "a StreamJoin snapshot without left_batches".into(),
            ));
        };
        let mut batches = state.batches;
        if n as usize > batches.len() {
            return Err(crate::error::Error::Checkpoint(format!(
                "a StreamJoin snapshot lists {n} left batches of {}",
                batches.len()
            )));
        }
        let right = batches.split_off(n as usize);
        for (side, rows) in [(&mut self.left, batches), (&mut self.right, right)] {
            let rows = rows
                .into_iter()
                .map(|b| RecordBatch::try_new(Arc::clone(&side.schema), b.columns().to_vec()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let flat = concat_batches(&side.schema, &rows)?;
            side.store.restore(vec![side.nested.nest_all(&flat)?])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{BooleanArray, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::common::{Column, JoinType};

    use super::*;
    use crate::ops::test_input::{TestInput, rows};
    use crate::state::StateConfig;

    fn ts() -> DataType {
        DataType::Timestamp(TimeUnit::Millisecond, None)
    }

    /// Both sides in one tagged union, as the SQL planner feeds a stream join.
    fn input() -> TestInput {
        TestInput::new(&[
            ("__flumen_side", DataType::Boolean),
            ("lk", DataType::Utf8),
            ("lts", ts()),
            ("rk", DataType::Utf8),
            ("rts", ts()),
        ])
    }

    /// `left` rows (key, ms) and `right` rows, in one batch.
    fn rows_of(input: &TestInput, left: &[(&str, i64)], right: &[(&str, i64)]) -> RecordBatch {
        let n = left.len() + right.len();
        let side: BooleanArray = (0..n).map(|i| Some(i < left.len())).collect();
        let key = |on_left: bool| -> StringArray {
            left.iter()
                .map(|(k, _)| on_left.then_some(*k))
                .chain(right.iter().map(|(k, _)| (!on_left).then_some(*k)))
                .collect()
        };
        let time = |on_left: bool| -> TimestampMillisecondArray {
            left.iter()
                .map(|(_, t)| on_left.then_some(*t))
                .chain(right.iter().map(|(_, t)| (!on_left).then_some(*t)))
                .collect()
        };
        input.batch(vec![
            Arc::new(side),
            Arc::new(key(true)),
            Arc::new(time(true)),
            Arc::new(key(false)),
            Arc::new(time(false)),
        ])
    }

    /// `left.k = right.k`, `left.ts - right.ts` in [-2 s, 2 s], watermarks 1 s behind.
    fn join(input: &TestInput) -> StreamJoin {
        let side = |k: &str, t: &str| {
            Arc::new(Schema::new(vec![
                Field::new(k, DataType::Utf8, true),
                Field::new(t, ts(), true),
            ]))
        };
        let time = JoinTime {
            index: 1,
            delay: Some(Duration::from_secs(1)),
        };
        StreamJoin::try_new(
            &input.frame(),
            side("lk", "lts"),
            side("rk", "rts"),
            time,
            time,
            (Some(-2_000), Some(2_000)),
            |l, r| {
                Ok(LogicalPlanBuilder::from(l)
                    .join(
                        r,
                        JoinType::Inner,
                        (
                            vec![Column::from_qualified_name("__flumen_join_left.c0")],
                            vec![Column::from_qualified_name("__flumen_join_right.c0")],
                        ),
                        None,
                    )?
                    .build()?)
            },
        )
        .unwrap()
        .with_time_names("a.ts".into(), "b.ts".into())
    }

    fn keyed(input: &TestInput, partitions: usize, memory: usize) -> StreamJoin {
        join(input)
            .with_keys(vec![0], vec![0])
            .unwrap()
            .with_state_config(StateConfig {
                partitions,
                memory,
                ttl: None,
                spill_dir: None,
            })
            .unwrap()
    }

    /// Keyed by nothing, or by `k` in 3 spilled partitions: the same matches, the
    /// same rows left.
    #[tokio::test]
    async fn rows_match_across_batches_and_leave_once_the_other_side_s_watermark_passes() {
        for keyed_by_k in [false, true] {
            let input = input();
            let mut op = if keyed_by_k {
                keyed(&input, 3, 1)
            } else {
                join(&input)
            };
            matches_and_leaves(&input, &mut op).await;
        }
    }

    async fn matches_and_leaves(input: &TestInput, op: &mut StreamJoin) {
        let out = input
            .run(
                op,
                1,
                vec![rows_of(input, &[("a", 1_000)], &[("b", 1_000)])],
            )
            .await;
        assert!(rows(&out).is_empty());
        // A right row meets the left row of an earlier batch, and the other way round.
        let out = input
            .run(op, 2, vec![rows_of(input, &[], &[("a", 2_000)])])
            .await;
        assert_eq!(rows(&out), ["a,1970-01-01T00:00:01,a,1970-01-01T00:00:02"]);
        let out = input
            .run(op, 3, vec![rows_of(input, &[("a", 2_500)], &[])])
            .await;
        assert_eq!(
            rows(&out),
            ["a,1970-01-01T00:00:02.500,a,1970-01-01T00:00:02"]
        );
        // Both watermarks reach 9 s: every row before 7 s can match nothing more.
        let out = input
            .run(
                op,
                4,
                vec![rows_of(input, &[("z", 10_000)], &[("z", 10_000)])],
            )
            .await;
        assert_eq!(rows(&out), ["z,1970-01-01T00:00:10,z,1970-01-01T00:00:10"]);
        assert_eq!(op.state_rows(), 2, "only the z rows are kept");
        assert_eq!(op.state_stats().spilled_bytes > 0, !op.keys.0.is_empty());
        assert!(
            op.explain().starts_with(
                "StreamJoin (inner join of two streams over event time): a.ts - b.ts in [-2s, 2s]"
            ),
            "{}",
            op.explain()
        );
    }

    /// A's rows (keyed, 2 partitions) come back into B (3 partitions) from a full
    /// snapshot and a delta of both sides, and into C from a checkpoint written
    /// before the store (every buffered row); all three then match alike.
    #[tokio::test]
    async fn both_sides_come_back_in_any_partition_count_and_from_the_old_format() {
        let (ia, ib, ic) = (input(), input(), input());
        let mut a = keyed(&ia, 2, usize::MAX);
        let first = rows_of(&ia, &[("a", 1_000), ("b", 1_000)], &[("c", 1_000)]);
        ia.run(&mut a, 1, vec![first]).await;
        let full = a.snapshot().unwrap();
        assert_eq!(full.meta["state"], "full");
        let second = rows_of(&ia, &[("d", 1_500)], &[("e", 1_500)]);
        ia.run(&mut a, 2, vec![second]).await;
        let delta = a.snapshot().unwrap();
        assert_eq!(delta.meta["state"], "delta");
        let mut b = keyed(&ib, 3, usize::MAX);
        let mut chain = full.batches.clone();
        chain.extend(delta.batches.clone());
        b.restore(OperatorState {
            batches: chain,
            meta: delta.meta.clone(),
        })
        .unwrap();
        // The old format: each side's buffered rows, the left's first.
        let mut old = Vec::new();
        for side in [&mut a.left, &mut a.right] {
            let stored = side.store.all(|p, ()| p.scan(None)).unwrap();
            let flat: Vec<RecordBatch> = stored
                .into_iter()
                .flatten()
                .map(|r| side.nested.explode_rows(&r).unwrap())
                .collect();
            old.push(concat_batches(&side.schema, &flat).unwrap());
        }
        assert_eq!(old[0].num_rows(), 3);
        assert_eq!(old[1].num_rows(), 2);
        let mut c = keyed(&ic, 1, usize::MAX);
        c.restore(OperatorState {
            batches: old,
            meta: serde_json::json!({
                "left_batches": 1,
                "left_watermark": a.left.watermark,
                "right_watermark": a.right.watermark,
            }),
        })
        .unwrap();
        let want = [
            "a,1970-01-01T00:00:01,a,1970-01-01T00:00:02",
            "d,1970-01-01T00:00:01.500,d,1970-01-01T00:00:02",
            "e,1970-01-01T00:00:02,e,1970-01-01T00:00:01.500",
        ];
        for (op, input) in [(&mut a, &ia), (&mut b, &ib), (&mut c, &ic)] {
            let third = rows_of(input, &[("e", 2_000)], &[("a", 2_000), ("d", 2_000)]);
            let mut got = rows(&input.run(op, 3, vec![third]).await);
            got.sort();
            assert_eq!(got, want);
            assert_eq!(op.state_rows(), 8, "keys a, b, d, e left; c, e, a, d right");
        }
    }
}
