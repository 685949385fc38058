//! `Dedup`: `SELECT DISTINCT` over a stream. Emits each distinct row the first
//! time it is seen, across all batches (or, in complete mode, every distinct row each
//! batch). Rows are compared in Arrow's row format.
//!
//! ```text
//!  batch ─▶ RowConverter ─▶ seen.insert(row)? ─▶ filter(new rows) ─▶ output
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use super::{OperatorContext, StreamOperator};
use crate::Result;

pub struct Dedup {
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    converter: RowConverter,
    /// Rows seen so far, in the row format (bytes compare as the rows do).
    seen: HashSet<Box<[u8]>>,
    /// Complete mode: every distinct row so far, each batch.
    emit_all: bool,
    distinct: Vec<RecordBatch>,
    /// Compare only these columns (the first row of each key wins); all by default.
    key_columns: Option<Vec<usize>>,
}

impl Dedup {
    pub fn try_new(input_schema: SchemaRef, emit_all: bool) -> Result<Self> {
        let converter = RowConverter::new(
            input_schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(Self {
            output_schema: Arc::clone(&input_schema),
            input_schema,
            converter,
            seen: HashSet::new(),
            emit_all,
            distinct: Vec::new(),
            key_columns: None,
        })
    }

    /// Deduplicate on `columns` only: the first row seen of each key is emitted, later
    /// rows of that key are dropped (`ROW_NUMBER() OVER (PARTITION BY key ...) = 1`).
    pub fn with_key_columns(mut self, columns: Vec<usize>) -> Result<Self> {
        self.converter = RowConverter::new(
            columns
                .iter()
                .map(|&i| SortField::new(self.input_schema.field(i).data_type().clone()))
                .collect(),
        )?;
        self.key_columns = Some(columns);
        Ok(self)
    }

    /// Name the output columns `c0, c1, ...` (see `RunningAggregateExec`).
    pub fn with_positional_names(mut self) -> Self {
        self.output_schema = super::positional_schema(&self.output_schema);
        self
    }
}

#[async_trait]
impl StreamOperator for Dedup {
    fn name(&self) -> String {
        "Dedup".into()
    }

    fn explain(&self) -> String {
        match &self.key_columns {
            None => "Dedup (DISTINCT): emits each distinct row once; state: every distinct row seen, kept for the life of the query (grows without bound)".into(),
            Some(keys) => format!(
                "Dedup (ROW_NUMBER() = 1 by arrival): emits the first row of each key [{}] and drops the key's later rows; state: every key seen, kept for the life of the query (grows without bound)",
                keys.iter()
                    .map(|&i| self.input_schema.field(i).name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
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

    async fn process(
        &mut self,
        _ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let batch = concat_batches(&self.input_schema, &input)?;
        let rows = match &self.key_columns {
            Some(keys) => {
                let cols: Vec<_> = keys.iter().map(|&i| Arc::clone(batch.column(i))).collect();
                self.converter.convert_columns(&cols)?
            }
            None => self.converter.convert_columns(batch.columns())?,
        };
        let new: BooleanArray = rows
            .iter()
            .map(|r| {
                // Look up by borrowed bytes; only a new row is copied.
                let new = !self.seen.contains(r.as_ref());
                if new {
                    self.seen.insert(r.as_ref().into());
                }
                Some(new)
            })
            .collect();
        let fresh = filter_record_batch(&batch, &new)?;
        let fresh =
            RecordBatch::try_new(Arc::clone(&self.output_schema), fresh.columns().to_vec())?;
        if self.emit_all {
            if fresh.num_rows() > 0 {
                self.distinct.push(fresh);
            }
            return Ok(Some(self.distinct.clone()));
        }
        Ok(Some(vec![fresh]))
    }

    fn state_rows(&self) -> usize {
        self.seen.len()
    }

    fn state_bytes(&self) -> usize {
        let keys: usize = self.seen.iter().map(|k| k.len()).sum();
        let table = self.seen.capacity() * (std::mem::size_of::<Box<[u8]>>() + 1);
        let distinct: usize = self
            .distinct
            .iter()
            .map(|b| b.get_array_memory_size())
            .sum();
        keys + table + distinct
    }

    /// The rows (or keys) seen, as Arrow columns (the row format is converted back, so
    /// a checkpoint does not depend on it), then in complete mode the distinct rows.
    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(self.seen.iter().map(|r| parser.parse(r)))?;
        let mut batches = vec![RecordBatch::try_new(self.key_schema(), columns)?];
        batches.extend(self.distinct.iter().cloned());
        Ok(crate::checkpoint::OperatorState {
            batches,
            meta: serde_json::json!({ "seen_batches": 1 }),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        let mut batches = state.batches.into_iter();
        let Some(seen) = batches.next() else {
            return Err(crate::error::Error::Checkpoint(
                "a Dedup snapshot without its rows seen".into(),
            ));
        };
        let seen = RecordBatch::try_new(self.key_schema(), seen.columns().to_vec())?;
        let rows = self.converter.convert_columns(seen.columns())?;
        self.seen = rows.iter().map(|r| r.as_ref().into()).collect();
        self.distinct = batches
            .map(|b| RecordBatch::try_new(Arc::clone(&self.output_schema), b.columns().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        Ok(())
    }
}

impl Dedup {
    /// The columns rows are compared on.
    fn key_schema(&self) -> SchemaRef {
        match &self.key_columns {
            Some(keys) => Arc::new(datafusion::arrow::datatypes::Schema::new(
                keys.iter()
                    .map(|&i| self.input_schema.field(i).clone())
                    .collect::<Vec<_>>(),
            )),
            None => Arc::clone(&self.input_schema),
        }
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
}
