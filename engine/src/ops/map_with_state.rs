//! `MapWithState`: Spark's `mapWithState`, vectorised. Per batch, the user's
//! function is called once with every key that has new rows or times out, the rows of
//! those keys grouped by key, and their previous state, all as Arrow arrays; it returns
//! the new state per key and any output rows.
//!
//! ```text
//!  batch ─sort by key─▶ keys, rows grouped ─┬─▶ StateFn ─▶ new state rows ─▶ stored state
//!  stored state ─take(previous per key)────┘           └─▶ output rows
//!  stored state ─idle ≥ timeout─▶ called once more with timing_out = true, then removed
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::{
    SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, partition,
    take_record_batch,
};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use super::{OperatorContext, StreamOperator};
use crate::error::{Error, Result};
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
    spec: StateSpec,
    input_schema: SchemaRef,
    key_schema: SchemaRef,
    converter: RowConverter,
    /// Key columns of every key with state.
    keys: RecordBatch,
    state: RecordBatch,
    last_seen: Vec<i64>,
    /// Key (row-format bytes) to its row in `keys`/`state`.
    index: HashMap<Box<[u8]>, usize>,
}

impl MapWithState {
    pub fn try_new(
        input_schema: SchemaRef,
        key_columns: Vec<String>,
        spec: StateSpec,
    ) -> Result<Self> {
        let mut key_fields = Vec::new();
        for k in &key_columns {
            match input_schema.field_with_name(k) {
                Ok(f) => key_fields.push(f.clone()),
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
        let key_schema = Arc::new(Schema::new(key_fields));
        let converter = RowConverter::new(
            key_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            keys: RecordBatch::new_empty(Arc::clone(&key_schema)),
            state: RecordBatch::new_empty(Arc::clone(&spec.state_schema)),
            key_columns,
            spec,
            input_schema,
            key_schema,
            converter,
            last_seen: Vec::new(),
            index: HashMap::new(),
        })
    }

    fn key_arrays(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.key_columns
            .iter()
            .map(|k| -> Result<ArrayRef> {
                let i = batch.schema().index_of(k)?;
                Ok(Arc::clone(batch.column(i)))
            })
            .collect()
    }

    /// The batch's rows sorted by key, and the range of each key's rows.
    fn group_by_key(
        &self,
        input: RecordBatch,
    ) -> Result<(RecordBatch, Vec<std::ops::Range<usize>>)> {
        if input.num_rows() == 0 {
            return Ok((input, Vec::new()));
        }
        let keys = self.key_arrays(&input)?;
        let sort: Vec<SortColumn> = keys
            .iter()
            .map(|values| SortColumn {
                values: Arc::clone(values),
                options: None,
            })
            .collect();
        let order = lexsort_to_indices(&sort, None)?;
        let sorted = take_record_batch(&input, &order)?;
        let sorted_keys = self.key_arrays(&sorted)?;
        let ranges = partition(&sorted_keys)?.ranges();
        Ok((sorted, ranges))
    }

    /// What the user's function returned, checked against the spec and the keys.
    fn check_update(&self, update: &StateUpdate, called: &KeyedBatch) -> Result<()> {
        if update.state.num_rows() != called.num_keys() {
            return Err(self.user_err(format!(
                "returned {} state rows for {} keys",
                update.state.num_rows(),
                called.num_keys()
            )));
        }
        if update.state.schema().fields() != self.spec.state_schema.fields() {
            return Err(self.user_err(format!(
                "returned state of schema {:?}, the spec declares {:?}",
                update.state.schema(),
                self.spec.state_schema
            )));
        }
        if update.output.schema().fields() != self.spec.output_schema.fields() {
            return Err(self.user_err(format!(
                "returned output of schema {:?}, the spec declares {:?}",
                update.output.schema(),
                self.spec.output_schema
            )));
        }
        Ok(())
    }

    fn user_err(&self, message: String) -> Error {
        Error::User {
            context: "map_with_state function".into(),
            message,
        }
    }
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
        let t = ctx.batch_time;
        let input = concat_batches(&self.input_schema, &input)?;
        let (values, ranges) = self.group_by_key(input)?;
        let firsts = UInt32Array::from_iter_values(ranges.iter().map(|r| r.start as u32));
        let new_keys = take_record_batch(
            &RecordBatch::try_new(Arc::clone(&self.key_schema), self.key_arrays(&values)?)?,
            &firsts,
        )?;
        let rows = self.converter.convert_columns(new_keys.columns())?;
        let mut called_state: Vec<Option<u32>> = rows
            .iter()
            .map(|r| self.index.get(r.as_ref()).map(|i| *i as u32))
            .collect();
        // Keys idle for the timeout are called once more, with no rows.
        let mut touched = vec![false; self.keys.num_rows()];
        for i in called_state.iter().flatten() {
            touched[*i as usize] = true;
        }
        let timed_out: Vec<u32> = match self.spec.timeout {
            Some(timeout) => (0..self.keys.num_rows())
                .filter(|i| {
                    !touched[*i] && t.as_millis() - self.last_seen[*i] >= timeout.as_millis() as i64
                })
                .map(|i| i as u32)
                .collect(),
            None => Vec::new(),
        };
        let n_new = new_keys.num_rows();
        let timed_out_keys = take_record_batch(&self.keys, &UInt32Array::from(timed_out.clone()))?;
        let keys = concat_batches(&self.key_schema, [&new_keys, &timed_out_keys])?;
        if keys.num_rows() == 0 {
            return Ok(Some(Vec::new()));
        }
        called_state.extend(timed_out.iter().map(|i| Some(*i)));
        let mut offsets: Vec<usize> = ranges.iter().map(|r| r.start).collect();
        offsets.push(values.num_rows());
        offsets.extend(std::iter::repeat_n(values.num_rows(), timed_out.len()));
        let state_idx = UInt32Array::from(called_state.clone());
        let state = take_record_batch(&self.state, &state_idx)?;
        let has_state: BooleanArray = called_state.iter().map(|s| Some(s.is_some())).collect();
        let timing_out: BooleanArray = (0..keys.num_rows()).map(|i| Some(i >= n_new)).collect();
        let called = KeyedBatch {
            batch_time: t,
            keys,
            values,
            offsets,
            state,
            has_state,
            timing_out,
        };
        let update = (self.spec.func)(&called)?;
        self.check_update(&update, &called)?;
        // Keep the state of keys not called; replace the called ones.
        let mut keep_old = vec![true; self.keys.num_rows()];
        for i in called_state.iter().flatten() {
            keep_old[*i as usize] = false;
        }
        let keep_old = BooleanArray::from(keep_old);
        let keep_new: BooleanArray = (0..called.num_keys())
            .map(|i| {
                let removed = update
                    .remove
                    .as_ref()
                    .is_some_and(|r| r.is_valid(i) && r.value(i));
                Some(i < n_new && !removed)
            })
            .collect();
        let old_last_seen: Vec<i64> = self
            .last_seen
            .iter()
            .zip(keep_old.values().iter())
            .filter(|(_, keep)| *keep)
            .map(|(t, _)| *t)
            .collect();
        let new_count = keep_new.true_count();
        self.keys = concat_batches(
            &self.key_schema,
            [
                &filter_record_batch(&self.keys, &keep_old)?,
                &filter_record_batch(&called.keys, &keep_new)?,
            ],
        )?;
        let new_state = RecordBatch::try_new(
            Arc::clone(&self.spec.state_schema),
            update.state.columns().to_vec(),
        )?;
        self.state = concat_batches(
            &self.spec.state_schema,
            [
                &filter_record_batch(&self.state, &keep_old)?,
                &filter_record_batch(&new_state, &keep_new)?,
            ],
        )?;
        self.last_seen = old_last_seen;
        self.last_seen
            .extend(std::iter::repeat_n(t.as_millis(), new_count));
        let rows = self.converter.convert_columns(self.keys.columns())?;
        self.index = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.as_ref().into(), i))
            .collect();
        let output = RecordBatch::try_new(
            Arc::clone(&self.spec.output_schema),
            update.output.columns().to_vec(),
        )?;
        Ok(Some(vec![output]))
    }

    fn state_rows(&self) -> usize {
        self.keys.num_rows()
    }

    fn state_bytes(&self) -> usize {
        self.keys.get_array_memory_size()
            + self.state.get_array_memory_size()
            + self.last_seen.capacity() * std::mem::size_of::<i64>()
    }

    /// Three batches: the keys, their state, and when each key last had rows.
    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        let last_seen = RecordBatch::try_new(
            last_seen_schema(),
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(
                self.last_seen.clone(),
            ))],
        )?;
        Ok(crate::checkpoint::OperatorState {
            batches: vec![self.keys.clone(), self.state.clone(), last_seen],
            meta: serde_json::Value::Null,
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
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
        self.keys = RecordBatch::try_new(Arc::clone(&self.key_schema), keys.columns().to_vec())?;
        self.state = RecordBatch::try_new(
            Arc::clone(&self.spec.state_schema),
            values.columns().to_vec(),
        )?;
        let Some(times) = last_seen
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
        else {
            return Err(Error::Checkpoint(
                "a map_with_state snapshot's last-seen times are not Int64".into(),
            ));
        };
        self.last_seen = times.values().to_vec();
        let rows = self.converter.convert_columns(self.keys.columns())?;
        self.index = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.as_ref().into(), i))
            .collect();
        Ok(())
    }
}

fn last_seen_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new(
        "last_seen_ms",
        datafusion::arrow::datatypes::DataType::Int64,
        false,
    )]))
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
