//! # flumen-engine
//!
//! The streaming engine of Flumen: a stream is a sequence of micro-batches, one per
//! batch interval, each a set of Arrow `RecordBatch`es run through DataFusion plans
//! that are built once and executed again for every batch.
//!
//! Entry point: [`StreamingContext`], which creates [`Stream`]s from [`Source`]s; a
//! `Stream` offers the DStream operations and outputs (`print`, `foreach_batch`,
//! `write_to` a [`Sink`]).
//!
//! ```text
//!            ┌──────────── StreamingContext (Clock, batch interval) ────────────┐
//!            │  scheduler: at each batch time T, for batch n                      │
//!  Source ──▶│ 1 plan_batch ─▶ 2 read_batch ─▶ BatchSlot ─▶ DataFusion plan      │
//!            │                                   │  (planned once, re-executed)   │
//!            │                     stateful operator (window, running aggregate,  │
//!            │                     map_with_state) ─▶ its own BatchSlot ─▶ plans  │
//!            │                                   ▼                                │
//!            │                    outputs: print / foreach_batch / 4 Sink::write  │
//!            │                    5 commit ─▶ BatchInfo ─▶ StreamingListeners     │
//!            └────────────────────────────────────────────────────────────────────┘
//! ```

pub mod batch_time;
pub mod checkpoint;
pub mod clock;
pub mod cluster;
pub mod context;
pub mod durable;
pub mod error;
pub mod exact;
mod graph;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod print;
pub mod rate;
pub mod registry;
mod scheduler;
pub mod sink;
pub mod slot;
pub mod source;
pub mod sources;
pub mod split;
pub mod state;
pub mod store;
pub mod stream;
pub mod time;

pub use clock::{Clock, ManualClock, SystemClock};
pub use context::{
    RestartPolicy, SourceOptions, StreamingContext, StreamingContextBuilder, StreamingContextState,
    Trigger,
};
pub use error::{Error, Result};
pub use graph::ForeachBatchFn;
pub use listener::{BatchInfo, ClusterInfo, OperatorStateInfo, ProgressLog, StreamingListener};
pub use metrics::QueryMetrics;
pub use ops::{KeyedBatch, StateSpec, StateUpdate};
pub use rate::{PidRateEstimator, RateLimit};
pub use registry::ConnectorRegistry;
pub use sink::{ConsoleSink, MemorySink, Sink, WriteKey};
pub use source::{BatchContext, Rejected, Source, SourceRange};
pub use sources::QueueSource;
pub use stream::Stream;
pub use time::Time;

/// Re-exported so users need one copy of DataFusion and Arrow.
pub use datafusion;
