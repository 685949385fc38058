//! `TopN`: the first `N` rows of each key by an order, across all batches —
//! `ROW_NUMBER() OVER (PARTITION BY k ORDER BY o) <= N` over a stream (Flink's Top-N;
//! with `N = 1` and an order other than arrival, its deduplication).
//!
//! ```text
//!  batch (each key's per-batch top N) ─┐
//!  stored rows of the keys it touches ─┴▶ sort by (key, order, arrival)
//!      ─▶ rank within each key ─▶ keep rank <= N ─▶ stored rows (ranks updated)
//!      ─▶ output: the rows whose rank changed (update) or every stored row (complete)
//! ```
//!
//! The rank column is computed here: the SQL planner feeds the rows unranked (the
//! `ROW_NUMBER()` of its plan replaced by a constant), since ranking each batch by
//! itself first would sort it twice. Ties keep the row that arrived first. The kept rows live in a
//! [`KeyedState`], one row per key holding its rows as lists ([`Nested`]): partitioned,
//! spilled past `state_memory`, checkpointed by change, forgotten after `state_ttl`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, UInt32Array, UInt64Array};
use datafusion::arrow::compute::{
    SortColumn, SortOptions, cast, concat_batches, filter_record_batch, lexsort_to_indices, take,
    take_record_batch,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, UInt32Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use super::aggregate::event_time::{max_of, window_ends};
use super::aggregate::on_cluster::{OnCluster, restore_placement};
use super::{Emits, OperatorContext, StreamOperator};
use crate::checkpoint::OperatorState;
use crate::state::{KeyedState, Nested, StateConfig, StateStats};
use crate::{Result, plan_err};

/// One `ORDER BY` term: a column of the operator's rows and its direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderColumn {
    pub index: usize,
    pub options: SortOptions,
}

pub struct TopN {
    schema: SchemaRef,
    keys: Vec<usize>,
    order: Vec<OrderColumn>,
    /// The column that holds each row's rank (1-based, `UInt64`).
    rank: usize,
    limit: usize,
    /// Complete mode: every kept row each batch; otherwise the rows whose rank changed.
    emit_all: bool,
    /// The names of the key columns (EXPLAIN).
    key_names: Vec<String>,
    /// The names of all columns as the query gave them (EXPLAIN).
    names: Vec<String>,
    config: StateConfig,
    /// The kept rows of every key (ranks included), a store row per key.
    nested: Nested,
    state: KeyedState,
    /// Set when the kept rows live in state partitions on a cluster's executors.
    cluster: Option<OnCluster>,
    /// A window top-N: the watermark closes each window's key.
    close: Option<WindowClose>,
    /// Event-time watermark (ms) of a window top-N, once a row was seen.
    watermark: Option<i64>,
    /// Rows the last batch dropped as late (their window had closed).
    late: u64,
}

/// Flink's window top-N: a key column holds each row's window end, so the watermark
/// tells when a window's ranking is final. Its rows then leave the state — in
/// `append` mode they are the output (each window's first N, once) — and a row of a
/// window the watermark already passed is late.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowClose {
    /// The column (one of the keys) holding each row's window end.
    pub end: usize,
    /// The rows' event-time column, whose latest value less `delay` is the watermark.
    pub time: usize,
    pub delay: std::time::Duration,
    /// Emit a window's rows when it closes (`append`), instead of as ranks change.
    pub emit_at_close: bool,
}

/// What ranks a top-N's rows, which its state partitions' tasks need too: per key
/// (`keys`), by `order`, the first `limit` rows kept, their rank in column `rank`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub keys: Vec<usize>,
    pub order: Vec<OrderColumn>,
    pub rank: usize,
    pub limit: usize,
    /// Complete mode: every kept row each batch; otherwise the rows whose rank changed.
    pub emit_all: bool,
}

/// The layout a top-N keeps its rows in: one store row per key, its rows as lists.
pub(crate) fn nested_layout(schema: &SchemaRef, keys: &[usize]) -> Nested {
    let lists = (0..schema.fields().len())
        .filter(|i| !keys.contains(i))
        .collect();
    Nested::new(Arc::clone(schema), keys.to_vec(), lists)
}

