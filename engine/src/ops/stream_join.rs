//! `StreamJoin`: an inner join of two streams over event time — an interval join
//! (`a.ts BETWEEN b.ts - INTERVAL '10' SECOND AND b.ts`) or a join of rows in the same
//! window (`a.window_start = b.window_start`). Both sides' rows are kept as state
//! until the other side's watermark proves that no future row can match them. Without
//! a time bound it is a regular join (rows kept until `state_ttl`); an outer join adds
//! the rows without a match, once no row can match them (bounded) or at once, retracted
//! at their first match (regular: a changelog).
//!
//! ```text
//!  input (one tagged union of both sides) ─split─▶ new left L', new right R'
//!    out = join(L', R[keys of L'] ∪ R') ∪ join(L[keys of R'], R')
//!    L ∪= L', R ∪= R'; evict rows the other side's watermark has passed
//! ```
//!
//! Each side's rows are a [`KeyedRows`]: hash-partitioned by the join's equality
//! columns, indexed by key, appended per batch, spilled beyond `state_memory` and
//! checkpointed by change; a batch reads only the kept rows of the keys it brings.
//! The join itself is DataFusion's: its plan is made once, over two slots, and run
//! twice per batch with the slots refilled (its condition compares the keys and
//! times, so the kept rows only narrow what it reads).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array};
use datafusion::arrow::compute::kernels::cmp::{gt_eq, lt};
use datafusion::arrow::compute::{filter_record_batch, is_not_null, max};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::RowConverter;
use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::common::JoinType;
use datafusion::common::hash_utils::RandomState;
use datafusion::dataframe::DataFrame;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::streaming::StreamingTableExec;

use super::aggregate::on_cluster::{OnCluster, restore_placement};
use super::{OperatorContext, StreamOperator, positional_schema};
use crate::cluster::join::JoinFold;
use crate::slot::BatchSlot;
use crate::state::{KeyedRows, SnapshotKind, StateConfig};
use crate::time::format_duration;
use crate::{Result, internal_err};

/// The event-time column of one side of a [`StreamJoin`].
#[derive(Debug, Clone, Copy)]
pub struct JoinTime {
    /// The column's index in the side's schema (a timestamp); `None` in a regular
    /// join, whose rows are kept whatever their time (until `state_ttl`).
    pub index: Option<usize>,
    /// The side's watermark is its latest time minus this; `None`: the side has no
    /// watermark, so the other side's rows are kept for ever.
    pub delay: Option<Duration>,
}

/// The schema metadata key that tags a checkpointed batch with its side.
const SIDE_TAG: &str = "flumen.join_side";

/// One side's rows kept across batches.
struct Side {
    schema: SchemaRef,
    slot: Arc<BatchSlot>,
    time: JoinTime,
    /// Keyed by the columns the join's condition equates with the other side's.
    rows: KeyedRows,
    /// Watermark (ms), once a row was seen on a side with a delay.
    watermark: Option<i64>,
}

impl Side {
    fn new(schema: SchemaRef, time: JoinTime, partitions: usize) -> Result<Self> {
        Ok(Self {
            slot: BatchSlot::new(Arc::clone(&schema), partitions),
            rows: KeyedRows::try_new(
                Arc::clone(&schema),
                Vec::new(),
                time.index,
                &StateConfig {
                    memory: usize::MAX,
                    ..StateConfig::default()
                },
            )?,
            schema,
            time,
            watermark: None,
        })
    }

    /// The side's rows keyed by `keys`, under `config` (its memory budget shared
    /// with the query's other stores, the other side's included).
    fn keyed(&mut self, keys: Vec<usize>, config: &StateConfig) -> Result<()> {
        self.rows = KeyedRows::try_new(Arc::clone(&self.schema), keys, self.time.index, config)?;
        Ok(())
    }

    /// `batch` tagged as this side's (`name`) for a checkpoint.
    fn tagged(batch: RecordBatch, name: &str) -> Result<RecordBatch> {
        let schema = batch.schema().as_ref().clone().with_metadata(
            [(SIDE_TAG.to_string(), name.to_string())]
                .into_iter()
                .collect(),
        );
        Ok(batch.with_schema(Arc::new(schema))?)
    }

    fn keep_from(
        &self,
        batches: Vec<RecordBatch>,
        min_ms: Option<i64>,
    ) -> Result<(Vec<RecordBatch>, u64)> {
        keep_from(self.time.index, batches, min_ms)
    }

    /// Advance the watermark past `batches`' latest time.
    fn advance(&mut self, batches: &[RecordBatch]) -> Result<()> {
        self.advance_to(latest(self.time.index, batches)?);
        Ok(())
    }

    /// Advance the watermark past a latest time of `latest` (ms).
    fn advance_to(&mut self, latest: Option<i64>) {
        let (Some(delay), Some(latest)) = (self.time.delay, latest) else {
            return;
        };
        let candidate = latest.saturating_sub(delay.as_millis() as i64);
        self.watermark = Some(self.watermark.map_or(candidate, |w| w.max(candidate)));
    }
}

/// Column `time` of `batch` (a side's time) in milliseconds since the epoch.
fn millis(time: usize, batch: &RecordBatch) -> Result<Int64Array> {
    super::timestamp_millis(batch.column(time), "a stream join's time column")
}

/// The rows of `batches` whose time (column `time`) is at or after `min_ms` (all
/// rows but null times when `min_ms` is `None`), and how many were older. Without a
/// time column (a regular join) every row is kept.
pub(crate) fn keep_from(
    time: Option<usize>,
    batches: Vec<RecordBatch>,
    min_ms: Option<i64>,
) -> Result<(Vec<RecordBatch>, u64)> {
    let Some(time) = time else {
        return Ok((batches, 0));
    };
    let mut kept = Vec::with_capacity(batches.len());
    let mut older = 0u64;
    for b in batches {
        let ms = millis(time, &b)?;
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

/// The latest time (column `time`, ms) of `batches`; none without a time column.
pub(crate) fn latest(time: Option<usize>, batches: &[RecordBatch]) -> Result<Option<i64>> {
    let Some(time) = time else {
        return Ok(None);
    };
    let mut latest = None;
    for b in batches {
        if let Some(m) = max(&millis(time, b)?) {
            latest = Some(latest.map_or(m, |l: i64| l.max(m)));
        }
    }
    Ok(latest)
}

/// The tagged union `[side, left columns..., right columns...]` split into the new
/// left rows and the new right rows.
pub(crate) fn split_sides(
    input: Vec<RecordBatch>,
    left_schema: &SchemaRef,
    right_schema: &SchemaRef,
) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let nl = left_schema.fields().len();
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
        if let Some(l) = pick(&is_left, &cols[1..1 + nl], left_schema)? {
            left.push(l);
        }
        if let Some(r) = pick(&is_right, &cols[1 + nl..], right_schema)? {
            right.push(r);
        }
    }
    Ok((left, right))
}

