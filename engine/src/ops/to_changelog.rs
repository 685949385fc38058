//! `ToChangelog`: turns an aggregate's changed groups (upserts by key, each with how
//! many input rows the group holds) into a changelog — the group's previous row
//! retracted (`-D`), its new row added (`+I`), or only retracted when no input row
//! is left in it. An aggregate over a changelog (rows retracted as well as added)
//! can lose a group entirely, which an upsert cannot say; Flink's `-U`/`+U` pairs
//! can, and so can this.
//!
//! ```text
//!  changed groups (key, values..., rows) ─▶ previous row of the key? ─▶ -D previous
//!                                         rows > 0 and values new?   ─▶ +I (key, values...)
//! ```
//!
//! State: the last row emitted per key, in the row format (as many as the aggregate
//! has groups).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::RandomState;

use super::{Emits, OP_DELETE, OP_INSERT, OperatorContext, StreamOperator};
use crate::{Result, internal_err};

pub struct ToChangelog {
    /// The input's schema: the row's columns, then the row count (Int64).
    input: SchemaRef,
    /// The row's columns (the input's without the count).
    rows_schema: SchemaRef,
    /// The row's columns and `_op`.
    output: SchemaRef,
    keys: Vec<usize>,
    /// `None` for no keys: a global aggregate, whose one row is always there.
    key_converter: Option<RowConverter>,
    row_converter: RowConverter,
    /// Key -> the row last emitted for it.
    last: HashMap<Box<[u8]>, Box<[u8]>, RandomState>,
}

impl ToChangelog {
    /// Over rows of `input` whose last column counts the input rows of the group (an
    /// Int64), keyed by the columns `keys`.
    pub fn try_new(input: SchemaRef, keys: Vec<usize>) -> Result<Self> {
        let n = input.fields().len();
        if n < 2 || input.field(n - 1).data_type() != &datafusion::arrow::datatypes::DataType::Int64
        {
            return internal_err!("ToChangelog's input does not end in an Int64 row count");
        }
        let fields = input.fields()[..n - 1].to_vec();
        let rows_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        let sort = |i: usize| SortField::new(rows_schema.field(i).data_type().clone());
        Ok(Self {
            key_converter: if keys.is_empty() {
                None
            } else {
                Some(RowConverter::new(keys.iter().map(|&i| sort(i)).collect())?)
            },
            row_converter: RowConverter::new((0..n - 1).map(sort).collect())?,
            output: super::changelog_schema(&rows_schema),
            rows_schema,
            input,
            keys,
            last: HashMap::default(),
        })
    }

    /// Name the output columns `c0, c1, ...` (the op column keeps its name).
    pub fn with_positional_names(mut self) -> Self {
        self.rows_schema = super::positional_schema(&self.rows_schema);
        self.output = super::changelog_schema(&self.rows_schema);
        self
    }

    /// The key of each row of `columns` (the input's or a row's), in the row format;
    /// empty for a global aggregate.
    fn keys_of(&self, columns: &[ArrayRef]) -> Result<Vec<Box<[u8]>>> {
        let n = columns.first().map_or(0, |c| c.len());
        let Some(converter) = &self.key_converter else {
            return Ok(vec![Box::default(); n]);
        };
        let keys: Vec<ArrayRef> = self.keys.iter().map(|&i| Arc::clone(&columns[i])).collect();
        let keys = converter.convert_columns(&keys)?;
        Ok(keys.iter().map(|k| k.as_ref().into()).collect())
    }

    /// `rows` (in the row format) as one batch with `op`.
    fn batch(&self, rows: &[Box<[u8]>], op: &str) -> Result<Option<RecordBatch>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let batch = super::batch_of_rows(&self.row_converter, rows, &self.rows_schema)?;
        Ok(Some(super::with_op(batch, op, &self.output)?))
    }
}

#[async_trait]
impl StreamOperator for ToChangelog {
    fn name(&self) -> String {
        "ToChangelog".into()
    }

