//! Sources read by the executors: a batch's scan travels as what to read, not as rows.
//!
//! A source that executors can read themselves describes its batch as a
//! [`ClusterScan`]: a kind (`"rate"`, `"nexmark"`, `"files"`) and one JSON part per
//! partition (an event-number range, a list of files). The driver puts it in the
//! source's slot instead of reading the batch, and a plan shipped to the cluster scans
//! it as
//!
//! ```text
//!   ReadScanExec (kind, the source's schema, the scan's projection)
//!     DataSourceExec (MemorySourceConfig: partition p holds part p, one row of JSON)
//! ```
//!
//! Ballista gives each task the partitions it runs (it slices an in-memory source), and
//! the task's `ReadScanExec` reads its parts with the reader registered for the kind
//! ([`register`]) — by the connectors, in every `flumen` process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use parking_lot::RwLock;

use crate::Result;

/// What a batch of a source is, for executors to read: one part per partition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterScan {
    pub kind: String,
    pub parts: Vec<serde_json::Value>,
    /// The rows the parts hold, when known without reading them (the batch's metrics).
    pub rows: Option<u64>,
    /// The stream it is a batch of (set by the driver): the tasks count the rows they
    /// read under this name ([`rows_read_metric`]), which the scheduler reports back.
    pub stream: String,
}

/// The name of the count a scan's tasks keep of the rows they read of `stream`: a
/// metric of their task, which Ballista sends to the scheduler with the task's status
/// and `report.rs` sums per job.
pub fn rows_read_metric(stream: &str) -> String {
    format!("{ROWS_READ_PREFIX}{stream}")
}

/// What every [`rows_read_metric`] name begins with.
pub const ROWS_READ_PREFIX: &str = "flumen_rows_read:";

/// Reads one part of a kind of scan as rows of `schema` (the source's).
pub type ScanReader =
    Arc<dyn Fn(&serde_json::Value, &SchemaRef) -> Result<Vec<RecordBatch>> + Send + Sync>;

static READERS: LazyLock<RwLock<HashMap<String, ScanReader>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// Makes this process able to read scans of `kind`.
pub fn register(kind: &str, reader: ScanReader) {
    READERS.write().insert(kind.to_string(), reader);
}

fn reader(kind: &str) -> DfResult<ScanReader> {
    READERS.read().get(kind).cloned().ok_or_else(|| {
        DataFusionError::Execution(format!(
            "this process cannot read '{kind}' scans: start executors with `flumen executor`"
        ))
    })
}

/// The schema of the descriptors' table: one JSON part per row.
fn parts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("part", DataType::Utf8, false)]))
}

/// The plan that reads `scan` (of a source whose rows have `schema`) on the
/// executors, with `projection` of its columns.
pub fn plan(
    scan: &ClusterScan,
    schema: &SchemaRef,
    projection: Option<Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let descriptors = scan
        .parts
        .iter()
        .map(|part| {
            Ok(vec![RecordBatch::try_new(
                parts_schema(),
                vec![Arc::new(StringArray::from(vec![part.to_string()]))],
            )?])
        })
        .collect::<Result<Vec<_>>>()?;
    let descriptors = DataSourceExec::from_data_source(MemorySourceConfig::try_new(
        &descriptors,
        parts_schema(),
        None,
    )?);
    Ok(Arc::new(ReadScanExec::try_new(
        descriptors,
        scan.kind.clone(),
        scan.stream.clone(),
        Arc::clone(schema),
        projection,
    )?))
}

/// Reads the parts its input's rows describe (see the module).
pub struct ReadScanExec {
    input: Arc<dyn ExecutionPlan>,
    kind: String,
    /// The stream whose batch it reads (the rows it read are counted under its name).
    stream: String,
    /// The source's rows.
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    projected: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for ReadScanExec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ReadScanExec({})", self.kind)
    }
}

impl ReadScanExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        kind: String,
        stream: String,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Self> {
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => Arc::clone(&schema),
        };
        let properties = Arc::new(PlanProperties::new(
            datafusion::physical_expr::EquivalenceProperties::new(Arc::clone(&projected)),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        Ok(Self {
            input,
            kind,
            stream,
            schema,
            projection,
            projected,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn source_schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }
}

impl DisplayAs for ReadScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ReadScanExec: {}", self.kind)?;
        if let Some(p) = &self.projection {
            write!(f, ", projection={p:?}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ReadScanExec {
    fn name(&self) -> &str {
        "ReadScanExec"
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

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("ReadScanExec has one input, given {}", children.len());
        }
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.kind.clone(),
            self.stream.clone(),
            Arc::clone(&self.schema),
            self.projection.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let read = reader(&self.kind)?;
        let input = self.input.execute(partition, context)?;
        let schema = Arc::clone(&self.schema);
        let projection = self.projection.clone();
        let kind = self.kind.clone();
        let rows_read =
            MetricBuilder::new(&self.metrics).counter(rows_read_metric(&self.stream), partition);
        Ok(super::blocking_task(
            input,
            Arc::clone(&self.projected),
            "a scan's task",
            move |descriptors| {
                let mut out = Vec::new();
                for d in &descriptors {
                    for text in d.column(0).as_string::<i32>().iter().flatten() {
                        let part: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                            DataFusionError::Internal(format!("a '{kind}' scan's part: {e}"))
                        })?;
                        let batches = read(&part, &schema)
                            .map_err(|e| DataFusionError::External(Box::new(e)))?;
                        for b in batches {
                            rows_read.add(b.num_rows());
                            out.push(match &projection {
                                Some(p) => b.project(p)?,
                                None => b,
                            });
                        }
                    }
                }
                Ok(out)
            },
        ))
    }
}