/// The kept rows of an outer join's outer side that have matched, by content (in the
/// row format): the join emits the others, padded with nulls, once the other side's
/// watermark proves nothing can match them (Spark's outer joins of two streams). Two
/// rows alike in every column match alike (a copy arriving after a partner left the
/// state would be late), so content identifies a row's fate.
struct Matched {
    converter: RowConverter,
    rows: HashSet<Box<[u8]>>,
}

impl Matched {
    fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Self {
            converter: super::row_converter(schema)?,
            rows: HashSet::new(),
        })
    }

    /// The side's rows (`columns`) of some matches.
    fn record(&mut self, columns: &[ArrayRef]) -> Result<()> {
        let rows = self.converter.convert_columns(columns)?;
        for r in rows.iter() {
            if !self.rows.contains(r.as_ref()) {
                self.rows.insert(r.as_ref().into());
            }
        }
        Ok(())
    }

    /// Of `gone` (rows leaving the state), those that never matched. The entries of
    /// those that did are dropped, but for rows `kept` still holds (a copy kept in a
    /// newer segment leaves later, and its fate is the same).
    fn unmatched(
        &mut self,
        gone: &[RecordBatch],
        kept: &[RecordBatch],
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let mut done: Vec<Box<[u8]>> = Vec::new();
        for b in gone {
            let rows = self.converter.convert_columns(b.columns())?;
            let keep: BooleanArray = rows
                .iter()
                .map(|r| {
                    let matched = self.rows.contains(r.as_ref());
                    if matched {
                        done.push(r.as_ref().into());
                    }
                    Some(!matched)
                })
                .collect();
            let f = filter_record_batch(b, &keep)?;
            if f.num_rows() > 0 {
                out.push(f);
            }
        }
        if !done.is_empty() {
            let mut still: HashSet<Box<[u8]>> = HashSet::new();
            for b in kept {
                for r in self.converter.convert_columns(b.columns())?.iter() {
                    still.insert(r.as_ref().into());
                }
            }
            for r in done {
                if !still.contains(&r) {
                    self.rows.remove(&r);
                }
            }
        }
        Ok(out)
    }

    /// The matched rows as one batch of `schema` (a checkpoint keeps them).
    fn snapshot(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        super::batch_of_rows(&self.converter, &self.rows, schema)
    }
}

/// Row contents (row format), hashed with DataFusion's fast hasher.
type Contents = HashSet<Box<[u8]>, RandomState>;

/// A regular outer join's rows of one outer side that were emitted padded with nulls
/// and not yet retracted, by content, with how many copies are out: the first match
/// of such a row retracts every copy (`-D`), and the row's own matches follow.
struct Padded {
    converter: RowConverter,
    counts: std::collections::HashMap<Box<[u8]>, usize, RandomState>,
}

