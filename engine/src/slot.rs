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
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use parking_lot::RwLock;

use crate::Result;

/// Holds the current batch's data, split into a fixed number of partitions.
#[derive(Debug)]
pub struct BatchSlot {
    schema: SchemaRef,
    partitions: usize,
    data: RwLock<Arc<Vec<Vec<RecordBatch>>>>,
}

impl BatchSlot {
    /// An empty slot of `partitions` partitions (at least one).
    pub fn new(schema: SchemaRef, partitions: usize) -> Arc<Self> {
        let partitions = partitions.max(1);
        Arc::new(Self {
            schema,
            partitions,
            data: RwLock::new(Arc::new(vec![Vec::new(); partitions])),
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Replace the slot's content with `batches`, spread round-robin over the
    /// partitions.
    pub fn fill(&self, batches: Vec<RecordBatch>) {
        let mut parts = vec![Vec::new(); self.partitions];
        for (i, b) in batches.into_iter().enumerate() {
            if b.num_rows() > 0 {
                parts[i % self.partitions].push(b);
            }
        }
        *self.data.write() = Arc::new(parts);
    }

    /// Replace the slot's content with data already split by partition (e.g. one
    /// Kafka partition per slot partition). Extra partitions wrap around.
    pub fn fill_partitioned(&self, partitioned: Vec<Vec<RecordBatch>>) {
        let mut parts = vec![Vec::new(); self.partitions];
        for (i, p) in partitioned.into_iter().enumerate() {
            parts[i % self.partitions].extend(p.into_iter().filter(|b| b.num_rows() > 0));
        }
        *self.data.write() = Arc::new(parts);
    }

    /// Empty the slot, so a batch that is not due reads nothing.
    pub fn clear(&self) {
        *self.data.write() = Arc::new(vec![Vec::new(); self.partitions]);
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
        Ok(Arc::new(StreamingTable::try_new(
            Arc::clone(&self.schema),
            parts,
        )?))
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
