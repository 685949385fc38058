//! `MapWithState`: Spark's `mapWithState`, vectorised. Per batch, the user's
//! function is called with every key that has new rows or times out, the rows of
//! those keys grouped by key, and their previous state, all as Arrow arrays; it returns
//! the new state per key and any output rows. The state lives in a [`KeyedState`]:
//! the function is called once per state partition that has such keys, the
//! partitions in parallel, and a batch costs its rows and the keys it touches.
//!
//! ```text
//!  batch ─route by key─▶ per partition: touch(keys) ─▶ rows grouped by key ─┐
//!                        idle ≥ timeout: touch_due (segments remember their oldest) ┴▶ StateFn
//!  StateFn ─▶ new state: put (timed-out and removed keys: tombstones) ─▶ output rows
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatchOptions, UInt32Array, new_empty_array,
};
use datafusion::arrow::compute::{concat_batches, take, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, UInt32Type};
use datafusion::arrow::record_batch::RecordBatch;

use super::{OperatorContext, StreamOperator};
use crate::checkpoint::OperatorState;
use crate::error::{Error, Result};
use crate::state::{KeyedState, Partition, StateConfig, StateStats};
use crate::time::Time;

/// The user's state function: called once per batch with every affected key.
pub type StateFn = dyn Fn(&KeyedBatch) -> Result<StateUpdate> + Send + Sync;

/// What `map_with_state` keeps and calls: the state schema, the output schema, the
/// function and an optional idle timeout.
#[derive(Clone)]
pub struct StateSpec {
    pub(crate) state_schema: SchemaRef,
    pub(crate) output_schema: SchemaRef,
    pub(crate) timeout: Option<Duration>,
    pub(crate) func: Arc<StateFn>,
}