impl Padded {
    fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Self {
            converter: super::row_converter(schema)?,
            counts: std::collections::HashMap::default(),
        })
    }

    /// Of `rows` (new rows of the side), those whose content is not among `matched`
    /// (the side's columns of this batch's matches): they are emitted padded, and
    /// noted.
    fn unmatched_new(
        &mut self,
        rows: &[RecordBatch],
        matched: &Contents,
    ) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for b in rows {
            let converted = self.converter.convert_columns(b.columns())?;
            let keep: BooleanArray = converted
                .iter()
                .map(|r| {
                    let unmatched = !matched.contains(r.as_ref());
                    if unmatched {
                        *self.counts.entry(r.as_ref().into()).or_default() += 1;
                    }
                    Some(unmatched)
                })
                .collect();
            let f = filter_record_batch(b, &keep)?;
            if f.num_rows() > 0 {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// The contents of the side's columns `columns` of some matches.
    fn contents(&self, batches: &[Vec<ArrayRef>]) -> Result<Contents> {
        let mut set = Contents::default();
        for columns in batches {
            for r in self.converter.convert_columns(columns)?.iter() {
                set.insert(r.as_ref().into());
            }
        }
        Ok(set)
    }

    /// Of the rows with content in `matched`, the copies emitted padded: as rows of
    /// `schema` (the side's), to retract; they are no longer out.
    fn retract(&mut self, matched: &Contents, schema: &SchemaRef) -> Result<Option<RecordBatch>> {
        let mut rows = Vec::new();
        for content in matched {
            if let Some(n) = self.counts.remove(content) {
                rows.extend(std::iter::repeat_n(content, n));
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(super::batch_of_rows(&self.converter, rows, schema)?))
    }

    /// Rows leaving the state (`state_ttl`, `gone`; `kept` the side's rows still kept
    /// with their keys): a padded copy of a row gone stays in the result (nothing can
    /// match it any more), so no more copies of a content are out than are kept.
    fn forget(&mut self, gone: &[RecordBatch], kept: &[RecordBatch]) -> Result<()> {
        let mut touched = Contents::default();
        for b in gone {
            for r in self.converter.convert_columns(b.columns())?.iter() {
                if self.counts.contains_key(r.as_ref()) {
                    touched.insert(Box::<[u8]>::from(r.as_ref()));
                }
            }
        }
        if touched.is_empty() {
            return Ok(());
        }
        let mut still: std::collections::HashMap<Box<[u8]>, usize, RandomState> =
            std::collections::HashMap::default();
        for b in kept {
            for r in self.converter.convert_columns(b.columns())?.iter() {
                if touched.contains(r.as_ref()) {
                    *still.entry(r.as_ref().into()).or_default() += 1;
                }
            }
        }
        for content in touched {
            let kept = still.get(&content).copied().unwrap_or(0);
            match self.counts.get_mut(&content) {
                Some(_) if kept == 0 => {
                    self.counts.remove(&content);
                }
                Some(n) => *n = (*n).min(kept),
                None => {}
            }
        }
        Ok(())
    }

    /// The copies out, each content repeated by its count, as one batch of `schema`
    /// (a checkpoint keeps them).
    fn snapshot(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        let rows = self
            .counts
            .iter()
            .flat_map(|(r, n)| std::iter::repeat_n(r, *n));
        super::batch_of_rows(&self.converter, rows, schema)
    }

    /// Restores copies from [`Padded::snapshot`]'s batches.
    fn restore(&mut self, batches: &[RecordBatch]) -> Result<()> {
        for b in batches {
            for r in self.converter.convert_columns(b.columns())?.iter() {
                *self.counts.entry(r.as_ref().into()).or_default() += 1;
            }
        }
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
    /// The key columns as the query names them (EXPLAIN), and the state's settings.
    key_names: Vec<(String, String)>,
    config: StateConfig,
    /// Set when both sides' rows live in state partitions on a cluster's executors.
    cluster: Option<OnCluster>,
    /// Inner, or an outer join: which sides' unmatched rows it emits.
    join_type: JoinType,
    left_matched: Option<Matched>,
    right_matched: Option<Matched>,
    /// A regular outer join (no time bound): its outer sides' rows emitted padded and
    /// not yet retracted; its output is a changelog (`Emits::Changelog`).
    left_padded: Option<Padded>,
    right_padded: Option<Padded>,
    /// Snapshots taken (the padded rows' tag).
    snapshots: u64,
    /// Unmatched rows a restore evicted, emitted with the next batch.
    pending: Vec<RecordBatch>,
}

impl StreamJoin {
    /// An outer join (`Left`, `Right` or `Full`): besides the matches, each row of an
    /// outer side that never matched, padded with nulls, once the other side's
    /// watermark proves no row can match it — so that side's rows must be evicted by
    /// a watermark and a time bound (for the left side's, a bound on how much later a
    /// right row may be), or the join is refused naming what is missing. Output only
    /// grows: a row emitted is never retracted.
    ///
    /// A regular join (no time bound) instead emits an outer row without a match at
    /// once, padded, and retracts it when its first match arrives: its output is a
    /// changelog ([`Emits::Changelog`]).
    pub fn with_join_type(mut self, join_type: JoinType) -> Result<Self> {
        let (left, right) = match join_type {
            JoinType::Inner => (false, false),
            JoinType::Left => (true, false),
            JoinType::Right => (false, true),
            JoinType::Full => (true, true),
            other => return internal_err!("a stream join of type {other}"),
        };
        let regular = self.is_regular();
        if left && regular {
            self.left_padded = Some(Padded::new(&self.left.schema)?);
        } else if left {
            self.left_matched = Some(Matched::new(&self.left.schema)?);
        }
        if right && regular {
            self.right_padded = Some(Padded::new(&self.right.schema)?);
        } else if right {
            self.right_matched = Some(Matched::new(&self.right.schema)?);
        }
        // The padded side's columns may be null.
        let nl = self.left.schema.fields().len();
        let fields: Vec<_> = self
            .output_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let padded = if i < nl { right } else { left };
                if padded {
                    Arc::new(f.as_ref().clone().with_nullable(true))
                } else {
                    Arc::clone(f)
                }
            })
            .collect();
        self.output_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        self.join_type = join_type;
        Ok(self)
    }

    /// Rows of one side padded with nulls for the other's columns, as output.
    fn padded(&self, rows: Vec<RecordBatch>, left: bool) -> Result<Vec<RecordBatch>> {
        let nl = self.left.schema.fields().len();
        let mut out = Vec::with_capacity(rows.len());
        for b in rows {
            let n = b.num_rows();
            let mut columns = Vec::with_capacity(self.output_schema.fields().len());
            for (i, f) in self.output_schema.fields().iter().enumerate() {
                let mine = if left { i < nl } else { i >= nl };
                columns.push(if mine {
                    Arc::clone(b.column(if left { i } else { i - nl }))
                } else {
                    datafusion::arrow::array::new_null_array(f.data_type(), n)
                });
            }
            out.push(RecordBatch::try_new(
                Arc::clone(&self.output_schema),
                columns,
            )?);
        }
        Ok(out)
    }

    /// Notes the outer sides' rows of `matches` (join output) as matched.
    fn record_matches(&mut self, matches: &[RecordBatch]) -> Result<()> {
        let nl = self.left.schema.fields().len();
        for b in matches {
            if let Some(m) = &mut self.left_matched {
                m.record(&b.columns()[..nl])?;
            }
            if let Some(m) = &mut self.right_matched {
                m.record(&b.columns()[nl..])?;
            }
        }
        Ok(())
    }

    /// Whether the output is a changelog (a regular outer join).
    fn is_changelog(&self) -> bool {
        self.left_padded.is_some() || self.right_padded.is_some()
    }

    /// A regular outer join's batch as a changelog: the padded rows that this batch's
    /// `matches` retract (`-D`), the matches, then the new outer rows (`new_left`,
    /// `new_right`) that matched nothing, padded (`+I`).
    fn changelog(
        &mut self,
        matches: Vec<RecordBatch>,
        new_left: &[RecordBatch],
        new_right: &[RecordBatch],
    ) -> Result<Vec<RecordBatch>> {
        let nl = self.left.schema.fields().len();
        let mut retracted = Vec::new();
        let mut added = Vec::new();
        for left in [true, false] {
            let (padded, schema, new) = if left {
                (self.left_padded.as_mut(), &self.left.schema, new_left)
            } else {
                (self.right_padded.as_mut(), &self.right.schema, new_right)
            };
            let Some(p) = padded else {
                continue;
            };
            let columns: Vec<Vec<ArrayRef>> = matches
                .iter()
                .map(|b| {
                    if left {
                        b.columns()[..nl].to_vec()
                    } else {
                        b.columns()[nl..].to_vec()
                    }
                })
                .collect();
            let matched = p.contents(&columns)?;
            if let Some(r) = p.retract(&matched, schema)? {
                retracted.push((r, left));
            }
            added.extend(
                p.unmatched_new(new, &matched)?
                    .into_iter()
                    .map(|b| (b, left)),
            );
        }
        let schema = self.output_schema();
        let mut out = Vec::new();
        for (rows, left) in retracted {
            for b in self.padded(vec![rows], left)? {
                out.push(super::with_op(b, super::OP_DELETE, &schema)?);
            }
        }
        for b in matches {
            out.push(super::with_op(b, super::OP_INSERT, &schema)?);
        }
        for (rows, left) in added {
            for b in self.padded(vec![rows], left)? {
                out.push(super::with_op(b, super::OP_INSERT, &schema)?);
            }
        }
        Ok(out)
    }

    /// The two time columns as the query names them (`a.ts`, `b.ts`), for EXPLAIN.
    pub fn with_time_names(mut self, left: String, right: String) -> Self {
        self.time_names = (left, right);
        self
    }

    /// Keeps each side's rows keyed by its columns of `keys` (pairs the condition
    /// equates, left index and right index, of the same type; the query's names for
    /// them) in `config`'s partitions, memory and TTL. Without keys every kept row is
    /// read for every batch.
    pub fn with_state(
        mut self,
        keys: Vec<(usize, usize, String, String)>,
        config: StateConfig,
    ) -> Result<Self> {
        for (l, r, ..) in &keys {
            let (lt, rt) = (
                self.left.schema.field(*l).data_type(),
                self.right.schema.field(*r).data_type(),
            );
            if lt != rt {
                return internal_err!("stream join keys of types {lt} and {rt}");
            }
        }
        self.left
            .keyed(keys.iter().map(|k| k.0).collect(), &config)?;
        self.right
            .keyed(keys.iter().map(|k| k.1).collect(), &config)?;
        self.key_names = keys.into_iter().map(|(_, _, l, r)| (l, r)).collect();
        self.config = config;
        Ok(self)
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
        let name = |schema: &SchemaRef, t: &JoinTime| {
            t.index
                .map_or_else(String::new, |i| schema.field(i).name().clone())
        };
        let time_names = (name(&left, &left_time), name(&right, &right_time));
        let partitions = input.task_ctx().session_config().target_partitions();
        let left = Side::new(positional_schema(&left), left_time, partitions)?;
        let right = Side::new(positional_schema(&right), right_time, partitions)?;
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
            key_names: Vec::new(),
            config: StateConfig::default(),
            cluster: None,
            join_type: JoinType::Inner,
            left_matched: None,
            right_matched: None,
            left_padded: None,
            right_padded: None,
            snapshots: 0,
            pending: Vec::new(),
        })
    }

    /// A regular join: no time column bounds how far apart matching rows are.
    fn is_regular(&self) -> bool {
        self.left.time.index.is_none() || self.right.time.index.is_none()
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
        split_sides(input, &self.left.schema, &self.right.schema)
    }

    /// On a cluster: the tasks' matches as output; their summaries' late rows and
    /// latest times advance the watermarks.
    fn matches_from_tasks(
        &mut self,
        now: i64,
        input: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        use datafusion::arrow::datatypes::Int64Type;
        if let Some(c) = &mut self.cluster {
            c.processed(now);
        }
        let width = self.output_schema.fields().len();
        let (mut late, mut left_max, mut right_max) = (0u64, None, None);
        let newest = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut out = Vec::new();
        for b in input {
            let lates = b.column(width).as_primitive::<Int64Type>();
            late += lates.iter().flatten().map(|n| n as u64).sum::<u64>();
            left_max = newest(left_max, crate::cluster::join::max_of(b.column(width + 1)));
            right_max = newest(right_max, crate::cluster::join::max_of(b.column(width + 2)));
            let is_match = datafusion::arrow::compute::is_null(lates)?;
            let matches = filter_record_batch(&b, &is_match)?;
            if matches.num_rows() > 0 {
                out.push(RecordBatch::try_new(
                    Arc::clone(&self.output_schema),
                    matches.columns()[..width].to_vec(),
                )?);
            }
        }
        self.late_rows_last_batch = late;
        self.left.advance_to(left_max);
        self.right.advance_to(right_max);
        Ok(out)
    }

    /// The end of finite input: no row will come on either side, so every kept row
    /// is evicted (an outer side's unmatched ones padded with nulls) and the
    /// output's watermark passes every window over it.
    fn end_input(&mut self) {
        for side in [&mut self.left, &mut self.right] {
            if side.watermark.is_some() {
                side.watermark = Some(crate::ops::END_OF_INPUT_WATERMARK);
            }
        }
    }

    /// Drop the state rows no future row of the other side can match; those of an
    /// outer side that never matched, padded with nulls.
    fn evict(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        // A left row matches right rows with time in [t - hi, t - lo]; the right
        // side's future rows are at or after its watermark.
        if let (Some(lo), Some(wm)) = (self.lo, self.right.watermark) {
            let bound = wm.saturating_add(lo);
            let gone = if self.left_matched.is_some() {
                self.left.rows.evict_returning(bound)?
            } else {
                self.left.rows.evict(bound).map(|_| Vec::new())?
            };
            let unmatched = unmatched(&mut self.left, self.left_matched.as_mut(), gone)?;
            out.extend(self.padded(unmatched, true)?);
        }
        if let (Some(hi), Some(wm)) = (self.hi, self.left.watermark) {
            let bound = wm.saturating_sub(hi);
            let gone = if self.right_matched.is_some() {
                self.right.rows.evict_returning(bound)?
            } else {
                self.right.rows.evict(bound).map(|_| Vec::new())?
            };
            let unmatched = unmatched(&mut self.right, self.right_matched.as_mut(), gone)?;
            out.extend(self.padded(unmatched, false)?);
        }
        Ok(out)
    }

    /// Drop the rows `state_ttl` expires; an outer side's that never matched, padded
    /// with nulls (they can match nothing any more, so this is their last chance to
    /// be emitted).
    fn expire(&mut self, now: i64) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for left in [true, false] {
            let (side, matched, padded) = if left {
                (
                    &mut self.left,
                    self.left_matched.as_mut(),
                    self.left_padded.as_mut(),
                )
            } else {
                (
                    &mut self.right,
                    self.right_matched.as_mut(),
                    self.right_padded.as_mut(),
                )
            };
            let gone = if matched.is_some() || padded.is_some() {
                side.rows.expire_returning(now)?
            } else {
                side.rows.expire(now).map(|_| Vec::new())?
            };
            if let Some(p) = padded
                && !gone.is_empty()
            {
                let keys = side.rows.keys().to_vec();
                let kept = side.rows.matching(&gone, &keys)?;
                p.forget(&gone, &kept)?;
            }
            let unmatched = unmatched(side, matched, gone)?;
            out.extend(self.padded(unmatched, left)?);
        }
        Ok(out)
    }
}

