//! `_batch_time`: every stream's rows carry the time of the batch they arrive in. The
//! cell and the `flumen_batch_time()` function that reads it are the engine's
//! (`flumen_engine::batch_time`), which also sends it to a cluster.

pub use flumen_engine::batch_time::{BatchTimeCell, batch_time_udf};

/// The column name.
pub const BATCH_TIME_COLUMN: &str = "_batch_time";
