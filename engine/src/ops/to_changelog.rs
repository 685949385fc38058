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
//! Over upserts without a row count ([`ToChangelog::of_upserts`]: an aggregate's
//! changed groups read by another aggregate), every row is present: it retracts the
//! row its key had and is added, so the aggregate above can take the old row back out.
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
    /// Whether the input's last column counts the group's rows (else every row is
    /// present: upserts).
    counted: bool,
    /// The bytes `last` holds (keys, rows and [`ENTRY_BYTES`] each), kept as it changes.
    bytes: usize,
}

/// What one entry of `last` costs beyond its key's and row's bytes (two boxes).
const ENTRY_BYTES: usize = 32;

impl ToChangelog {
    /// Over rows of `input` whose last column counts the input rows of the group (an
    /// Int64), keyed by the columns `keys`.
    pub fn try_new(input: SchemaRef, keys: Vec<usize>) -> Result<Self> {
        let n = input.fields().len();
        if n < 2 || input.field(n - 1).data_type() != &datafusion::arrow::datatypes::DataType::Int64
        {
            return internal_err!("ToChangelog's input does not end in an Int64 row count");
        }
        Self::build(input, n - 1, keys)
    }

    /// Over upserts: rows of `input`, each replacing the row last emitted with the same
    /// `keys` (an aggregate's changed groups in update mode, none of which ever leaves;
    /// at most one row per key in a batch).
    pub fn of_upserts(input: SchemaRef, keys: Vec<usize>) -> Result<Self> {
        if keys.is_empty() {
            return internal_err!("ToChangelog over upserts without a key");
        }
        let n = input.fields().len();
        Self::build(input, n, keys)
    }

    /// The row is `input`'s first `width` columns (a row count follows when fewer).
    fn build(input: SchemaRef, width: usize, keys: Vec<usize>) -> Result<Self> {
        let fields = input.fields()[..width].to_vec();
        let rows_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        let sort = |i: usize| SortField::new(rows_schema.field(i).data_type().clone());
        Ok(Self {
            key_converter: if keys.is_empty() {
                None
            } else {
                Some(RowConverter::new(keys.iter().map(|&i| sort(i)).collect())?)
            },
            row_converter: RowConverter::new((0..width).map(sort).collect())?,
            output: super::changelog_schema(&rows_schema),
            rows_schema,
            counted: width < input.fields().len(),
            bytes: 0,
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
        if !self.counted {
            return "ToChangelog: each changed row retracts the row last emitted for its key (_op = '-D') and is added (_op = '+I'), so the aggregate above takes the old row back out: the output is a changelog; state: the last row emitted per key".into();
        }
        "ToChangelog: each changed group retracts the row last emitted for it (_op = '-D') and adds its new row (_op = '+I'), or only retracts it when no input row is left in it: the output is a changelog; state: the last row emitted per group".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output)
    }

    fn emits(&self) -> Emits {
        Emits::Changelog
    }

    fn describe(&self) -> String {
        let upserts = if self.counted { "" } else { " of upserts" };
        format!("ToChangelogExec{upserts} keys {:?}", self.keys)
    }

    async fn process(
        &mut self,
        _ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let mut retracted = Vec::new();
        // (batch, row) of the rows added: taken from the input as they are.
        let mut added: Vec<(usize, usize)> = Vec::new();
        let n = self.rows_schema.fields().len();
        let input: Vec<RecordBatch> = input.into_iter().filter(|b| b.num_rows() > 0).collect();
        for (bi, b) in input.iter().enumerate() {
            let counts = if self.counted {
                match b.column(n).as_primitive_opt::<Int64Type>() {
                    Some(c) => Some(c),
                    None => return internal_err!("ToChangelog's row count is not an Int64"),
                }
            } else {
                None
            };
            let keys = match &self.key_converter {
                Some(c) => {
                    let keys: Vec<ArrayRef> =
                        self.keys.iter().map(|&i| Arc::clone(b.column(i))).collect();
                    Some(c.convert_columns(&keys)?)
                }
                None => None,
            };
            let rows = self.row_converter.convert_columns(&b.columns()[..n])?;
            for i in 0..b.num_rows() {
                let row = rows.row(i);
                let key: &[u8] = keys.as_ref().map_or(&[], |k| k.row(i).data());
                let present =
                    keys.is_none() || counts.is_none_or(|c| c.is_valid(i) && c.value(i) > 0);
                match self.last.get_mut(key) {
                    Some(prev) if present => {
                        if prev.as_ref() == row.as_ref() {
                            continue;
                        }
                        self.bytes = self.bytes + row.as_ref().len() - prev.len();
                        retracted.push(std::mem::replace(prev, row.as_ref().into()));
                    }
                    Some(_) => {
                        let prev = self.last.remove(key).expect("present");
                        self.bytes -= key.len() + prev.len() + ENTRY_BYTES;
                        retracted.push(prev);
                        continue;
                    }
                    None if present => {
                        self.bytes += key.len() + row.as_ref().len() + ENTRY_BYTES;
                        self.last.insert(key.into(), row.as_ref().into());
                    }
                    None => continue,
                }
                added.push((bi, i));
            }
        }
        let mut out = Vec::new();
        out.extend(self.batch(&retracted, OP_DELETE)?);
        if !added.is_empty() {
            let columns = (0..n)
                .map(|c| {
                    let arrays: Vec<&dyn Array> =
                        input.iter().map(|b| b.column(c).as_ref()).collect();
                    datafusion::arrow::compute::interleave(&arrays, &added)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let batch = RecordBatch::try_new(Arc::clone(&self.rows_schema), columns)?;
            out.push(super::with_op(batch, OP_INSERT, &self.output)?);
        }
        Ok(Some(out))
    }

    fn state_stats(&self) -> crate::state::StateStats {
        crate::state::StateStats {
            rows: self.last.len() as u64,
            memory_bytes: self.bytes as u64,
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
        self.bytes = self
            .last
            .iter()
            .map(|(k, v)| k.len() + v.len() + ENTRY_BYTES)
            .sum();
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
    #[tokio::test]
    async fn upserts_retract_the_row_their_key_had() {
        let input = TestInput::new(&[("k", DataType::Utf8), ("n", DataType::Int64)]);
        let batch = |k: &[&str], n: &[i64]| {
            input.batch(vec![
                Arc::new(StringArray::from(k.to_vec())),
                Arc::new(Int64Array::from(n.to_vec())),
            ])
        };
        let mut op = ToChangelog::of_upserts(Arc::clone(&input.schema), vec![0]).unwrap();
        let out = input
            .run(&mut op, 1, vec![batch(&["a", "b"], &[1, 0])])
            .await;
        // Every upsert is a row present, a count of 0 included.
        assert_eq!(rows(&out), ["a,1,+I", "b,0,+I"]);
        let out = input
            .run(&mut op, 2, vec![batch(&["a", "b"], &[2, 0])])
            .await;
        assert_eq!(rows(&out), ["a,1,-D", "a,2,+I"]);
        assert!(op.describe().contains("of upserts"));
        // The bytes kept, counted as rows change, are what a restore counts afresh.
        let bytes = op.state_stats().memory_bytes;
        assert!(bytes > 0);
        let mut restored = ToChangelog::of_upserts(Arc::clone(&input.schema), vec![0]).unwrap();
        restored.restore(op.snapshot().unwrap()).unwrap();
        assert_eq!(restored.state_stats().memory_bytes, bytes);
        assert!(ToChangelog::of_upserts(Arc::clone(&input.schema), vec![]).is_err());
    }
}