/// Of `gone`, rows leaving an outer side's state (`matched`), those that never matched;
/// nothing for an inner side.
fn unmatched(
    side: &mut Side,
    matched: Option<&mut Matched>,
    gone: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    let Some(m) = matched else {
        return Ok(Vec::new());
    };
    if gone.is_empty() {
        return Ok(gone);
    }
    let keys = side.rows.keys().to_vec();
    let kept = side.rows.matching(&gone, &keys)?;
    m.unmatched(&gone, &kept)
}

#[async_trait]
impl StreamOperator for StreamJoin {
    fn name(&self) -> String {
        "StreamJoin".into()
    }

    fn output_schema(&self) -> SchemaRef {
        if self.is_changelog() {
            return super::changelog_schema(&self.output_schema);
        }
        Arc::clone(&self.output_schema)
    }

    fn emits(&self) -> super::Emits {
        if self.is_changelog() {
            super::Emits::Changelog
        } else {
            super::Emits::Appends
        }
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
        let keyed = if self.key_names.is_empty() {
            "no column equality to key the state by: every batch reads all kept rows".to_string()
        } else {
            let partitions = match self.left.rows.partitions() {
                n if n == crate::state::default_partitions() => "one partition per core".into(),
                n => format!("{n} partitions"),
            };
            format!(
                "state keyed by {} (hash-partitioned, {partitions}; a batch much smaller than the kept rows reads those of its keys only)",
                self.key_names
                    .iter()
                    .map(|(l, r)| format!("{l} = {r}"))
                    .collect::<Vec<_>>()
                    .join(" AND "),
            )
        };
        let ttl = self.config.ttl.map_or(String::new(), |t| {
            format!(
                "; state_ttl drops rows kept longer than {}",
                format_duration(t)
            )
        });
        if self.is_regular() {
            let bound = match self.config.ttl {
                Some(t) => format!(
                    "both sides' rows are kept until state_ttl drops them ({} after they arrived; a later row no longer matches them)",
                    format_duration(t)
                ),
                None => "WARNING: both sides' rows are kept for ever (state grows without bound; SET state_ttl = '1 hour', as Flink's table.exec.state.ttl, bounds it)".into(),
            };
            let (kind, changelog) = match self.join_type {
                JoinType::Left => (
                    "left outer",
                    "; a left row without a match is emitted at once with nulls and retracted (_op = '-D') when its first match arrives: the output is a changelog",
                ),
                JoinType::Right => (
                    "right outer",
                    "; a right row without a match is emitted at once with nulls and retracted (_op = '-D') when its first match arrives: the output is a changelog",
                ),
                JoinType::Full => (
                    "full outer",
                    "; a row of either side without a match is emitted at once with nulls and retracted (_op = '-D') when its first match arrives: the output is a changelog",
                ),
                _ => ("inner", ""),
            };
            let line = format!(
                "StreamJoin (regular {kind} join of two streams, no time bound): {keyed}; {bound}{changelog}"
            );
            return match &self.cluster {
                Some(c) => c.explained(&line, self.config.partitions),
                None => line,
            };
        }
        let (kind, unmatched) = match self.join_type {
            JoinType::Left => (
                "left outer join",
                "; a left row that never matched is emitted with nulls when it leaves the state",
            ),
            JoinType::Right => (
                "right outer join",
                "; a right row that never matched is emitted with nulls when it leaves the state",
            ),
            JoinType::Full => (
                "full outer join",
                "; a row of either side that never matched is emitted with nulls when it leaves the state",
            ),
            _ => ("inner join", ""),
        };
        let line = format!(
            "StreamJoin ({kind} of two streams over event time): {lt} - {rt} in [{}, {}]; {}; {}; {keyed}{ttl}{unmatched}; rows older than their side's watermark are dropped and counted as late",
            range(self.lo),
            range(self.hi),
            keep("left", "the right side", &self.right.time, self.lo),
            keep("right", "the left side", &self.left.time, self.hi),
        );
        match &self.cluster {
            Some(c) => c.explained(&line, self.config.partitions),
            None => line,
        }
    }

