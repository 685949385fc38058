//! Aggregates whose groups live across batches, kept as DataFusion aggregate *state*:
//! [`RunningAggregate`] (every batch so far), [`WindowAggregate`] (tumbling and
//! hopping event-time windows) and [`SessionAggregate`] (session windows). All three
//! run the same partial aggregate over each batch and merge its rows into the stored
//! groups (`partial.rs`); the windowed two share the watermark (`event_time.rs`).
//!
//! ```text
//!  batch ─▶ AggregateExec(Partial) ─▶ keys + state columns ─┐
//!                                   stored state (keys + state columns) ─┤
//!                         GroupValues::intern + GroupsAccumulator::merge_batch
//!                                     ├─▶ state()    ─▶ new stored state
//!                                     └─▶ evaluate() ─▶ keys + values (output)
//! ```
//!
//! Because only `state`/`merge_batch` are used, every aggregate DataFusion can merge
//! (count, sum, avg, min, max, stddev, count(distinct), approx_distinct, user-defined
//! ones) runs incrementally with no special case.

mod event_time;
mod partial;
mod running;
mod session;
mod window;

pub use event_time::{EventTimeWindow, window_struct_type};
pub use running::RunningAggregate;
pub use session::SessionAggregate;
pub use window::WindowAggregate;

/// The name checkpoints fingerprint all three under: one operator ran them before
/// they were split, and a checkpoint written then still resumes.
const FINGERPRINT_NAME: &str = "RunningAggregateExec";