impl fmt::Debug for StateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateSpec")
            .field("state_schema", &self.state_schema)
            .field("output_schema", &self.output_schema)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl StateSpec {
    /// A spec whose state rows have `state_schema` and whose output rows have
    /// `output_schema`.
    pub fn new(
        state_schema: SchemaRef,
        output_schema: SchemaRef,
        func: impl Fn(&KeyedBatch) -> Result<StateUpdate> + Send + Sync + 'static,
    ) -> Self {
        Self {
            state_schema,
            output_schema,
            timeout: None,
            func: Arc::new(func),
        }
    }

    /// A key that receives no rows for `timeout` is called one last time with
    /// `timing_out` set, then its state is removed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// The keys a batch calls the state function for, with their rows and state.
#[derive(Debug)]
pub struct KeyedBatch {
    pub batch_time: Time,
    /// One row per key (the key columns).
    pub keys: RecordBatch,
    /// This batch's rows of those keys, grouped in `keys` order.
    pub values: RecordBatch,
    /// Key `i`'s rows are `values` rows `offsets[i]..offsets[i + 1]`.
    pub offsets: Vec<usize>,
    /// Key `i`'s previous state (a null row where `has_state` is false).
    pub state: RecordBatch,
    pub has_state: BooleanArray,
    /// True for keys called because they timed out (they have no rows).
    pub timing_out: BooleanArray,
}

impl KeyedBatch {
    /// Number of keys.
    pub fn num_keys(&self) -> usize {
        self.keys.num_rows()
    }

    /// The rows of key `i`.
    pub fn values_of(&self, i: usize) -> RecordBatch {
        self.values
            .slice(self.offsets[i], self.offsets[i + 1] - self.offsets[i])
    }
}

/// What the state function returns.
#[derive(Debug)]
pub struct StateUpdate {
    /// New state, one row per key of the [`KeyedBatch`], in its order.
    pub state: RecordBatch,
    /// Where true, the key's state is removed.
    pub remove: Option<BooleanArray>,
    /// Rows to emit for this batch.
    pub output: RecordBatch,
}

/// The operator behind `Stream::map_with_state`.
pub struct MapWithState {
    key_columns: Vec<String>,
    /// Their positions in the input.
    key_indices: Vec<usize>,
    spec: StateSpec,
    input_schema: SchemaRef,
    key_schema: SchemaRef,
    config: StateConfig,
    /// Keys, their state columns, `__updated` (when each key last had rows).
    state: KeyedState,
}

impl MapWithState {
    pub fn try_new(
        input_schema: SchemaRef,
        key_columns: Vec<String>,
        spec: StateSpec,
    ) -> Result<Self> {
        let mut key_fields = Vec::new();
        let mut key_indices = Vec::new();
        for k in &key_columns {
            match input_schema.index_of(k) {
                Ok(i) => {
                    key_fields.push(Arc::new(input_schema.field(i).clone()));
                    key_indices.push(i);
                }
                Err(_) => {
                    return crate::plan_err!(
                        "map_with_state key column '{k}' is not in the stream; it has {}",
                        input_schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        if let Some(f) = spec.state_schema.fields().iter().find(|f| !f.is_nullable()) {
            return crate::plan_err!(
                "map_with_state: state column '{}' must be nullable: a key without state yet is called with a null state row",
                f.name()
            );
        }
        let config = StateConfig::default();
        let state = KeyedState::try_new(&key_fields, spec.state_schema.fields(), config.clone())?;
        Ok(Self {
            key_schema: Arc::new(Schema::new(key_fields)),
            key_columns,
            key_indices,
            spec,
            input_schema,
            config,
            state,
        })
    }

    /// How the keys' state is kept: partitions, memory budget, time-to-live.
    pub fn with_state_config(mut self, config: StateConfig) -> Result<Self> {
        self.state = KeyedState::try_new(
            self.key_schema.fields(),
            self.spec.state_schema.fields(),
            config.clone(),
        )?;
        self.config = config;
        Ok(self)
    }
}

/// One call of the user's function: the keys of one state partition.
struct Call<'a> {
    spec: &'a StateSpec,
    key_schema: &'a SchemaRef,
    input: &'a RecordBatch,
    batch_time: Time,
    cutoff: Option<i64>,
    idle_until: Option<i64>,
}

impl Call<'_> {
    /// Calls the function with the partition's keys that have rows in `routed` (key
    /// columns, then each row's position in the input) or are idle, and puts (or
    /// removes) their new state; the output rows.
    fn run(&self, p: &mut Partition, routed: Option<Vec<ArrayRef>>) -> Result<Option<RecordBatch>> {
        let nk = self.key_schema.fields().len();
        let routed = match routed {
            Some(r) => r,
            None => {
                let idle = self
                    .idle_until
                    .is_some_and(|up_to| p.may_be_due(up_to, false));
                if !idle {
                    return Ok(None);
                }
                let mut empty: Vec<ArrayRef> = self
                    .key_schema
                    .fields()
                    .iter()
                    .map(|f| new_empty_array(f.data_type()))
                    .collect();
                empty.push(new_empty_array(&DataType::UInt32));
                empty
            }
        };
        let n = routed[nk].len();
        let mut touched = p.touch(&routed[..nk], n, self.cutoff)?;
        let with_rows = touched.len();
        if let Some(up_to) = self.idle_until {
            p.touch_due(&mut touched, up_to, None)?;
        }
        let called = touched.len();
        if called == 0 {
            return Ok(None);
        }
        // This partition's rows, grouped by key in the order the keys came.
        let mut offsets = vec![0usize; with_rows + 1];
        for g in &touched.row_group {
            offsets[g + 1] += 1;
        }
        for i in 0..with_rows {
            offsets[i + 1] += offsets[i];
        }
        let positions = routed[nk].as_primitive::<UInt32Type>();
        let mut next = offsets.clone();
        let mut order = vec![0u32; n];
        for (row, g) in touched.row_group.iter().enumerate() {
            order[next[*g]] = positions.value(row);
            next[*g] += 1;
        }
        let values = take_record_batch(self.input, &UInt32Array::from(order))?;
        offsets.extend(std::iter::repeat_n(n, called - with_rows));
        let keys = RecordBatch::try_new(Arc::clone(self.key_schema), touched.keys.clone())?;
        // Each key's previous state, a null row where it has none.
        let mut at: Vec<Option<u32>> = vec![None; called];
        for (j, g) in touched.previous_group.iter().enumerate() {
            at[*g] = Some(j as u32);
        }
        let at = UInt32Array::from(at);
        let state_columns = touched
            .previous
            .iter()
            .map(|c| take(c.as_ref(), &at, None))
            .collect::<Result<Vec<_>, _>>()?;
        let state = RecordBatch::try_new_with_options(
            Arc::clone(&self.spec.state_schema),
            state_columns,
            &RecordBatchOptions::new().with_row_count(Some(called)),
        )?;
        let has_state: BooleanArray = at.iter().map(|i| Some(i.is_some())).collect();
        let timing_out: BooleanArray = (0..called).map(|i| Some(i >= with_rows)).collect();
        let batch = KeyedBatch {
            batch_time: self.batch_time,
            keys,
            values,
            offsets,
            state,
            has_state,
            timing_out,
        };
        let update = (self.spec.func)(&batch)?;
        check_update(self.spec, &update, &batch)?;
        // Keys that timed out go, and those the function removed.
        let keep: BooleanArray = (0..called)
            .map(|i| {
                let removed = update
                    .remove
                    .as_ref()
                    .is_some_and(|r| r.is_valid(i) && r.value(i));
                Some(i < with_rows && !removed)
            })
            .collect();
        let now = self.batch_time.as_millis();
        p.put(
            touched,
            update.state.columns().to_vec(),
            Some(&keep),
            now,
            self.cutoff,
        )?;
        Ok(Some(RecordBatch::try_new_with_options(
            Arc::clone(&self.spec.output_schema),
            update.output.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(update.output.num_rows())),
        )?))
    }
}

/// What the user's function returned, checked against the spec and the keys.
fn check_update(spec: &StateSpec, update: &StateUpdate, called: &KeyedBatch) -> Result<()> {
    let user_err = |message: String| Error::User {
        context: "map_with_state function".into(),
        message,
    };
    if update.state.num_rows() != called.num_keys() {
        return Err(user_err(format!(
            "returned {} state rows for {} keys",
            update.state.num_rows(),
            called.num_keys()
        )));
    }
    if update.state.schema().fields() != spec.state_schema.fields() {
        return Err(user_err(format!(
            "returned state of schema {:?}, the spec declares {:?}",
            update.state.schema(),
            spec.state_schema
        )));
    }
    if update.output.schema().fields() != spec.output_schema.fields() {
        return Err(user_err(format!(
            "returned output of schema {:?}, the spec declares {:?}",
            update.output.schema(),
            spec.output_schema
        )));
    }
    if let Some(remove) = &update.remove
        && remove.len() != called.num_keys()
    {
        return Err(user_err(format!(
            "returned {} remove flags for {} keys",
            remove.len(),
            called.num_keys()
        )));
    }
    Ok(())
}

#[async_trait]
impl StreamOperator for MapWithState {
    fn name(&self) -> String {
        format!("MapWithState(keys=[{}])", self.key_columns.join(", "))
    }

    /// The name checkpoints were fingerprinted under before the rename.
    fn describe(&self) -> String {
        format!("MapWithStateExec(keys=[{}])", self.key_columns.join(", "))
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.spec.output_schema)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let input = concat_batches(&self.input_schema, &input)?;
        let n = input.num_rows();
        let mut columns: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|i| Arc::clone(input.column(*i)))
            .collect();
        columns.push(Arc::new(UInt32Array::from_iter_values(0..n as u32)));
        let routed = self.state.route(&columns, n)?;
        let now = ctx.batch_time.as_millis();
        let call = Call {
            spec: &self.spec,
            key_schema: &self.key_schema,
            input: &input,
            batch_time: ctx.batch_time,
            cutoff: self.state.cutoff(now),
            idle_until: self
                .spec
                .timeout
                .map(|t| now.saturating_sub(t.as_millis() as i64)),
        };
        // With a timeout every partition may hold idle keys, rows or not.
        let inputs: Vec<Option<Option<Vec<ArrayRef>>>> = if call.idle_until.is_some() {
            routed.into_iter().map(Some).collect()
        } else {
            routed.into_iter().map(|r| r.map(Some)).collect()
        };
        let outputs = self
            .state
            .for_each(inputs, |p, routed| call.run(p, routed))?;
        Ok(Some(outputs.into_iter().flatten().collect()))
    }

    fn state_stats(&self) -> StateStats {
        self.state.stats()
    }

    /// The state store's rows (keys, state, when each key last had rows): a delta of
    /// the keys changed or removed since the last checkpoint, or all of them.
    fn snapshot(&mut self) -> Result<OperatorState> {
        self.state.snapshot()
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        if !state.meta.is_null() {
            return self.state.restore(state.batches);
        }
        // A checkpoint from before the state store: keys, state, last seen.
        let [keys, values, last_seen] =
            <[RecordBatch; 3]>::try_from(state.batches).map_err(|b| {
                Error::Checkpoint(format!(
                    "a map_with_state snapshot has {} batches, expected 3 (keys, state, last seen)",
                    b.len()
                ))
            })?;
        if keys.num_rows() != values.num_rows() || keys.num_rows() != last_seen.num_rows() {
            return Err(Error::Checkpoint(format!(
                "a map_with_state snapshot has {} keys, {} states and {} times",
                keys.num_rows(),
                values.num_rows(),
                last_seen.num_rows()
            )));
        }
        let mut columns = keys.columns().to_vec();
        columns.extend(values.columns().iter().cloned());
        columns.extend(last_seen.columns().iter().cloned());
        let rows = RecordBatch::try_new(Arc::clone(self.state.schema()), columns)
            .map_err(|e| Error::Checkpoint(format!("a map_with_state snapshot: {e}")))?;
        self.state.restore(vec![rows])
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type};

    use super::*;
    use crate::ops::test_input::{TestInput, rows};

    /// A running count per key; a key idle for 2 s is called once more and removed.
    fn counts(input: &TestInput) -> MapWithState {
        let state_schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let output_schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let out_schema = Arc::clone(&output_schema);
        let spec = StateSpec::new(Arc::clone(&state_schema), output_schema, move |b| {
            let previous = b.state.column(0).as_primitive::<Int64Type>();
            let n: Int64Array = (0..b.num_keys())
                .map(|i| {
                    let before = if b.has_state.value(i) {
                        previous.value(i)
                    } else {
                        0
                    };
                    Some(before + b.values_of(i).num_rows() as i64)
                })
                .collect();
            let n: ArrayRef = Arc::new(n);
            Ok(StateUpdate {
                state: RecordBatch::try_new(Arc::clone(&state_schema), vec![Arc::clone(&n)])?,
                remove: Some(b.timing_out.clone()),
                output: RecordBatch::try_new(
                    Arc::clone(&out_schema),
                    vec![Arc::clone(b.keys.column(0)), n],
                )?,
            })
        })
        .with_timeout(Duration::from_secs(2));
        MapWithState::try_new(Arc::clone(&input.schema), vec!["k".into()], spec).unwrap()
    }

    #[tokio::test]
    async fn each_key_is_called_with_its_rows_and_state_and_removed_when_idle() {
        let input = TestInput::keyed_events();
        let mut op = counts(&input);
        let out = input
            .run(&mut op, 1, vec![input.events(&["a", "b", "a"], &[1, 2, 3])])
            .await;
        assert_eq!(rows(&out), ["a,2", "b,1"]);
        let out = input
            .run(&mut op, 2, vec![input.events(&["a"], &[4])])
            .await;
        assert_eq!(rows(&out), ["a,3"]);
        assert_eq!(op.state_rows(), 2);
        // At 3 s, b has been idle 2 s: called once more (no rows), then removed.
        let out = input.run(&mut op, 3, vec![]).await;
        assert_eq!(rows(&out), ["b,1"]);
        assert_eq!(op.state_rows(), 1);
    }

    #[test]
    fn a_state_column_that_cannot_be_null_is_refused_up_front() {
        let strict = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let spec = StateSpec::new(Arc::clone(&strict), strict, |_| unreachable!());
        let err = MapWithState::try_new(TestInput::keyed_events().schema, vec!["k".into()], spec)
            .err()
            .expect("refused")
            .to_string();
        assert_eq!(
            err,
            "map_with_state: state column 'n' must be nullable: a key without state yet is called with a null state row"
        );
    }
}