    fn describe(&self) -> String {
        // An inner join's as before outer joins (its checkpoints' fingerprint).
        let kind = match self.join_type {
            JoinType::Inner => String::new(),
            other => format!("({other}) "),
        };
        format!(
            "StreamJoinExec {kind}{} left time {:?} right time {:?} bounds [{:?}, {:?}]",
            self.template.display(),
            self.left.time,
            self.right.time,
            self.lo,
            self.hi
        )
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        let (mut state, _) = input.clone().into_parts();
        // DataFusion's perfect-hash join allocates and zeroes a table as large as the
        // build side's key range whenever that side covers more than 15 % of it: cheap
        // once, but this plan runs every batch over kept rows that often do (the join
        // state benchmark ran 2.4x faster without it). Only tiny ranges keep it.
        state
            .config_mut()
            .options_mut()
            .execution
            .perfect_hash_join_min_key_density = 1.0;
        let join = state.create_physical_plan(&self.template).await?;
        self.plan = Some(Arc::clone(&join));
        self.task_ctx = Some(Arc::new(TaskContext::from(&state)));
        let input_plan = input.clone().create_physical_plan().await?;
        if self.cluster.is_none() {
            return Ok(input_plan);
        }
        // The join as the state partitions' tasks run it: each side's scan an
        // in-memory leaf they fill, noted in the order a walk meets them.
        let mut leaf_sides = Vec::new();
        let placeholder = join
            .transform_up(|node| {
                let Some(scan) = node.downcast_ref::<StreamingTableExec>() else {
                    return Ok(Transformed::no(node));
                };
                let is_left = self.left.slot.scanned_by(scan);
                leaf_sides.push(is_left);
                let side = if is_left { &self.left } else { &self.right };
                let projection = scan.projection().as_ref().map(|p| p.to_vec());
                Ok(Transformed::yes(MemorySourceConfig::try_new_exec(
                    &[Vec::new()],
                    Arc::clone(&side.schema),
                    projection,
                )?
                    as Arc<dyn ExecutionPlan>))
            })?
            .data;
        let fold = JoinFold {
            plan: placeholder,
            leaf_sides,
            left: Arc::clone(&self.left.schema),
            right: Arc::clone(&self.right.schema),
            left_keys: self.left.rows.keys().to_vec(),
            right_keys: self.right.rows.keys().to_vec(),
            left_time: self.left.time.index,
            right_time: self.right.time.index,
            lo: self.lo,
            hi: self.hi,
        };
        let schema = crate::cluster::join::task_schema(&self.output_schema);
        let Some(c) = &mut self.cluster else {
            return Ok(input_plan);
        };
        c.plan_join(input_plan, fold, &self.config, schema)
    }