/// `new` (rows of `schema`) folded into `state` (in `nested`'s layout): per key it
/// touches, the kept rows and the new ones ranked and the first `limit` kept; the
/// rows whose rank changed, or every kept row (`emit_all`).
pub(crate) fn fold_top_n(
    state: &mut KeyedState,
    nested: &Nested,
    r: &Ranked,
    schema: &SchemaRef,
    new: &RecordBatch,
    now: i64,
) -> Result<Vec<RecordBatch>> {
    let cutoff = state.cutoff(now);
    let n = new.num_rows();
    let mut columns: Vec<ArrayRef> = r.keys.iter().map(|&i| Arc::clone(new.column(i))).collect();
    columns.push(Arc::new(UInt32Array::from_iter_values(0..n as u32)));
    let nk = r.keys.len();
    let routed = state.route(&columns, n)?;
    let ranking = Ranking {
        schema,
        keys: &r.keys,
        order: &r.order,
        rank: r.rank,
        limit: r.limit,
    };
    let changed = state.for_each(routed, |p, routed: Vec<ArrayRef>| {
        let touched = p.touch(&routed[..nk], routed[nk].len(), cutoff)?;
        let old = nested.explode(&touched.keys, &touched.previous, &touched.previous_group)?;
        let positions = routed[nk].as_primitive::<UInt32Type>();
        let rows = take_record_batch(new, positions)?;
        let all = concat_batches(ranking.schema, [&old, &rows])?;
        let (ranked, changed) = ranking.rank(&all, old.num_rows())?;
        let (lists, keep) = nested.nest(&ranked, &touched.keys)?;
        p.put(touched, lists, Some(&keep), now, cutoff)?;
        Ok(filter_record_batch(&ranked, &changed)?)
    })?;
    if !r.emit_all {
        return Ok(changed);
    }
    let kept = state.all(|p, ()| {
        p.scan(cutoff)?
            .iter()
            .map(|rows| nested.explode_rows(rows))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(kept.into_iter().flatten().collect())
}

impl TopN {
    /// Rows of `schema`, ranked per `keys` by `order`; the rank goes in column `rank`
    /// (which must be `UInt64`, as `ROW_NUMBER()` is); at most `limit` rows per key.
    pub fn try_new(
        schema: SchemaRef,
        keys: Vec<usize>,
        order: Vec<OrderColumn>,
        rank: usize,
        limit: usize,
        emit_all: bool,
    ) -> Result<Self> {
        if limit == 0 {
            return plan_err!("a top-N needs N >= 1");
        }
        if schema.field(rank).data_type() != &DataType::UInt64 {
            return plan_err!(
                "the rank column of a top-N must be UInt64, got {}",
                schema.field(rank).data_type()
            );
        }
        let key_names = keys
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect();
        let names = schema.fields().iter().map(|f| f.name().clone()).collect();
        let config = StateConfig::default();
        let (nested, state) = Self::store(&schema, &keys, config.clone())?;
        Ok(Self {
            key_names,
            names,
            schema,
            keys,
            order,
            rank,
            limit,
            emit_all,
            config,
            nested,
            state,
            cluster: None,
            close: None,
            watermark: None,
            late: 0,
        })
    }

    /// A window top-N (see [`WindowClose`]); `close.end` must be one of the keys.
    pub fn with_window_close(mut self, close: WindowClose) -> Result<Self> {
        if !self.keys.contains(&close.end) {
            return plan_err!("a window top-N must be keyed by its window end");
        }
        if close.emit_at_close && self.emit_all {
            return plan_err!("a window top-N emits at close or every batch, not both");
        }
        self.close = Some(close);
        // Each segment of the store knows its earliest window end as it is written,
        // so closing windows reads only the segments that hold a closed one.
        self.state.set_bound(self.window_end_bound()?);
        Ok(self)
    }

    /// A store row's window end (the key column `close.end` is among the store's keys).
    fn window_end_bound(&self) -> Result<Arc<crate::state::BoundFn>> {
        let Some(key) = self
            .close
            .and_then(|c| self.keys.iter().position(|&k| k == c.end))
        else {
            return crate::internal_err!("a window top-N's end is not a key");
        };
        Ok(Arc::new(move |rows: &RecordBatch| {
            Ok(window_ends(rows.column(key))?.iter().collect())
        }))
    }

    /// The kept rows of the windows the watermark closed, taken out of the state.
    fn take_closed(&mut self) -> Result<Vec<RecordBatch>> {
        let (Some(_), Some(wm)) = (self.close, self.watermark) else {
            return Ok(Vec::new());
        };
        let bound = self.window_end_bound()?;
        let taken = self.state.take_until(wm, bound.as_ref())?;
        taken
            .iter()
            .map(|rows| self.nested.explode_rows(rows))
            .collect()
    }

    fn ranked(&self) -> Ranked {
        Ranked {
            keys: self.keys.clone(),
            order: self.order.clone(),
            rank: self.rank,
            limit: self.limit,
            emit_all: self.emit_all,
        }
    }

    fn store(
        schema: &SchemaRef,
        keys: &[usize],
        config: StateConfig,
    ) -> Result<(Nested, KeyedState)> {
        let nested = nested_layout(schema, keys);
        let state = KeyedState::try_new(&nested.key_fields(), &nested.list_fields(), config)?;
        Ok((nested, state))
    }

    /// Name the output columns `c0, c1, ...` (see `RunningAggregateExec`).
    pub fn with_positional_names(mut self) -> Result<Self> {
        self.schema = super::positional_schema(&self.schema);
        (self.nested, self.state) = Self::store(&self.schema, &self.keys, self.config.clone())?;
        Ok(self)
    }

    /// How the kept rows are stored: partitions, memory budget, time-to-live.
    pub fn with_state_config(mut self, config: StateConfig) -> Result<Self> {
        (self.nested, self.state) = Self::store(&self.schema, &self.keys, config.clone())?;
        self.config = config;
        if self.close.is_some() {
            self.state.set_bound(self.window_end_bound()?);
        }
        Ok(self)
    }
}

/// How a key's rows are ranked.
struct Ranking<'a> {
    schema: &'a SchemaRef,
    keys: &'a [usize],
    order: &'a [OrderColumn],
    rank: usize,
    limit: usize,
}

impl Ranking<'_> {
    /// `all` (the stored rows of some keys, `old` of them, in rank order, then new
    /// rows) ranked per key: the first `limit` of each, their ranks set; and which
    /// of them are new or have a new rank.
    fn rank(&self, all: &RecordBatch, old: usize) -> Result<(RecordBatch, BooleanArray)> {
        // Sort by key, then order, then arrival (stored rows first, in rank order).
        let arrival: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..all.num_rows() as u32));
        let mut columns: Vec<SortColumn> = self
            .keys
            .iter()
            .map(|&i| SortColumn {
                values: Arc::clone(all.column(i)),
                options: None,
            })
            .collect();
        columns.extend(self.order.iter().map(|o| SortColumn {
            values: Arc::clone(all.column(o.index)),
            options: Some(o.options),
        }));
        columns.push(SortColumn {
            values: arrival,
            options: None,
        });
        let sorted = lexsort_to_indices(&columns, None)?;
        let key_columns: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|&i| Arc::clone(all.column(i)))
            .collect();
        // Without keys every row shares one.
        let keys = if key_columns.is_empty() {
            None
        } else {
            let converter = RowConverter::new(
                key_columns
                    .iter()
                    .map(|c| SortField::new(c.data_type().clone()))
                    .collect(),
            )?;
            Some(converter.convert_columns(&key_columns)?)
        };
        let old_rank = cast(all.column(self.rank), &DataType::UInt64)?;
        let Some(old_rank) = old_rank.as_any().downcast_ref::<UInt64Array>() else {
            return crate::internal_err!("a top-N's rank is not UInt64");
        };
        let mut kept = Vec::new();
        let mut ranks = Vec::new();
        let mut changed = Vec::new();
        let mut rank = 0u64;
        for (n, i) in sorted.values().iter().enumerate() {
            let i = *i as usize;
            let same_key = n > 0
                && keys
                    .as_ref()
                    .is_none_or(|k| k.row(sorted.value(n - 1) as usize) == k.row(i));
            rank = if same_key { rank + 1 } else { 1 };
            if rank as usize > self.limit {
                continue;
            }
            kept.push(i as u32);
            ranks.push(rank);
            changed.push(i >= old || old_rank.value(i) != rank);
        }
        let indices = UInt32Array::from(kept);
        let mut columns = all
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), &indices, None)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        columns[self.rank] = Arc::new(UInt64Array::from(ranks));
        let ranked = RecordBatch::try_new(Arc::clone(self.schema), columns)?;
        Ok((ranked, BooleanArray::from(changed)))
    }
}

