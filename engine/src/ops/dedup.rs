//! `Dedup`: `SELECT DISTINCT` over a stream, or the first row of each key. Emits each
//! distinct row (key) the first time it is seen, across all batches (or, in complete
//! mode, every one kept so far, each batch). The keys seen live in a [`KeyedState`]:
//! partitioned, spilled past the memory budget, checkpointed by change, evicted after
//! `state_ttl`.
//!
//! ```text
//!  batch ─▶ route by key ─▶ per partition: touch(keys), keep the keys not seen ─▶
//!          their first rows, in input order ─▶ output; put(new keys) into the state
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, UInt32Array, new_null_array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{SchemaRef, UInt32Type};
use datafusion::arrow::record_batch::RecordBatch;

use super::{OperatorContext, StreamOperator};
use crate::Result;
use crate::checkpoint::OperatorState;
use crate::cluster::state::{FirstRows, Placement};
use crate::ops::aggregate::on_cluster::{OnCluster, restore_placement};
use crate::state::{KeyedState, StateConfig, StateStats};

pub struct Dedup {
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    /// Complete mode: every distinct row so far, each batch (the state then keeps the
    /// whole first row of each key).
    emit_all: bool,
    /// Compare only these columns (the first row of each key wins); all by default.
    key_columns: Option<Vec<usize>>,
    config: StateConfig,
    state: KeyedState,
    /// Set when the keys seen live in state partitions on a cluster's executors.
    cluster: Option<OnCluster>,
}

impl Dedup {
    pub fn try_new(input_schema: SchemaRef, emit_all: bool) -> Result<Self> {
        let config = StateConfig::default();
        Ok(Self {
            output_schema: Arc::clone(&input_schema),
            state: Self::new_state(&input_schema, None, emit_all, config.clone())?,
            input_schema,
            emit_all,
            key_columns: None,
            config,
            cluster: None,
        })
    }

    /// Deduplicate on `columns` only: the first row seen of each key is emitted, later
    /// rows of that key are dropped (`ROW_NUMBER() OVER (PARTITION BY key ...) = 1`).
    pub fn with_key_columns(mut self, columns: Vec<usize>) -> Result<Self> {
        self.key_columns = Some(columns);
        self.rebuild()?;
        Ok(self)
    }

    /// How the keys seen are kept: partitions, memory budget, time-to-live.
    pub fn with_state_config(mut self, config: StateConfig) -> Result<Self> {
        self.config = config;
        self.rebuild()?;
        Ok(self)
    }

    /// Name the output columns `c0, c1, ...` (see `RunningAggregateExec`).
    pub fn with_positional_names(mut self) -> Self {
        self.output_schema = super::positional_schema(&self.output_schema);
        self
    }

    fn rebuild(&mut self) -> Result<()> {
        self.state = Self::new_state(
            &self.input_schema,
            self.key_columns.as_deref(),
            self.emit_all,
            self.config.clone(),
        )?;
        Ok(())
    }

    /// The key columns' positions, then those of the other columns the state keeps
    /// (in complete mode the rest of the row, to emit it again).
    fn layout(
        schema: &SchemaRef,
        keys: Option<&[usize]>,
        emit_all: bool,
    ) -> (Vec<usize>, Vec<usize>) {
        let all: Vec<usize> = (0..schema.fields().len()).collect();
        match keys {
            None => (all, Vec::new()),
            Some(keys) => {
                let rest = if emit_all {
                    all.into_iter().filter(|i| !keys.contains(i)).collect()
                } else {
                    Vec::new()
                };
                (keys.to_vec(), rest)
            }
        }
    }

    fn new_state(
        schema: &SchemaRef,
        keys: Option<&[usize]>,
        emit_all: bool,
        config: StateConfig,
    ) -> Result<KeyedState> {
        let (keys, values) = Self::layout(schema, keys, emit_all);
        let field = |i: &usize| Arc::clone(&schema.fields()[*i]);
        KeyedState::try_new(
            &keys.iter().map(field).collect::<Vec<_>>(),
            &values.iter().map(field).collect::<Vec<_>>(),
            config,
        )
    }

