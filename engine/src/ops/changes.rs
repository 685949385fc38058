//! `Changes`: from the whole result every batch to the rows that are new or
//! changed since the previous batch — update mode for a query whose result is
//! recomputed whole each batch (an aggregate over an aggregate, a top-N over a join).
//!
//! ```text
//!  whole result ─▶ row format ─▶ not in the previous result (as a multiset)? ─▶ output
//! ```
//!
//! Rows that disappear from the result are not emitted (as in Spark's update mode).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::RowConverter;

use super::{Emits, OperatorContext, StreamOperator};
use crate::Result;

pub struct Changes {
    schema: SchemaRef,
    converter: RowConverter,
    /// The previous batch's result, in the row format, with how often each row occurs.
    previous: HashMap<Box<[u8]>, usize>,
    /// The same rows as Arrow (what a snapshot keeps).
    previous_rows: RecordBatch,
}

impl Changes {
    pub fn try_new(schema: SchemaRef) -> Result<Self> {
        let converter = super::row_converter(&schema)?;
        Ok(Self {
            previous_rows: RecordBatch::new_empty(Arc::clone(&schema)),
            schema,
            converter,
            previous: HashMap::new(),
        })
    }

    /// Name the output columns `c0, c1, ...` (see `RunningAggregateExec`).
    pub fn with_positional_names(mut self) -> Self {
        self.schema = super::positional_schema(&self.schema);
        self.previous_rows = RecordBatch::new_empty(Arc::clone(&self.schema));
        self
    }

    fn remember(&mut self, rows: RecordBatch) -> Result<()> {
        let converted = self.converter.convert_columns(rows.columns())?;
        self.previous.clear();
        for r in converted.iter() {
            *self.previous.entry(r.as_ref().into()).or_default() += 1;
        }
        self.previous_rows = rows;
        Ok(())
    }
}

#[async_trait]
impl StreamOperator for Changes {
    fn name(&self) -> String {
        "Changes".into()
    }

    /// The name checkpoints were fingerprinted under before the rename.
    fn describe(&self) -> String {
        "ChangesExec".into()
    }

    fn explain(&self) -> String {
        "Changes (update mode over a result recomputed each batch): emits the rows that are new or changed since the previous batch; state: the previous result".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn emits(&self) -> Emits {
        // Keyed by whatever keys the result has; no column is known to be one.
        Emits::Changes { keys: Vec::new() }
    }

    async fn process(
        &mut self,
        _ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let parts = input
            .into_iter()
            .map(|b| RecordBatch::try_new(Arc::clone(&self.schema), b.columns().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let all = concat_batches(&self.schema, &parts)?;
        let rows = self.converter.convert_columns(all.columns())?;
        let mut unmatched = self.previous.clone();
        let changed: BooleanArray = rows
            .iter()
            .map(|r| {
                Some(match unmatched.get_mut(r.as_ref()) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        false
                    }
                    _ => true,
                })
            })
            .collect();
        let out = filter_record_batch(&all, &changed)?;
        self.remember(all)?;
        Ok(Some(vec![out]))
    }

    fn state_stats(&self) -> crate::state::StateStats {
        crate::state::StateStats {
            rows: self.previous_rows.num_rows() as u64,
            memory_bytes: (self.previous_rows.get_array_memory_size()
                + self.previous.keys().map(|k| k.len() + 16).sum::<usize>())
                as u64,
            ..Default::default()
        }
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        Ok(crate::checkpoint::OperatorState {
            batches: vec![self.previous_rows.clone()],
            meta: serde_json::json!({}),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        let all = state.into_table(&self.schema, "previous output")?;
        self.remember(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Time;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::time::Duration;

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    fn keys(out: &[RecordBatch]) -> Vec<String> {
        let mut v = Vec::new();
        for b in out {
            let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..k.len() {
                v.push(format!("{}={}", k.value(i), n.value(i)));
            }
        }
        v.sort();
        v
    }

    #[tokio::test]
    async fn emits_rows_that_are_new_or_changed() {
        let ctx = OperatorContext {
            batch_time: Time::from_millis(0),
            zero_time: Time::from_millis(0),
            batch_interval: Duration::from_secs(1),
            input_watermark: None,
            end_of_input: false,
        };
        let mut op = Changes::try_new(batch(&[]).schema()).unwrap();
        let out = op
            .process(&ctx, vec![batch(&[("a", 1), ("b", 1)])])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(keys(&out), vec!["a=1", "b=1"]);
        let out = op
            .process(&ctx, vec![batch(&[("a", 1), ("b", 2), ("c", 1)])])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(keys(&out), vec!["b=2", "c=1"]);
        // Duplicates count: a second identical row is new.
        let snapshot = op.snapshot().unwrap();
        let mut op = Changes::try_new(batch(&[]).schema()).unwrap();
        op.restore(snapshot).unwrap();
        let out = op
            .process(&ctx, vec![batch(&[("a", 1), ("a", 1), ("b", 2), ("c", 1)])])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(keys(&out), vec!["a=1"]);
    }
}