#[async_trait]
impl StreamOperator for TopN {
    fn name(&self) -> String {
        "TopN".into()
    }

    fn explain(&self) -> String {
        let limit = self.limit;
        let bound = match self.config.ttl {
            Some(ttl) => format!(
                "bounded by state_ttl: a key without a new row for {} is forgotten",
                crate::time::format_duration(ttl)
            ),
            None => "kept for the life of the query (grows with the number of keys)".into(),
        };
        let line = match self.close {
            Some(close) => format!(
                "TopN (ROW_NUMBER() <= {limit}), window top-N: keeps the first {limit} rows of each key [{}] by ORDER BY until the watermark ({} - {}) passes its window end {}, output {}; rows of a closed window are late; state: at most {limit} rows per key of the open windows",
                self.key_names.join(", "),
                self.names[close.time],
                crate::time::format_duration(close.delay),
                self.names[close.end],
                if close.emit_at_close {
                    "append (each window's rows once, when it closes)"
                } else {
                    "update (the rows whose rank changed)"
                },
            ),
            None => format!(
                "TopN (ROW_NUMBER() <= {limit}): keeps the first {limit} rows of each key [{}] by ORDER BY across all batches, output {}; state: at most {limit} rows per key, {bound}",
                self.key_names.join(", "),
                if self.emit_all {
                    "complete"
                } else {
                    "update (the rows whose rank changed)"
                },
            ),
        };
        match &self.cluster {
            Some(c) => c.explained(&line, self.config.partitions),
            None => line,
        }
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn describe(&self) -> String {
        let close = match self.close {
            Some(c) => format!(
                " closed at {} by {} - {} ms{}",
                c.end,
                c.time,
                c.delay.as_millis(),
                if c.emit_at_close { ", emitted" } else { "" }
            ),
            None => String::new(),
        };
        format!(
            "TopNExec keys {:?} order {:?} rank {} limit {} emit all {}{close}",
            self.keys, self.order, self.rank, self.limit, self.emit_all
        )
    }

    fn emits(&self) -> Emits {
        if self.close.is_some_and(|c| c.emit_at_close) {
            return Emits::Appends;
        }
        if self.emit_all {
            Emits::WholeResult
        } else {
            // Keyed by the partition keys and the rank.
            let mut keys = self.keys.clone();
            keys.push(self.rank);
            Emits::Changes { keys }
        }
    }

    fn can_partition_on_cluster(&self) -> bool {
        // Rows are routed to state partitions by their key: a top-N without keys
        // ranks all rows together. A window top-N closes its windows on the driver.
        !self.keys.is_empty() && self.close.is_none()
    }

    fn partition_on_cluster(&mut self, placement: crate::cluster::state::Placement) {
        self.cluster = Some(OnCluster::new(placement));
    }

    fn begin_batch(&mut self, ctx: &OperatorContext) {
        if let Some(c) = &self.cluster {
            c.begin(ctx.batch_time.as_millis(), None);
        }
    }

    async fn plan_input(
        &mut self,
        input: &datafusion::dataframe::DataFrame,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let plan = input.clone().create_physical_plan().await?;
        let ranked = self.ranked();
        match &mut self.cluster {
            Some(c) => c.plan_top_n(plan, ranked, &self.config),
            None => Ok(plan),
        }
    }

    /// Per partition (in parallel): the stored rows of the keys the batch touches and
    /// the batch's rows, ranked; the first `limit` of each key stored again. On a
    /// cluster the state partitions' tasks did that: their rows are the output.
    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let now = ctx.batch_time.as_millis();
        let input: Vec<RecordBatch> = input
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| RecordBatch::try_new(Arc::clone(&self.schema), b.columns().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        if let Some(c) = &mut self.cluster {
            c.processed(now);
            return Ok(Some(input));
        }
        let mut new = concat_batches(&self.schema, &input)?;
        let mut latest = None;
        if let Some(close) = self.close {
            // Rows of a window the watermark passed are late: its ranking was final.
            if let Some(wm) = self.watermark {
                let ends = window_ends(new.column(close.end))?;
                let open: BooleanArray = ends
                    .iter()
                    .map(|e| Some(e.is_none_or(|e| e > wm)))
                    .collect();
                let kept = filter_record_batch(&new, &open)?;
                self.late = (new.num_rows() - kept.num_rows()) as u64;
                new = kept;
            } else {
                self.late = 0;
            }
            latest = max_of(new.column(close.time))?;
        }
        let ranked = self.ranked();
        let changed = fold_top_n(
            &mut self.state,
            &self.nested,
            &ranked,
            &self.schema,
            &new,
            now,
        )?;
        let Some(close) = self.close else {
            return Ok(Some(changed));
        };
        if let Some(t) = latest {
            let candidate = t - close.delay.as_millis() as i64;
            self.watermark = Some(self.watermark.map_or(candidate, |wm| wm.max(candidate)));
        }
        if ctx.end_of_input {
            self.watermark = Some(crate::ops::END_OF_INPUT_WATERMARK);
        }
        let closed = self.take_closed()?;
        Ok(Some(if close.emit_at_close { closed } else { changed }))
    }

    fn late_rows(&self) -> u64 {
        self.late
    }

    fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    fn state_stats(&self) -> StateStats {
        self.state.stats()
    }

    /// The store's rows: a delta of the keys changed since the last checkpoint, or
    /// all of them. On a cluster: where they are and their version.
    fn snapshot(&mut self) -> Result<OperatorState> {
        if let Some(c) = &mut self.cluster {
            return Ok(c.operator_state(self.config.partitions));
        }
        let mut state = self.state.snapshot()?;
        if self.close.is_some() {
            state.meta["watermark"] = serde_json::json!(self.watermark);
        }
        Ok(state)
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        if restore_placement(
            "TopN",
            self.cluster.as_mut(),
            &state,
            self.config.partitions,
        )? {
            return Ok(());
        }
        if self.close.is_some() {
            self.watermark = state.meta.get("watermark").and_then(|w| w.as_i64());
        }
        if state.meta.get("state").is_some() {
            return self.state.restore(state.batches);
        }
        // From before the store: every kept row.
        let rows = state.into_table(&self.schema, "top-N")?;
        self.state.restore(vec![self.nested.nest_all(&rows)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateConfig;
    use crate::time::Time;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::time::Duration;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            Field::new("rn", DataType::UInt64, false),
        ]))
    }

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(UInt64Array::from(vec![0u64; rows.len()])),
            ],
        )
        .unwrap()
    }

    fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, u64)> {
        let mut out = Vec::new();
        for b in batches {
            let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            let r = b.column(2).as_any().downcast_ref::<UInt64Array>().unwrap();
            for i in 0..b.num_rows() {
                out.push((k.value(i).to_string(), v.value(i), r.value(i)));
            }
        }
        out.sort();
        out
    }

    fn ctx() -> OperatorContext {
        OperatorContext {
            batch_time: Time::from_millis(0),
            zero_time: Time::from_millis(0),
            batch_interval: Duration::from_secs(1),
            input_watermark: None,
            end_of_input: false,
        }
    }

    fn top2(emit_all: bool) -> TopN {
        let desc = SortOptions {
            descending: true,
            nulls_first: false,
        };
        TopN::try_new(
            schema(),
            vec![0],
            vec![OrderColumn {
                index: 1,
                options: desc,
            }],
            2,
            2,
            emit_all,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn keeps_the_top_rows_of_each_key_and_emits_the_ranks_that_changed() {
        let mut op = top2(false);
        let out = op
            .process(&ctx(), vec![batch(&[("a", 5), ("a", 3), ("b", 1)])])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rows(&out),
            vec![("a".into(), 3, 2), ("a".into(), 5, 1), ("b".into(), 1, 1)]
        );
        // A new best for a: both ranks change; b untouched, nothing for it.
        let out = op
            .process(&ctx(), vec![batch(&[("a", 9)])])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows(&out), vec![("a".into(), 5, 2), ("a".into(), 9, 1)]);
        // A row below the top 2 changes nothing.
        let out = op
            .process(&ctx(), vec![batch(&[("a", 1)])])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rows(&out), vec![]);
        assert_eq!(op.state_rows(), 2, "keys a and b");
        // A restored copy, in another number of partitions, goes on the same way.
        let snapshot = op.snapshot().unwrap();
        let mut copy = top2(true)
            .with_state_config(StateConfig {
                partitions: 5,
                ..StateConfig::default()
            })
            .unwrap();
        copy.restore(snapshot).unwrap();
        let out = copy
            .process(&ctx(), vec![batch(&[("b", 7)])])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rows(&out),
            vec![
                ("a".into(), 5, 2),
                ("a".into(), 9, 1),
                ("b".into(), 1, 2),
                ("b".into(), 7, 1)
            ]
        );
    }

    #[tokio::test]
    async fn ties_keep_the_row_that_arrived_first() {
        let mut op = top2(true);
        op.process(&ctx(), vec![batch(&[("a", 5), ("a", 4)])])
            .await
            .unwrap();
        let out = op
            .process(&ctx(), vec![batch(&[("a", 5)])])
            .await
            .unwrap()
            .unwrap();
        // The new 5 ties with the stored 5 and ranks after it; 4 drops out.
        assert_eq!(rows(&out), vec![("a".into(), 5, 1), ("a".into(), 5, 2)]);
    }
}