    /// Every row the state keeps, in the input's column order (complete mode).
    fn everything(&mut self) -> Result<Vec<RecordBatch>> {
        let (keys, values) = Self::layout(
            &self.input_schema,
            self.key_columns.as_deref(),
            self.emit_all,
        );
        kept_rows(&mut self.state, &self.output_schema, &keys, &values)
    }
}

/// Folds `batch` into `state` (keyed by its columns `keys`, keeping `values` too):
/// the rows of `batch` whose key was not seen before, the first of each key, in the
/// batch's order.
pub(crate) fn keep_first(
    state: &mut KeyedState,
    batch: &RecordBatch,
    keys: &[usize],
    values: &[usize],
    now: i64,
) -> Result<UInt32Array> {
    let (nk, nv) = (keys.len(), values.len());
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = keys
        .iter()
        .chain(values)
        .map(|i| Arc::clone(batch.column(*i)))
        .collect();
    columns.push(Arc::new(UInt32Array::from_iter_values(0..n as u32)));
    let cutoff = state.cutoff(now);
    let routed = state.route(&columns, n)?;
    let firsts = state.for_each(routed, |p, cols: Vec<ArrayRef>| {
        let mut touched = p.touch(&cols[..nk], cols[0].len(), cutoff)?;
        touched.retain_new()?;
        let first = UInt32Array::from(touched.first.clone());
        let kept = cols[nk..nk + nv]
            .iter()
            .map(|c| take(c.as_ref(), &first, None))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = cols[nk + nv].as_primitive::<UInt32Type>();
        let global: Vec<u32> = touched
            .first
            .iter()
            .map(|r| rows.value(*r as usize))
            .collect();
        p.put(touched, kept, None, now, cutoff)?;
        Ok(global)
    })?;
    let mut rows: Vec<u32> = firsts.into_iter().flatten().collect();
    rows.sort_unstable();
    Ok(UInt32Array::from(rows))
}

/// `rows` of `batch`, as a batch of `schema` (the same columns, maybe renamed).
pub(crate) fn take_rows(
    batch: &RecordBatch,
    rows: &UInt32Array,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), rows, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(rows.len())),
    )?)
}

/// Every row `state` keeps as rows of `schema`: its key columns at `keys`, its other
/// columns at `values`, any other column of `schema` null.
pub(crate) fn kept_rows(
    state: &mut KeyedState,
    schema: &SchemaRef,
    keys: &[usize],
    values: &[usize],
) -> Result<Vec<RecordBatch>> {
    let kept = state.all(|p, ()| p.scan(None))?;
    let mut out = Vec::new();
    for b in kept.into_iter().flatten() {
        let mut columns: Vec<Option<ArrayRef>> = vec![None; schema.fields().len()];
        for (pos, i) in keys.iter().chain(values).enumerate() {
            columns[*i] = Some(Arc::clone(b.column(pos)));
        }
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| c.unwrap_or_else(|| new_null_array(f.data_type(), b.num_rows())))
            .collect();
        out.push(RecordBatch::try_new(Arc::clone(schema), columns)?);
    }
    Ok(out)
}

#[async_trait]
impl StreamOperator for Dedup {
    fn name(&self) -> String {
        "Dedup".into()
    }

