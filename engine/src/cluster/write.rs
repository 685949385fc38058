//! Sinks written by the tasks: Spark's file-commit protocol on Ballista.
//!
//! A sink that executors can write themselves ([`crate::Sink::write_on_cluster`]: the
//! `files` sink) gets its output plan wrapped as
//!
//! ```text
//!   WriteExec (kind, the sink's spec, batch time)   task p writes partition p's rows
//!     the output's plan                              (`part-<batch ms>-<p>`), returns
//!                                                    the files and their rows
//! ```
//!
//! The driver collects the files every task wrote and only then commits the batch
//! (the files sink's `_flumen_log` entry lists them): a task run twice (a retry, a
//! replayed batch) rewrites the same names, and a file no successful attempt returned
//! is in no log entry. Writers are registered by kind ([`register`]) in every
//! `flumen` process, as scan readers are.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use parking_lot::RwLock;

use crate::Result;

/// How a sink's output is written by the tasks: the kind of writer and what it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterWrite {
    pub kind: String,
    pub spec: serde_json::Value,
}

/// Writes one partition's rows of one batch; returns the files written (as the sink
/// lists them in its commit).
pub type PartWriter = Arc<
    dyn Fn(&serde_json::Value, i64, usize, Vec<RecordBatch>) -> Result<Vec<String>> + Send + Sync,
>;

static WRITERS: LazyLock<RwLock<HashMap<String, PartWriter>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// Makes this process able to write sinks of `kind`.
pub fn register(kind: &str, writer: PartWriter) {
    WRITERS.write().insert(kind.to_string(), writer);
}

fn writer(kind: &str) -> DfResult<PartWriter> {
    WRITERS.read().get(kind).cloned().ok_or_else(|| {
        DataFusionError::Execution(format!(
            "this process cannot write '{kind}' sinks: start executors with `flumen executor`"
        ))
    })
}

/// What a [`WriteExec`] returns: a row per file written.
pub fn written_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

/// The files and rows in a [`WriteExec`]'s result.
pub fn written(batches: &[RecordBatch]) -> (Vec<String>, u64) {
    let mut files = Vec::new();
    let mut rows = 0;
    for b in batches {
        files.extend(
            b.column(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(String::from),
        );
        rows += b
            .column(1)
            .as_primitive::<UInt64Type>()
            .iter()
            .flatten()
            .sum::<u64>();
    }
    (files, rows)
}

/// Writes its input's partitions with a registered writer (see the module).
pub struct WriteExec {
    input: Arc<dyn ExecutionPlan>,
    write: Arc<ClusterWrite>,
    batch_ms: i64,
    properties: Arc<PlanProperties>,
    /// The global partition of each of the input's partitions (a task's restricted
    /// plan), set on the executor.
    global: Option<Arc<Vec<usize>>>,
}

impl fmt::Debug for WriteExec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WriteExec({})", self.write.kind)
    }
}

impl WriteExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        write: Arc<ClusterWrite>,
        batch_ms: i64,
    ) -> DfResult<Self> {
        let properties = Arc::new(PlanProperties::new(
            datafusion::physical_expr::EquivalenceProperties::new(written_schema()),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        Ok(Self {
            input,
            write,
            batch_ms,
            properties,
            global: None,
        })
    }

    pub fn write(&self) -> &ClusterWrite {
        &self.write
    }

    pub fn batch_ms(&self) -> i64 {
        self.batch_ms
    }

    /// The same node, its input's partition `i` being global partition `global[i]`.
    pub fn with_partitions(&self, global: Vec<usize>) -> DfResult<Self> {
        let local = self.input.output_partitioning().partition_count();
        if global.len() != local {
            return internal_err!(
                "WriteExec over {local} partitions given global partitions {global:?}"
            );
        }
        let mut node = Self::try_new(
            Arc::clone(&self.input),
            Arc::clone(&self.write),
            self.batch_ms,
        )?;
        node.global = Some(Arc::new(global));
        Ok(node)
    }
}

impl DisplayAs for WriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "WriteExec: {} at {} ms", self.write.kind, self.batch_ms)
    }
}

impl ExecutionPlan for WriteExec {
    fn name(&self) -> &str {
        "WriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("WriteExec has one input, given {}", children.len());
        }
        let mut node = Self::try_new(
            children.swap_remove(0),
            Arc::clone(&self.write),
            self.batch_ms,
        )?;
        node.global = self.global.clone();
        Ok(Arc::new(node))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let write = writer(&self.write.kind)?;
        let global = self.global.as_ref().map_or(partition, |g| g[partition]);
        let input = self.input.execute(partition, context)?;
        let spec = Arc::clone(&self.write);
        let batch_ms = self.batch_ms;
        Ok(super::blocking_task(
            input,
            written_schema(),
            "a sink's task",
            move |batches| {
                let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
                let files = write(&spec.spec, batch_ms, global, batches)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                // The rows go with the first file (a partition split by value writes several).
                let counts: Vec<u64> = (0..files.len())
                    .map(|i| if i == 0 { rows } else { 0 })
                    .collect();
                Ok(vec![RecordBatch::try_new(
                    written_schema(),
                    vec![
                        Arc::new(StringArray::from(files)),
                        Arc::new(UInt64Array::from(counts)),
                    ],
                )?])
            },
        ))
    }
}
