//! Append-mode window state: one group table per window, kept across batches.
//!
//! ```text
//!  partial aggregate (keys + state columns)
//!        │ split rows by window end
//!        ▼
//!  BTreeMap<window end, WindowTable { GroupValues, GroupsAccumulators }>
//!        │ watermark passes an end: take that table out whole
//!        ▼
//!  evaluate() ─▶ one output batch per closed window; nothing else is touched
//! ```
//!
//! A batch costs the hashing of its own partial rows only: stored groups are never
//! re-interned, and a closing window is emitted and dropped without rebuilding the
//! tables of the windows still open. This is the shape of every `EMIT FINAL` /
//! append-mode tumbling or hopping window whose state the watermark evicts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::Result;

/// Fresh accumulators for `aggregates`, the vectorised kind where DataFusion has one.
pub(crate) fn new_accumulators(
    aggregates: &[Arc<AggregateFunctionExpr>],
) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
    aggregates
        .iter()
        .map(|a| -> Result<Box<dyn GroupsAccumulator>> {
            if a.groups_accumulator_supported() {
                Ok(a.create_groups_accumulator()?)
            } else {
                let a = Arc::clone(a);
                Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                    a.create_accumulator()
                })))
            }
        })
        .collect()
}

/// The groups of one window.
struct WindowTable {
    /// The window's `{start, end}` value, one row.
    window: ArrayRef,
    /// The other group keys; `None` when the window is the only key (one group).
    groups: Option<Box<dyn GroupValues>>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    len: usize,
}

/// Window tables by window end (ms); windows with no end (a null event time) sit
/// under `i64::MAX` and never close.
pub(crate) struct WindowState {
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    state_widths: Vec<usize>,
    /// Position of the window among the group keys.
    key_index: usize,
    /// Number of group keys, the window included.
    keys: usize,
    /// The group keys other than the window.
    other_schema: SchemaRef,
    /// Keys + the stored aggregates' state columns: the layout of snapshots.
    snapshot_schema: SchemaRef,
    tables: BTreeMap<i64, WindowTable>,
    indices: Vec<usize>,
}

impl WindowState {
    /// State for `aggregates` grouped by the keys of `partial_schema` (keys first, then
    /// every aggregate's state columns, as `AggregateExec(Partial)` emits them).
    pub(crate) fn try_new(
        partial_schema: &SchemaRef,
        keys: usize,
        key_index: usize,
        aggregates: Vec<Arc<AggregateFunctionExpr>>,
        state_widths: Vec<usize>,
    ) -> Result<Self> {
        let fields = partial_schema.fields();
        let other_schema = Arc::new(Schema::new(
            (0..keys)
                .filter(|i| *i != key_index)
                .map(|i| Arc::clone(&fields[i]))
                .collect::<Vec<_>>(),
        ));
        let width: usize = state_widths.iter().sum();
        let snapshot_schema = Arc::new(Schema::new(fields[..keys + width].to_vec()));
        Ok(Self {
            aggregates,
            state_widths,
            key_index,
            keys,
            other_schema,
            snapshot_schema,
            tables: BTreeMap::new(),
            indices: Vec::new(),
        })
    }

    /// Drops every window (before a restore replaces them).
    pub(crate) fn clear(&mut self) {
        self.tables.clear();
    }

    /// Groups held, over all open windows.
    pub(crate) fn rows(&self) -> usize {
        self.tables.values().map(|t| t.len).sum()
    }

    /// Memory of the open windows' group tables and accumulators.
    pub(crate) fn bytes(&self) -> usize {
        self.tables
            .values()
            .map(|t| {
                t.window.get_array_memory_size()
                    + t.groups.as_ref().map_or(0, |g| g.size())
                    + t.accumulators.iter().map(|a| a.size()).sum::<usize>()
            })
            .sum()
    }

    fn new_table(&self, window: ArrayRef) -> Result<WindowTable> {
        let groups = if self.other_schema.fields().is_empty() {
            None
        } else {
            Some(new_group_values(
                Arc::clone(&self.other_schema),
                &GroupOrdering::None,
            )?)
        };
        Ok(WindowTable {
            window,
            groups,
            accumulators: new_accumulators(&self.aggregates)?,
            len: 0,
        })
    }