    fn can_partition_on_cluster(&self) -> bool {
        // Rows are routed to state partitions by the key the condition equates. An
        // outer join's unmatched rows are found on the driver.
        !self.left.rows.keys().is_empty() && self.join_type == JoinType::Inner
    }

    fn partition_on_cluster(&mut self, placement: crate::cluster::state::Placement) {
        self.cluster = Some(OnCluster::new(placement));
    }

    fn begin_batch(&mut self, ctx: &OperatorContext) {
        if let Some(c) = &self.cluster {
            c.begin(ctx.batch_time.as_millis(), self.left.watermark);
            c.versions.lock().watermark_right = self.right.watermark;
        }
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let now = ctx.batch_time.as_millis();
        if self.cluster.is_some() {
            let out = self.matches_from_tasks(now, input)?;
            if ctx.end_of_input {
                self.end_input();
            }
            return Ok(Some(out));
        }
        let expired = self.expire(now)?;
        let (new_left, new_right) = self.split(input)?;
        // Rows older than their side's watermark are late: dropped and counted. Rows
        // without a time can match nothing.
        let (new_left, late_left) = self.left.keep_from(new_left, self.left.watermark)?;
        let (new_right, late_right) = self.right.keep_from(new_right, self.right.watermark)?;
        self.late_rows_last_batch = late_left + late_right;
        let mut out = Vec::new();
        if !new_left.is_empty() {
            let mut right = self.right.rows.matching(&new_left, self.left.rows.keys())?;
            right.extend(new_right.iter().cloned());
            if !right.is_empty() {
                out.extend(self.run_join(&new_left, &right).await?);
            }
        }
        if !new_right.is_empty() {
            let left = self
                .left
                .rows
                .matching(&new_right, self.right.rows.keys())?;
            if !left.is_empty() {
                out.extend(self.run_join(&left, &new_right).await?);
            }
        }
        self.left.slot.clear();
        self.right.slot.clear();
        if self.is_changelog() {
            out = self.changelog(out, &new_left, &new_right)?;
        }
        self.left.advance(&new_left)?;
        self.right.advance(&new_right)?;
        self.left.rows.insert(new_left, now)?;
        self.right.rows.insert(new_right, now)?;
        self.record_matches(&out)?;
        out.extend(expired);
        out.append(&mut self.pending);
        if ctx.end_of_input {
            self.end_input();
        }
        out.extend(self.evict()?);
        Ok(Some(out))
    }

    fn late_rows(&self) -> u64 {
        self.late_rows_last_batch
    }

