//! The slot: the table through which a plan made once reads each batch's data.
//!
//! A stream's table provider does not hold data. It scans a [`BatchSlot`]; before each
//! batch runs, the scheduler fills the slot with that batch's `RecordBatch`es, so the
//! same physical plan, built once at query start, reads new data every batch.
//!
//! ```text
//!   source / operator ──fill(batches)──▶ BatchSlot ◀──execute()── StreamingTableExec
//!                                         (one PartitionStream per partition)
//! ```

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use parking_lot::RwLock;

use crate::Result;

/// Batches smaller than twice this are not cut across partitions.
const MIN_SLICE_ROWS: usize = 4096;

/// Holds the current batch's data, split into a fixed number of partitions.
#[derive(Debug)]
pub struct BatchSlot {
    schema: SchemaRef,
    partitions: usize,
    data: RwLock<Arc<Vec<Vec<RecordBatch>>>>,
    /// The addresses of the partition streams [`Self::table`] made: how a plan's scan
    /// is told to be of this slot ([`Self::scanned_by`]).
    streams: parking_lot::Mutex<Vec<usize>>,
    /// Set when the batch is read by a cluster's executors instead of held here: what
    /// they read, and the range it stands for (to read it here after all).
    remote: parking_lot::Mutex<Option<Remote>>,
}

/// A batch the executors read ([`BatchSlot::fill_remote`]).
#[derive(Debug, Clone)]
pub struct Remote {
    pub scan: Arc<crate::cluster::scan::ClusterScan>,
    pub range: crate::source::SourceRange,
}