    /// Merge `batch` (keys, then at least the stored aggregates' state columns) whose
    /// window ends are `ends`.
    pub(crate) fn merge(
        &mut self,
        batch: &RecordBatch,
        ends: &TimestampMillisecondArray,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let end_of = |i: usize| {
            if ends.is_null(i) {
                i64::MAX
            } else {
                ends.value(i)
            }
        };
        let first = end_of(0);
        if (1..batch.num_rows()).all(|i| end_of(i) == first) {
            return self.merge_one(first, batch.columns());
        }
        let mut rows: HashMap<i64, Vec<u32>> = HashMap::new();
        for i in 0..batch.num_rows() {
            rows.entry(end_of(i)).or_default().push(i as u32);
        }
        let width = self.keys + self.state_widths.iter().sum::<usize>();
        for (end, rows) in rows {
            let rows = UInt32Array::from(rows);
            let columns = batch.columns()[..width]
                .iter()
                .map(|c| take(c.as_ref(), &rows, None))
                .collect::<Result<Vec<_>, _>>()?;
            self.merge_one(end, &columns)?;
        }
        Ok(())
    }

    /// Merge rows that all belong to the window ending at `end`.
    fn merge_one(&mut self, end: i64, columns: &[ArrayRef]) -> Result<()> {
        if !self.tables.contains_key(&end) {
            let table = self.new_table(columns[self.key_index].slice(0, 1))?;
            self.tables.insert(end, table);
        }
        let Some(table) = self.tables.get_mut(&end) else {
            return crate::internal_err!("window table vanished");
        };
        let rows = columns[0].len();
        match table.groups.as_mut() {
            Some(groups) => {
                let others: Vec<ArrayRef> = (0..self.keys)
                    .filter(|i| *i != self.key_index)
                    .map(|i| Arc::clone(&columns[i]))
                    .collect();
                groups.intern(&others, &mut self.indices)?;
                table.len = groups.len();
            }
            None => {
                self.indices.clear();
                self.indices.resize(rows, 0);
                table.len = 1;
            }
        }
        let mut col = self.keys;
        for (acc, width) in table.accumulators.iter_mut().zip(&self.state_widths) {
            acc.merge_batch(&columns[col..col + width], &self.indices, table.len)?;
            col += width;
        }
        Ok(())
    }

    /// Take out every window ending at or before `watermark`, oldest first, as the
    /// group keys (window at its position) followed by each aggregate's value.
    pub(crate) fn close(&mut self, watermark: i64) -> Result<Vec<Vec<ArrayRef>>> {
        let open = self.tables.split_off(&watermark.saturating_add(1));
        let closed = std::mem::replace(&mut self.tables, open);
        let mut out = Vec::with_capacity(closed.len());
        for (_, mut table) in closed {
            let mut columns = self.keys_of(&mut table)?;
            for acc in table.accumulators.iter_mut() {
                columns.push(acc.evaluate(EmitTo::All)?);
            }
            out.push(columns);
        }
        Ok(out)
    }

    /// Drains `table`'s group keys, the window column put back at its position.
    fn keys_of(&self, table: &mut WindowTable) -> Result<Vec<ArrayRef>> {
        let mut columns = match table.groups.as_mut() {
            Some(groups) => groups.emit(EmitTo::All)?,
            None => Vec::new(),
        };
        let zeros = UInt32Array::from(vec![0u32; table.len]);
        columns.insert(self.key_index, take(table.window.as_ref(), &zeros, None)?);
        Ok(columns)
    }

    /// Every open window's groups in the snapshot layout. Reading drains DataFusion's
    /// tables, so each is rebuilt from what was read (same group order).
    pub(crate) fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let ends: Vec<i64> = self.tables.keys().copied().collect();
        let mut out = Vec::with_capacity(ends.len());
        for end in ends {
            let Some(mut table) = self.tables.remove(&end) else {
                continue;
            };
            let mut columns = self.keys_of(&mut table)?;
            for acc in table.accumulators.iter_mut() {
                columns.extend(acc.state(EmitTo::All)?);
            }
            let batch = RecordBatch::try_new(Arc::clone(&self.snapshot_schema), columns)?;
            self.merge_one(end, batch.columns())?;
            out.push(batch);
        }
        Ok(out)
    }

    /// The layout [`WindowState::snapshot`] writes.
    pub(crate) fn snapshot_schema(&self) -> &SchemaRef {
        &self.snapshot_schema
    }
}
