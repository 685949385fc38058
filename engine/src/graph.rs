//! The stream graph built by the `Stream` API before `start()`: sources, stateful
//! operators and outputs, in creation order (which is a topological order, since a
//! node can only be built from nodes that exist).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::dataframe::DataFrame;
use futures::future::BoxFuture;

use crate::Result;
use crate::ops::StreamOperator;
use crate::sink::Sink;
use crate::slot::BatchSlot;
use crate::source::Source;
use crate::time::Time;

/// `foreach_batch`'s callback.
pub type ForeachBatchFn = dyn Fn(Time, DataFrame) -> BoxFuture<'static, Result<()>> + Send + Sync;

pub(crate) struct SourceNode {
    pub source: Arc<dyn Source>,
    pub slot: Arc<BatchSlot>,
    /// Where the source's rejected records go (`on_error = 'dead_letter'`).
    pub errors: Option<Arc<dyn Sink>>,
    /// The source's rejected records as a stream (`<stream>_errors` read by a query),
    /// filled every batch (empty when there were none).
    pub errors_slot: Option<Arc<BatchSlot>>,
    /// `max_records_per_batch` and back pressure.
    pub limit: crate::rate::RateLimit,
    /// The columns the query reads, when some go unread (set once the plans are
    /// built; given to the source when it opens).
    pub projection: Option<Vec<usize>>,
}

pub(crate) struct OperatorNode {
    pub input: DataFrame,
    /// The input is due at batch times that are multiples of this.
    pub input_slide: Duration,
    pub op: Box<dyn StreamOperator>,
    pub slot: Arc<BatchSlot>,
}

pub(crate) enum OutputKind {
    Print(usize),
    ForeachBatch(Arc<ForeachBatchFn>),
    Sink(Arc<dyn Sink>),
}

impl fmt::Debug for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputKind::Print(n) => write!(f, "print({n})"),
            OutputKind::ForeachBatch(_) => write!(f, "foreach_batch"),
            OutputKind::Sink(s) => write!(f, "write_to({})", s.name()),
        }
    }
}

pub(crate) struct OutputNode {
    pub df: DataFrame,
    pub slide: Duration,
    pub kind: OutputKind,
}

#[derive(Default)]
pub(crate) struct Graph {
    pub sources: Vec<SourceNode>,
    pub operators: Vec<OperatorNode>,
    pub outputs: Vec<OutputNode>,
}