impl BatchSlot {
    /// An empty slot of `partitions` partitions (at least one).
    pub fn new(schema: SchemaRef, partitions: usize) -> Arc<Self> {
        let partitions = partitions.max(1);
        Arc::new(Self {
            schema,
            partitions,
            data: RwLock::new(Arc::new(vec![Vec::new(); partitions])),
            streams: parking_lot::Mutex::new(Vec::new()),
            remote: parking_lot::Mutex::new(None),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Replace the slot's content with `batches`, spread round-robin over the
    /// partitions. A large batch is cut into zero-copy slices first, so that one big
    /// batch still keeps every partition (and core) busy.
    pub fn fill(&self, batches: Vec<RecordBatch>) {
        let mut parts = vec![Vec::new(); self.partitions];
        let mut next = 0;
        for b in batches {
            let rows = b.num_rows();
            if rows == 0 {
                continue;
            }
            let pieces = if rows >= 2 * MIN_SLICE_ROWS {
                self.partitions.min(rows / MIN_SLICE_ROWS)
            } else {
                1
            };
            let per_piece = rows.div_ceil(pieces);
            let mut offset = 0;
            while offset < rows {
                let len = per_piece.min(rows - offset);
                push_chunks(&mut parts[next % self.partitions], b.slice(offset, len));
                next += 1;
                offset += len;
            }
        }
        *self.data.write() = Arc::new(parts);
        *self.remote.lock() = None;
    }

    /// The batch is `scan`, read by a cluster's executors when a plan scans it; the
    /// slot holds no rows.
    pub fn fill_remote(
        &self,
        scan: crate::cluster::scan::ClusterScan,
        range: crate::source::SourceRange,
    ) {
        *self.data.write() = Arc::new(vec![Vec::new(); self.partitions]);
        *self.remote.lock() = Some(Remote {
            scan: Arc::new(scan),
            range,
        });
    }

    /// What the executors read for this batch, when they do.
    pub fn remote(&self) -> Option<Remote> {
        self.remote.lock().clone()
    }

    /// Replace the slot's content with data already split by partition (e.g. one
    /// Kafka partition per slot partition). Extra partitions wrap around.
    pub fn fill_partitioned(&self, partitioned: Vec<Vec<RecordBatch>>) {
        let mut parts = vec![Vec::new(); self.partitions];
        for (i, p) in partitioned.into_iter().enumerate() {
            for b in p {
                push_chunks(&mut parts[i % self.partitions], b);
            }
        }
        *self.data.write() = Arc::new(parts);
        *self.remote.lock() = None;
    }

    /// Empty the slot, so a batch that is not due reads nothing.
    pub fn clear(&self) {
        *self.data.write() = Arc::new(vec![Vec::new(); self.partitions]);
        *self.remote.lock() = None;
    }

    /// The slot's content as it is, partitions and all, to put back with [`Self::put`].
    pub fn saved(&self) -> Arc<Vec<Vec<RecordBatch>>> {
        Arc::clone(&self.data.read())
    }

    /// Puts back what [`Self::saved`] returned.
    pub fn put(&self, saved: Arc<Vec<Vec<RecordBatch>>>) {
        *self.data.write() = saved;
        *self.remote.lock() = None;
    }

    /// All batches currently in the slot.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.data.read().iter().flatten().cloned().collect()
    }

    /// A table provider that scans this slot.
    pub fn table(self: &Arc<Self>) -> Result<Arc<dyn TableProvider>> {
        let parts: Vec<Arc<dyn PartitionStream>> = (0..self.partitions)
            .map(|index| {
                Arc::new(SlotPartition {
                    slot: Arc::clone(self),
                    index,
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        self.streams.lock().extend(parts.iter().map(stream_address));
        Ok(Arc::new(StreamingTable::try_new(
            Arc::clone(&self.schema),
            parts,
        )?))
    }
}

fn stream_address(p: &Arc<dyn PartitionStream>) -> usize {
    Arc::as_ptr(p) as *const () as usize
}

impl BatchSlot {
    /// Whether `scan` reads this slot (a plan built over [`Self::table`]).
    pub(crate) fn scanned_by(&self, scan: &StreamingTableExec) -> bool {
        let streams = self.streams.lock();
        scan.partitions()
            .first()
            .is_some_and(|p| streams.contains(&stream_address(p)))
    }

    /// `scan` with the slot's current rows in it, as a plan that carries them: what a
    /// batch's plan sends to a cluster in place of the scan.
    pub(crate) fn rows_for(&self, scan: &StreamingTableExec) -> Result<Arc<dyn ExecutionPlan>> {
        let projection = scan.projection().as_ref().map(|p| p.to_vec());
        if let Some(remote) = self.remote() {
            let plan = crate::cluster::scan::plan(&remote.scan, &self.schema, projection)?;
            return Ok(match scan.limit() {
                Some(n) => Arc::new(datafusion::physical_plan::limit::LocalLimitExec::new(
                    plan, n,
                )),
                None => plan,
            });
        }
        let data = self.saved();
        let config = datafusion::datasource::memory::MemorySourceConfig::try_new(
            &data,
            Arc::clone(&self.schema),
            projection,
        )?
        .with_limit(scan.limit());
        Ok(datafusion::datasource::source::DataSourceExec::from_data_source(config))
    }

    /// The columns of this slot that `plans` read: the union of the projections of
    /// their scans of it (every column when a scan has no projection), ascending.
    pub(crate) fn columns_read(&self, plans: &[&Arc<dyn ExecutionPlan>]) -> Result<Vec<usize>> {
        let width = self.schema.fields().len();
        let mut read = vec![false; width];
        for plan in plans {
            plan.apply(|node| {
                if let Some(scan) = node.downcast_ref::<StreamingTableExec>()
                    && Arc::ptr_eq(scan.partition_schema(), &self.schema)
                {
                    match scan.projection() {
                        Some(p) => p.iter().for_each(|i| read[*i] = true),
                        None => read.iter_mut().for_each(|r| *r = true),
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok((0..width).filter(|i| read[*i]).collect())
    }
}

/// Rows per batch a scan of a slot yields at most: DataFusion's default `batch_size`.
/// A source's batch of 100,000 rows becomes zero-copy slices of this size, so every
/// kernel downstream allocates batch-sized buffers that the allocator reuses from one
/// batch to the next (whole-file buffers are fresh, zeroed pages each time: 30 % of
/// the word count's time was the kernel clearing them).
pub const MAX_SCAN_ROWS: usize = 8192;

fn push_chunks(part: &mut Vec<RecordBatch>, b: RecordBatch) {
    part.extend(slices(&b, MAX_SCAN_ROWS));
}

/// `b` as zero-copy slices of at most `max_rows` rows (itself when it is no longer).
pub(crate) fn slices(b: &RecordBatch, max_rows: usize) -> impl Iterator<Item = RecordBatch> + '_ {
    let (rows, max) = (b.num_rows(), max_rows.max(1));
    (0..rows).step_by(max).map(move |offset| {
        if rows <= max {
            b.clone()
        } else {
            b.slice(offset, max.min(rows - offset))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn large_batches_are_sliced_across_partitions() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let slot = BatchSlot::new(schema.clone(), 2);
        let big = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..10_000))],
        )
        .unwrap();
        let small =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..10))])
                .unwrap();
        slot.fill(vec![big, small]);
        let data = slot.data.read().clone();
        let rows: Vec<usize> = data
            .iter()
            .map(|p| p.iter().map(|b| b.num_rows()).sum())
            .collect();
        assert_eq!(rows, vec![5010, 5000]);
        let all: i64 = slot
            .batches()
            .iter()
            .map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .iter()
                    .flatten()
                    .sum::<i64>()
            })
            .sum();
        assert_eq!(all, (0..10_000).sum::<i64>() + (0..10).sum::<i64>());
    }

    #[test]
    fn a_scan_yields_batches_of_at_most_max_scan_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let big = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..20_000))],
        )
        .unwrap();
        let slot = BatchSlot::new(schema.clone(), 1);
        slot.fill(vec![big.clone()]);
        let sizes: Vec<usize> = slot.batches().iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, vec![8192, 8192, 3616]);
        slot.fill_partitioned(vec![vec![big]]);
        let sizes: Vec<usize> = slot.batches().iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, vec![8192, 8192, 3616]);
        assert_eq!(
            slot.batches()[1]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0),
            8192
        );
    }
}

#[derive(Debug)]
struct SlotPartition {
    slot: Arc<BatchSlot>,
    index: usize,
}

impl PartitionStream for SlotPartition {
    fn schema(&self) -> &SchemaRef {
        &self.slot.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let data = Arc::clone(&self.slot.data.read());
        let batches = data[self.index].clone();
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.slot.schema),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }
}
