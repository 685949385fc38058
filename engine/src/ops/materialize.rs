//! `Materialize`: turns a stream of changed rows (upserts by key, update mode)
//! back into the whole result, for a plan above it that must see all of it — an
//! aggregate, a window function, a sort or a join over a running aggregate's result.
//!
//! ```text
//!  changed rows ─┐
//!  stored table ─┴▶ the last row of each key wins ─▶ stored table ─▶ output (all of it)
//! ```
//!
//! It costs O(result) per batch: the plan above recomputes over the whole result.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use super::{Emits, OperatorContext, StreamOperator};
use crate::Result;

pub struct Materialize {
    schema: SchemaRef,
    keys: Vec<usize>,
    converter: RowConverter,
    table: RecordBatch,
}

impl Materialize {
    /// A table of `schema` whose rows are replaced by key (`keys`: column indexes).
    pub fn try_new(schema: SchemaRef, keys: Vec<usize>) -> Result<Self> {
        let converter = RowConverter::new(
            keys.iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            table: RecordBatch::new_empty(Arc::clone(&schema)),
            schema,
            keys,
            converter,
        })
    }

    /// Name the output columns `c0, c1, ...` (see `RunningAggregateExec`).
    pub fn with_positional_names(mut self) -> Self {
        self.schema = super::positional_schema(&self.schema);
        self.table = RecordBatch::new_empty(Arc::clone(&self.schema));
        self
    }
}

#[async_trait]
impl StreamOperator for Materialize {
    fn name(&self) -> String {
        "Materialize".into()
    }

    fn explain(&self) -> String {
        "Materialize: keeps the whole result of the stateful operator below (one row per key, replaced as it changes) for the plan above, which is recomputed over all of it each batch; state: one row per key".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn emits(&self) -> Emits {
        Emits::WholeResult
    }

    fn describe(&self) -> String {
        format!("MaterializeExec keys {:?}", self.keys)
    }

    async fn process(
        &mut self,
        _ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let mut parts = vec![self.table.clone()];
        for b in input {
            if b.num_rows() > 0 {
                parts.push(RecordBatch::try_new(
                    Arc::clone(&self.schema),
                    b.columns().to_vec(),
                )?);
            }
        }
        if parts.len() > 1 {
            let all = concat_batches(&self.schema, &parts)?;
            let keys: Vec<ArrayRef> = self
                .keys
                .iter()
                .map(|&i| Arc::clone(all.column(i)))
                .collect();
            let rows = self.converter.convert_columns(&keys)?;
            // The newest row of each key: scan from the end, keep the first seen.
            let mut seen = HashSet::with_capacity(all.num_rows());
            let mut keep: Vec<u32> = (0..all.num_rows())
                .rev()
                .filter(|&i| seen.insert(rows.row(i)))
                .map(|i| i as u32)
                .collect();
            keep.reverse();
            let indices = UInt32Array::from(keep);
            let columns = all
                .columns()
                .iter()
                .map(|c| Ok(take(c.as_ref(), &indices, None)?))
                .collect::<Result<Vec<ArrayRef>>>()?;
            self.table = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        }
        Ok(Some(vec![self.table.clone()]))
    }

    fn state_stats(&self) -> crate::state::StateStats {
        crate::state::StateStats {
            rows: self.table.num_rows() as u64,
            memory_bytes: self.table.get_array_memory_size() as u64,
            ..Default::default()
        }
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        Ok(crate::checkpoint::OperatorState {
            batches: vec![self.table.clone()],
            meta: serde_json::json!({}),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.table = state.into_table(&self.schema, "kept result")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::DataType;

    use super::*;
    use crate::ops::test_input::{TestInput, rows};

    #[tokio::test]
    async fn changed_rows_replace_their_key_and_every_row_is_emitted() {
        let input = TestInput::new(&[("k", DataType::Utf8), ("n", DataType::Int64)]);
        let batch = |k: &[&str], n: &[i64]| {
            input.batch(vec![
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Int64Array::from(n.to_vec())),
            ])
        };
        let mut op = Materialize::try_new(Arc::clone(&input.schema), vec![0]).unwrap();
        let out = input
            .run(&mut op, 1, vec![batch(&["a", "b"], &[1, 1])])
            .await;
        assert_eq!(rows(&out), ["a,1", "b,1"]);
        let out = input.run(&mut op, 2, vec![batch(&["a"], &[2])]).await;
        assert_eq!(rows(&out), ["a,2", "b,1"]);
        let out = input.run(&mut op, 3, vec![]).await;
        assert_eq!(
            rows(&out),
            ["a,2", "b,1"],
            "no change: the same whole result"
        );
        assert_eq!(op.state_rows(), 2);
    }
}