    /// The left side's time column when the condition bounds how much later a right
    /// row may be (`lo`), the right side's when it bounds how much later a left row
    /// may be (`hi`), each once both sides have a watermark.
    fn watermarked_columns(&self) -> Vec<usize> {
        let mut out = Vec::new();
        // An outer join emits an unmatched row after the watermarks passed it: no
        // watermark can be carried to its output.
        if self.join_type != JoinType::Inner {
            return out;
        }
        let (Some(lt), Some(rt)) = (self.left.time.index, self.right.time.index) else {
            return out;
        };
        if self.left.time.delay.is_some() && self.right.time.delay.is_some() {
            if self.lo.is_some() {
                out.push(lt);
            }
            if self.hi.is_some() {
                out.push(self.left.schema.fields().len() + rt);
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
        if Some(column) == self.left.time.index {
            Some(l.min(r.saturating_add(self.lo?)))
        } else if Some(column) == self.right.time.index.map(|i| nl + i) {
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

    /// Both sides' kept rows.
    fn state_stats(&self) -> crate::state::StateStats {
        let (l, r) = (self.left.rows.stats(), self.right.rows.stats());
        crate::state::StateStats {
            rows: l.rows + r.rows,
            memory_bytes: l.memory_bytes + r.memory_bytes,
            spilled_bytes: l.spilled_bytes + r.spilled_bytes,
            evicted: l.evicted + r.evicted,
        }
    }

    /// Both sides' rows kept since the previous snapshot (a delta) or all of them
    /// (full, when either side's deltas have grown as large as its rows), each batch
    /// tagged with its side; the watermarks. Rows evicted since are not recorded: a
    /// restore evicts again by the watermarks.
    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        if let Some(c) = &mut self.cluster {
            let mut state = c.operator_state(self.config.partitions);
            state.meta["left_watermark"] = serde_json::json!(self.left.watermark);
            state.meta["right_watermark"] = serde_json::json!(self.right.watermark);
            return Ok(state);
        }
        let full = self.left.rows.wants_full() || self.right.rows.wants_full();
        let (kind, left) = self.left.rows.checkpoint(full)?;
        let (_, right) = self.right.rows.checkpoint(full)?;
        let mut batches = Vec::with_capacity(left.len() + right.len());
        for b in left {
            batches.push(Side::tagged(b, "left")?);
        }
        for b in right {
            batches.push(Side::tagged(b, "right")?);
        }
        // A regular outer join's padded rows out, whole each time, tagged with the
        // snapshot's number: a restore reads a chain of snapshots (full, then deltas)
        // and must count only the newest one's.
        self.snapshots += 1;
        let n = self.snapshots;
        if let Some(p) = &self.left_padded {
            batches.push(Side::tagged(
                p.snapshot(&self.left.schema)?,
                &format!("left_padded@{n}"),
            )?);
        }
        if let Some(p) = &self.right_padded {
            batches.push(Side::tagged(
                p.snapshot(&self.right.schema)?,
                &format!("right_padded@{n}"),
            )?);
        }
        // An outer side's matched rows, whole each time.
        if let Some(m) = &self.left_matched {
            batches.push(Side::tagged(
                m.snapshot(&self.left.schema)?,
                "left_matched",
            )?);
        }
        if let Some(m) = &self.right_matched {
            batches.push(Side::tagged(
                m.snapshot(&self.right.schema)?,
                "right_matched",
            )?);
        }
        Ok(crate::checkpoint::OperatorState {
            batches,
            meta: serde_json::json!({
                "state": kind.as_str(),
                "partitions": self.config.partitions,
                "left_watermark": self.left.watermark,
                "right_watermark": self.right.watermark,
                "padded_snapshot": n,
            }),
        })
    }

    /// A snapshot chain (full then deltas, batches tagged by side) or a snapshot
    /// from before the store (`left_batches` untagged left batches, then the right
    /// ones), into this join's partitions.
    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        if restore_placement(
            "StreamJoin",
            self.cluster.as_mut(),
            &state,
            self.config.partitions,
        )? {
            self.left.watermark = state.meta["left_watermark"].as_i64();
            self.right.watermark = state.meta["right_watermark"].as_i64();
            return Ok(());
        }
        let (mut left, mut right) = (Vec::new(), Vec::new());
        let (mut left_matched, mut right_matched) = (Vec::new(), Vec::new());
        let (mut left_padded, mut right_padded) = (Vec::new(), Vec::new());
        // The padded rows of the newest snapshot of the chain (each holds them whole).
        let newest = state.meta["padded_snapshot"].as_u64().unwrap_or(0);
        self.snapshots = newest;
        if let Some(n) = state.meta["left_batches"].as_u64() {
            let mut batches = state.batches;
            if n as usize > batches.len() {
                return Err(crate::error::Error::Checkpoint(format!(
                    "a StreamJoin snapshot lists {n} left batches of {}",
                    batches.len()
                )));
            }
            right = batches.split_off(n as usize);
            left = batches;
        } else if state.meta["state"] == SnapshotKind::Full.as_str()
            || state.meta["state"] == SnapshotKind::Delta.as_str()
        {
            for b in state.batches {
                match b.schema().metadata().get(SIDE_TAG).map(String::as_str) {
                    Some("left") => left.push(b),
                    Some("right") => right.push(b),
                    Some("left_matched") => left_matched.push(b),
                    Some("right_matched") => right_matched.push(b),
                    Some(tag) if tag.starts_with("left_padded@") => {
                        if tag == format!("left_padded@{newest}") {
                            left_padded.push(b)
                        }
                    }
                    Some(tag) if tag.starts_with("right_padded@") => {
                        if tag == format!("right_padded@{newest}") {
                            right_padded.push(b)
                        }
                    }
                    other => {
                        return Err(crate::error::Error::Checkpoint(format!(
                            "a StreamJoin snapshot batch tagged {other:?}, not left or right"
                        )));
                    }
                }
            }
        } else {
            return Err(crate::error::Error::Checkpoint(
                "a StreamJoin snapshot without left_batches or state".into(),
            ));
        }
        self.left.rows.restore(left)?;
        self.right.rows.restore(right)?;
        for (m, batches) in [
            (&mut self.left_matched, left_matched),
            (&mut self.right_matched, right_matched),
        ] {
            if let Some(m) = m {
                for b in batches {
                    m.record(b.columns())?;
                }
            }
        }
        for (p, batches) in [
            (&mut self.left_padded, left_padded),
            (&mut self.right_padded, right_padded),
        ] {
            match p {
                Some(p) => p.restore(&batches)?,
                None if batches.iter().any(|b| b.num_rows() > 0) => {
                    return Err(crate::error::Error::Checkpoint(
                        "a StreamJoin snapshot holds padded rows of a regular outer join, and this join is not one".into(),
                    ));
                }
                None => {}
            }
        }
        self.left.watermark = state.meta["left_watermark"].as_i64();
        self.right.watermark = state.meta["right_watermark"].as_i64();
        self.pending = self.evict()?;
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

    /// `left.k = right.k` on `(k, ts)` sides, each side's time `time`, `left.ts -
    /// right.ts` in `bounds`.
    fn keyed_join(
        input: &TestInput,
        time: JoinTime,
        bounds: (Option<i64>, Option<i64>),
    ) -> StreamJoin {
        let side = |k: &str, t: &str| {
            Arc::new(Schema::new(vec![
                Field::new(k, DataType::Utf8, true),
                Field::new(t, ts(), true),
            ]))
        };
        StreamJoin::try_new(
            &input.frame(),
            side("lk", "lts"),
            side("rk", "rts"),
            time,
            time,
            bounds,
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
    }

    /// `left.k = right.k`, `left.ts - right.ts` in [-2 s, 2 s], watermarks 1 s behind.
    fn join(input: &TestInput) -> StreamJoin {
        let time = JoinTime {
            index: Some(1),
            delay: Some(Duration::from_secs(1)),
        };
        keyed_join(input, time, (Some(-2_000), Some(2_000)))
            .with_time_names("a.ts".into(), "b.ts".into())
    }

    #[tokio::test]
    async fn rows_match_across_batches_and_leave_once_the_other_side_s_watermark_passes() {
        let input = input();
        let mut op = join(&input);
        let out = input
            .run(
                &mut op,
                1,
                vec![rows_of(&input, &[("a", 1_000)], &[("b", 1_000)])],
            )
            .await;
        assert!(rows(&out).is_empty());
        // A right row meets the left row of an earlier batch, and the other way round.
        let out = input
            .run(&mut op, 2, vec![rows_of(&input, &[], &[("a", 2_000)])])
            .await;
        assert_eq!(rows(&out), ["a,1970-01-01T00:00:01,a,1970-01-01T00:00:02"]);
        let out = input
            .run(&mut op, 3, vec![rows_of(&input, &[("a", 2_500)], &[])])
            .await;
        assert_eq!(
            rows(&out),
            ["a,1970-01-01T00:00:02.500,a,1970-01-01T00:00:02"]
        );
        // Both watermarks reach 9 s: every row before 7 s can match nothing more.
        let out = input
            .run(
                &mut op,
                4,
                vec![rows_of(&input, &[("z", 10_000)], &[("z", 10_000)])],
            )
            .await;
        assert_eq!(rows(&out), ["z,1970-01-01T00:00:10,z,1970-01-01T00:00:10"]);
        assert_eq!(op.state_rows(), 2, "only the z rows are kept");
        assert!(
            op.explain().starts_with(
                "StreamJoin (inner join of two streams over event time): a.ts - b.ts in [-2s, 2s]"
            ),
            "{}",
            op.explain()
        );
    }

    /// `left.k = right.k` with no time bound: a regular join of `join_type`.
    fn regular(input: &TestInput, join_type: JoinType) -> StreamJoin {
        let time = JoinTime {
            index: None,
            delay: None,
        };
        keyed_join(input, time, (None, None))
            .with_join_type(join_type)
            .unwrap()
            .with_state(
                vec![(0, 0, "a.k".into(), "b.k".into())],
                StateConfig::default(),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn a_regular_outer_join_retracts_a_padded_row_when_its_first_match_arrives() {
        let input = input();
        let mut op = regular(&input, JoinType::Left);
        assert_eq!(op.emits(), crate::ops::Emits::Changelog);
        assert_eq!(op.output_schema().fields().last().unwrap().name(), "_op");
        let out = input
            .run(
                &mut op,
                1,
                vec![rows_of(&input, &[("a", 1_000), ("b", 1_000)], &[])],
            )
            .await;
        assert_eq!(
            rows(&out),
            [
                "a,1970-01-01T00:00:01,NULL,NULL,+I",
                "b,1970-01-01T00:00:01,NULL,NULL,+I"
            ]
        );
        // The first match of a: its padded row is retracted, then the match.
        let out = input
            .run(&mut op, 2, vec![rows_of(&input, &[], &[("a", 5_000)])])
            .await;
        assert_eq!(
            rows(&out),
            [
                "a,1970-01-01T00:00:01,NULL,NULL,-D",
                "a,1970-01-01T00:00:01,a,1970-01-01T00:00:05,+I"
            ]
        );
        let older = op.snapshot().unwrap();
        // A second match retracts nothing; a new row that matches at once is never
        // padded; a copy of b (two padded copies out) and c without a match are.
        let out = input
            .run(
                &mut op,
                3,
                vec![rows_of(
                    &input,
                    &[("a", 7_000), ("b", 1_000), ("c", 7_000)],
                    &[("a", 6_000)],
                )],
            )
            .await;
        let mut got = rows(&out);
        got.sort();
        assert_eq!(
            got,
            [
                "a,1970-01-01T00:00:01,a,1970-01-01T00:00:06,+I",
                "a,1970-01-01T00:00:07,a,1970-01-01T00:00:05,+I",
                "a,1970-01-01T00:00:07,a,1970-01-01T00:00:06,+I",
                "b,1970-01-01T00:00:01,NULL,NULL,+I",
                "c,1970-01-01T00:00:07,NULL,NULL,+I",
            ]
        );
        // From a checkpoint: both copies of b are retracted by b's match, c's by c's.
        // A restore reads a chain of snapshots; the padded rows of the older one (b
        // once) are not counted again.
        let mut state = op.snapshot().unwrap();
        let mut chain = older.batches;
        chain.append(&mut state.batches);
        state.batches = chain;
        let input = super::tests::input();
        let mut op = regular(&input, JoinType::Left);
        op.restore(state).unwrap();
        let out = input
            .run(
                &mut op,
                4,
                vec![rows_of(&input, &[], &[("b", 9_000), ("c", 9_000)])],
            )
            .await;
        let mut got = rows(&out);
        got.sort();
        assert_eq!(
            got,
            [
                "b,1970-01-01T00:00:01,NULL,NULL,-D",
                "b,1970-01-01T00:00:01,NULL,NULL,-D",
                "b,1970-01-01T00:00:01,b,1970-01-01T00:00:09,+I",
                "b,1970-01-01T00:00:01,b,1970-01-01T00:00:09,+I",
                "c,1970-01-01T00:00:07,NULL,NULL,-D",
                "c,1970-01-01T00:00:07,c,1970-01-01T00:00:09,+I",
            ]
        );
        assert!(
            op.explain().contains("retracted (_op = '-D')"),
            "{}",
            op.explain()
        );
    }

    #[tokio::test]
    async fn a_regular_full_join_retracts_both_sides_and_applies_to_the_batch_result() {
        let input = input();
        let mut op = regular(&input, JoinType::Full);
        let mut all = Vec::new();
        for (i, (left, right)) in [
            (vec![("a", 1_000)], vec![("x", 1_000)]),
            (vec![("x", 2_000)], vec![("b", 2_000)]),
            (vec![("b", 3_000)], vec![("a", 3_000), ("y", 3_000)]),
        ]
        .into_iter()
        .enumerate()
        {
            all.extend(
                input
                    .run(&mut op, i as i64 + 1, vec![rows_of(&input, &left, &right)])
                    .await,
            );
        }
        let schema = Arc::clone(&op.output_schema);
        let result = crate::ops::apply_changelog(&all, 4, &schema).unwrap();
        let mut got = rows(&[result]);
        got.sort();
        // The full outer join of all the input at once.
        assert_eq!(
            got,
            [
                "NULL,NULL,y,1970-01-01T00:00:03",
                "a,1970-01-01T00:00:01,a,1970-01-01T00:00:03",
                "b,1970-01-01T00:00:03,b,1970-01-01T00:00:02",
                "x,1970-01-01T00:00:02,x,1970-01-01T00:00:01",
            ]
        );
    }
}
