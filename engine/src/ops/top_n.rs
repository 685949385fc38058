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
//! The rank column is recomputed here: the per-batch plan below ranks a batch's rows
//! among themselves only. Ties keep the row that arrived first.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, UInt32Array, UInt64Array};
use datafusion::arrow::compute::{
    SortColumn, SortOptions, cast, concat_batches, filter_record_batch, lexsort_to_indices, take,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};

use super::{Emits, OperatorContext, StreamOperator};
use crate::{Result, plan_err};

/// One `ORDER BY` term: a column of the operator's rows and its direction.
#[derive(Debug, Clone, Copy)]
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
    converter: RowConverter,
    /// The kept rows of every key, ranks included.
    state: RecordBatch,
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
        let converter = RowConverter::new(
            keys.iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?;
        let key_names = keys
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect();
        Ok(Self {
            key_names,
            state: RecordBatch::new_empty(Arc::clone(&schema)),
            schema,
            keys,
            order,
            rank,
            limit,
            emit_all,
            converter,
        })
    }

    /// Name the output columns `c0, c1, ...` (see `RunningAggregateExec`).
    pub fn with_positional_names(mut self) -> Self {
        self.schema = super::positional_schema(&self.schema);
        self.state = RecordBatch::new_empty(Arc::clone(&self.schema));
        self
    }

    fn key_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.keys
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect()
    }
}

#[async_trait]
impl StreamOperator for TopN {
    fn name(&self) -> String {
        "TopN".into()
    }

    fn explain(&self) -> String {
        let limit = self.limit;
        format!(
            "TopN (ROW_NUMBER() <= {limit}): keeps the first {limit} rows of each key [{}] by ORDER BY across all batches, output {}; state: at most {limit} rows per key, kept for the life of the query (grows with the number of keys)",
            self.key_names.join(", "),
            if self.emit_all {
                "complete"
            } else {
                "update (the rows whose rank changed)"
            },
        )
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn describe(&self) -> String {
        format!(
            "TopNExec keys {:?} order {:?} rank {} limit {} emit all {}",
            self.keys, self.order, self.rank, self.limit, self.emit_all
        )
    }

    fn emits(&self) -> Emits {
        if self.emit_all {
            Emits::WholeResult
        } else {
            // Keyed by the partition keys and the rank.
            let mut keys = self.keys.clone();
            keys.push(self.rank);
            Emits::Changes { keys }
        }
    }

    async fn process(
        &mut self,
        _ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let input: Vec<RecordBatch> = input
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| RecordBatch::try_new(Arc::clone(&self.schema), b.columns().to_vec()))
            .collect::<std::result::Result<_, _>>()?;
        if input.is_empty() {
            return Ok(Some(if self.emit_all {
                vec![self.state.clone()]
            } else {
                vec![]
            }));
        }
        let new = concat_batches(&self.schema, &input)?;
        // The stored rows of the keys this batch touches take part; the rest stay.
        let new_keys = self.converter.convert_columns(&self.key_columns(&new))?;
        let touched: HashSet<&[u8]> = new_keys.iter().map(|r| r.data()).collect();
        let stored_keys = self
            .converter
            .convert_columns(&self.key_columns(&self.state))?;
        let is_touched: BooleanArray = stored_keys
            .iter()
            .map(|r| Some(touched.contains(r.data())))
            .collect();
        let old = filter_record_batch(&self.state, &is_touched)?;
        let untouched =
            filter_record_batch(&self.state, &datafusion::arrow::compute::not(&is_touched)?)?;
        let old_rows = old.num_rows();
        let all = concat_batches(&self.schema, [&old, &new])?;
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
        let keys = self.converter.convert_columns(&self.key_columns(&all))?;
        let old_rank = cast(old.column(self.rank), &DataType::UInt64)?;
        let old_rank = old_rank
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .unwrap_or_else(|| UInt64Array::from(Vec::<u64>::new()));
        let mut kept = Vec::new();
        let mut ranks = Vec::new();
        let mut changed = Vec::new();
        let mut rank = 0u64;
        for (n, i) in sorted.values().iter().enumerate() {
            let i = *i as usize;
            let same_key = n > 0 && keys.row(sorted.value(n - 1) as usize) == keys.row(i);
            rank = if same_key { rank + 1 } else { 1 };
            if rank as usize > self.limit {
                continue;
            }
            kept.push(i as u32);
            ranks.push(rank);
            changed.push(i >= old_rows || old_rank.value(i) != rank);
        }
        let indices = UInt32Array::from(kept);
        let mut columns = all
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), &indices, None)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        columns[self.rank] = Arc::new(UInt64Array::from(ranks));
        let ranked = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        self.state = concat_batches(&self.schema, [&untouched, &ranked])?;
        if self.emit_all {
            return Ok(Some(vec![self.state.clone()]));
        }
        Ok(Some(vec![filter_record_batch(
            &ranked,
            &BooleanArray::from(changed),
        )?]))
    }

    fn state_rows(&self) -> usize {
        self.state.num_rows()
    }

    fn state_bytes(&self) -> usize {
        self.state.get_array_memory_size()
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        Ok(crate::checkpoint::OperatorState {
            batches: vec![self.state.clone()],
            meta: serde_json::json!({}),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.state = state.into_table(&self.schema, "top-N")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(op.state_rows(), 3);
        // A restored copy goes on the same way.
        let snapshot = op.snapshot().unwrap();
        let mut copy = top2(true);
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
