//! # Flumen
//!
//! A SQL-first micro-batch stream processing engine on Apache Arrow and DataFusion.
//! This facade re-exports the crates of the workspace; most programs need only
//! `use flumen::prelude::*;`.
//!
//! ```text
//!   flumen (facade) ─┬─ flumen-engine      StreamingContext, Stream, Source, Sink, ops
//!                    ├─ flumen-sql         the SQL surface
//!                    └─ flumen-connectors  sources and sinks
//! ```

pub use flumen_connectors as connectors;
pub use flumen_engine as engine;
pub use flumen_sql as sql;

pub use flumen_engine::datafusion;

/// The names most programs use.
pub mod prelude {
    pub use flumen_engine::datafusion::arrow::array::*;
    pub use flumen_engine::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    pub use flumen_engine::datafusion::arrow::record_batch::RecordBatch;
    pub use flumen_engine::datafusion::common::JoinType;
    pub use flumen_engine::datafusion::dataframe::DataFrame;
    pub use flumen_engine::datafusion::prelude::{col, lit};
    pub use flumen_engine::{
        BatchInfo, Clock, Error, KeyedBatch, ManualClock, MemorySink, QueueSource, Result, Sink,
        Source, StateSpec, StateUpdate, Stream, StreamingContext, StreamingContextState,
        StreamingListener, SystemClock, Time, Trigger,
    };
}

/// The README's code, compiled as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