    fn explain(&self) -> String {
        let bound = match self.config.ttl {
            Some(ttl) => format!(
                "bounded by state_ttl: a key not seen again for {} is forgotten",
                crate::time::format_duration(ttl)
            ),
            None => "kept for the life of the query (grows without bound)".into(),
        };
        let line = self.explain_here(&bound);
        match &self.cluster {
            Some(c) => c.explained(&line, self.config.partitions),
            None => line,
        }
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    fn describe(&self) -> String {
        format!(
            "DedupExec keys {:?} emit all {}",
            self.key_columns, self.emit_all
        )
    }

    fn emits(&self) -> super::Emits {
        if self.emit_all {
            super::Emits::WholeResult
        } else {
            super::Emits::Appends
        }
    }

    fn can_partition_on_cluster(&self) -> bool {
        true
    }

    fn partition_on_cluster(&mut self, placement: Placement) {
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
        let Some(c) = &mut self.cluster else {
            return Ok(plan);
        };
        let (keys, values) = Self::layout(
            &self.input_schema,
            self.key_columns.as_deref(),
            self.emit_all,
        );
        let first_rows = FirstRows {
            keys,
            values,
            emit_all: self.emit_all,
        };
        c.plan_first_rows(plan, first_rows, &self.config)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        if let Some(c) = &mut self.cluster {
            c.processed(ctx.batch_time.as_millis());
            return Ok(Some(vec![self.emitted_on_cluster(input)?]));
        }
        let batch = concat_batches(&self.input_schema, &input)?;
        let (keys, values) = Self::layout(
            &self.input_schema,
            self.key_columns.as_deref(),
            self.emit_all,
        );
        let now = ctx.batch_time.as_millis();
        let rows = keep_first(&mut self.state, &batch, &keys, &values, now)?;
        if self.emit_all {
            return Ok(Some(self.everything()?));
        }
        // The new rows in the order they came.
        Ok(Some(vec![take_rows(&batch, &rows, &self.output_schema)?]))
    }

    fn state_stats(&self) -> StateStats {
        match &self.cluster {
            Some(_) => StateStats::default(),
            None => self.state.stats(),
        }
    }

    /// The keys seen (and in complete mode the rest of their first rows), as the
    /// state store's rows: a delta of the keys new since the last checkpoint, or all.
    /// On a cluster: where they are and their version.
    fn snapshot(&mut self) -> Result<OperatorState> {
        if let Some(c) = &mut self.cluster {
            return Ok(c.operator_state(self.config.partitions));
        }
        self.state.snapshot()
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        if restore_placement(
            "Dedup",
            self.cluster.as_mut(),
            &state,
            self.config.partitions,
        )? {
            return Ok(());
        }
        self.restore_here(state)
    }
}

impl Dedup {
    /// The rows the state partitions' tasks emitted, under this operator's names.
    fn emitted_on_cluster(&self, input: Vec<RecordBatch>) -> Result<RecordBatch> {
        let batch = concat_batches(&self.input_schema, &input)?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.output_schema),
            batch.columns().to_vec(),
            &datafusion::arrow::record_batch::RecordBatchOptions::new()
                .with_row_count(Some(batch.num_rows())),
        )?)
    }

    /// EXPLAIN's line for the state here: what it emits and what bounds it.
    fn explain_here(&self, bound: &str) -> String {
        match &self.key_columns {
            None => format!(
                "Dedup (DISTINCT): emits each distinct row once; state: every distinct row seen, {bound}"
            ),
            Some(keys) => format!(
                "Dedup (ROW_NUMBER() = 1 by arrival): emits the first row of each key [{}] and drops the key's later rows; state: every key seen, {bound}",
                keys.iter()
                    .map(|&i| self.input_schema.field(i).name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Puts back a checkpoint of the state held here.
    fn restore_here(&mut self, state: OperatorState) -> Result<()> {
        if state.meta.get("seen_batches").is_none() {
            return self.state.restore(state.batches);
        }
        // A checkpoint from before the state store: the keys seen, then (complete
        // mode) the distinct rows.
        let mut batches = state.batches.into_iter();
        let Some(seen) = batches.next() else {
            return Err(crate::error::Error::Checkpoint(
                "a Dedup snapshot without its rows seen".into(),
            ));
        };
        let (keys, values) = Self::layout(
            &self.input_schema,
            self.key_columns.as_deref(),
            self.emit_all,
        );
        let rows: Vec<RecordBatch> = if values.is_empty() {
            vec![seen]
        } else {
            batches
                .map(|b| {
                    let cols = keys.iter().chain(&values).map(|i| Arc::clone(b.column(*i)));
                    RecordBatch::try_from_iter(cols.enumerate().map(|(i, c)| (format!("c{i}"), c)))
                })
                .collect::<std::result::Result<_, _>>()?
        };
        self.state.restore(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_input::{TestInput, rows};

    #[tokio::test]
    async fn a_distinct_row_is_emitted_once_across_batches() {
        let input = TestInput::keyed_events();
        let mut op = Dedup::try_new(Arc::clone(&input.schema), false).unwrap();
        let batch = input.events(&["a", "a", "b"], &[1, 1, 2]);
        let out = input.run(&mut op, 1, vec![batch]).await;
        assert_eq!(
            rows(&out),
            ["a,1970-01-01T00:00:00.001", "b,1970-01-01T00:00:00.002"]
        );
        let out = input
            .run(&mut op, 2, vec![input.events(&["a", "c"], &[1, 3])])
            .await;
        assert_eq!(rows(&out), ["c,1970-01-01T00:00:00.003"]);
        assert_eq!(op.state_rows(), 3);
    }

    #[tokio::test]
    async fn by_key_the_first_row_wins_and_complete_mode_emits_every_one() {
        let input = TestInput::keyed_events();
        let mut op = Dedup::try_new(Arc::clone(&input.schema), true)
            .unwrap()
            .with_key_columns(vec![0])
            .unwrap();
        input
            .run(&mut op, 1, vec![input.events(&["a", "b"], &[1, 2])])
            .await;
        let out = input
            .run(&mut op, 2, vec![input.events(&["a", "c"], &[9, 3])])
            .await;
        assert_eq!(
            rows(&out),
            [
                "a,1970-01-01T00:00:00.001",
                "b,1970-01-01T00:00:00.002",
                "c,1970-01-01T00:00:00.003"
            ]
        );
        assert!(op.explain().contains("the first row of each key [k]"));
    }

    #[tokio::test]
    async fn seven_spilled_partitions_keep_the_input_order_and_a_ttl_forgets_idle_keys() {
        let input = TestInput::keyed_events();
        let config = StateConfig {
            partitions: 7,
            memory: 1,
            ttl: Some(std::time::Duration::from_secs(10)),
            ..StateConfig::default()
        };
        let mut op = Dedup::try_new(Arc::clone(&input.schema), false)
            .unwrap()
            .with_key_columns(vec![0])
            .unwrap()
            .with_state_config(config)
            .unwrap();
        let keys: Vec<String> = (0..200).map(|i| format!("k{}", (i * 37) % 150)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ms: Vec<i64> = (0..200).collect();
        let out = input.run(&mut op, 1, vec![input.events(&refs, &ms)]).await;
        // The first row of each of the 150 keys, in the order they came.
        let times: Vec<i64> = out[0]
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
            .values()
            .to_vec();
        assert_eq!(times, (0..150).collect::<Vec<i64>>());
        let stats = op.state_stats();
        assert_eq!(stats.rows, 150);
        assert!(stats.spilled_bytes > 0, "{stats:?}");
        // 5 s later k1 is still known; 20 s later it has been forgotten.
        let again = input
            .run(&mut op, 6, vec![input.events(&["k1"], &[500])])
            .await;
        assert!(rows(&again).is_empty());
        let again = input
            .run(&mut op, 21, vec![input.events(&["k1"], &[600])])
            .await;
        assert_eq!(rows(&again), ["k1,1970-01-01T00:00:00.600"]);
        assert!(op.state_stats().evicted >= 1);
        assert!(
            op.explain().contains("bounded by state_ttl"),
            "{}",
            op.explain()
        );
    }
}