    fn explain(&self) -> String {
        "ToChangelog: each changed group retracts the row last emitted for it (_op = '-D') and adds its new row (_op = '+I'), or only retracts it when no input row is left in it: the output is a changelog; state: the last row emitted per group".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output)
    }

    fn emits(&self) -> Emits {
        Emits::Changelog
    }

    fn describe(&self) -> String {
        format!("ToChangelogExec keys {:?}", self.keys)
    }

    async fn process(
        &mut self,
        _ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let (mut retracted, mut added) = (Vec::new(), Vec::new());
        let n = self.input.fields().len() - 1;
        for b in input {
            if b.num_rows() == 0 {
                continue;
            }
            let Some(counts) = b.column(n).as_primitive_opt::<Int64Type>() else {
                return internal_err!("ToChangelog's row count is not an Int64");
            };
            let keys = self.keys_of(b.columns())?;
            let rows = self.row_converter.convert_columns(&b.columns()[..n])?;
            for (i, key) in keys.into_iter().enumerate() {
                let row = rows.row(i);
                let present =
                    self.key_converter.is_none() || (counts.is_valid(i) && counts.value(i) > 0);
                match self.last.get(&key) {
                    Some(prev) if present && prev.as_ref() == row.as_ref() => continue,
                    Some(_) => {
                        let prev = self.last.remove(&key).expect("present");
                        retracted.push(prev);
                    }
                    None => {}
                }
                if present {
                    let row: Box<[u8]> = row.as_ref().into();
                    added.push(row.clone());
                    self.last.insert(key, row);
                }
            }
        }
        let mut out = Vec::new();
        out.extend(self.batch(&retracted, OP_DELETE)?);
        out.extend(self.batch(&added, OP_INSERT)?);
        Ok(Some(out))
    }

    fn state_stats(&self) -> crate::state::StateStats {
        crate::state::StateStats {
            rows: self.last.len() as u64,
            memory_bytes: self
                .last
                .iter()
                .map(|(k, v)| (k.len() + v.len() + 32) as u64)
                .sum(),
            ..Default::default()
        }
    }

    /// The rows last emitted, whole each time.
    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        let table =
            super::batch_of_rows(&self.row_converter, self.last.values(), &self.rows_schema)?;
        Ok(crate::checkpoint::OperatorState {
            batches: vec![table],
            meta: serde_json::json!({}),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        let table = state.into_table(&self.rows_schema, "rows last emitted")?;
        let keys = self.keys_of(table.columns())?;
        let rows = self.row_converter.convert_columns(table.columns())?;
        self.last = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, rows.row(i).as_ref().into()))
            .collect();
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
    async fn a_changed_group_retracts_its_last_row_and_a_group_left_empty_only_retracts() {
        let input = TestInput::new(&[
            ("k", DataType::Utf8),
            ("n", DataType::Int64),
            ("rows", DataType::Int64),
        ]);
        let batch = |k: &[&str], n: &[i64], r: &[i64]| {
            input.batch(vec![
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Int64Array::from(n.to_vec())),
                Arc::new(Int64Array::from(r.to_vec())),
            ])
        };
        let mut op = ToChangelog::try_new(Arc::clone(&input.schema), vec![0]).unwrap();
        let out = input
            .run(&mut op, 1, vec![batch(&["a", "b"], &[1, 5], &[1, 1])])
            .await;
        assert_eq!(rows(&out), ["a,1,+I", "b,5,+I"]);
        // a changes, b is touched but unchanged (nothing), c arrives.
        let out = input
            .run(
                &mut op,
                2,
                vec![batch(&["a", "b", "c"], &[2, 5, 7], &[2, 1, 1])],
            )
            .await;
        assert_eq!(rows(&out), ["a,1,-D", "a,2,+I", "c,7,+I"]);
        // From a checkpoint: b's rows are all retracted, its row leaves.
        let state = op.snapshot().unwrap();
        let mut op = ToChangelog::try_new(Arc::clone(&input.schema), vec![0]).unwrap();
        op.restore(state).unwrap();
        let input2 = TestInput::new(&[
            ("k", DataType::Utf8),
            ("n", DataType::Int64),
            ("rows", DataType::Int64),
        ]);
        let b = input2.batch(vec![
            Arc::new(StringArray::from(vec!["b"])),
            Arc::new(Int64Array::from(vec![0])),
            Arc::new(Int64Array::from(vec![0])),
        ]);
        let out = input2.run(&mut op, 3, vec![b]).await;
        assert_eq!(rows(&out), ["b,5,-D"]);
        assert_eq!(op.state_rows(), 2);
    }
}
