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

pub(crate) mod event_time;
pub mod multiset;
pub(crate) mod on_cluster;
pub(crate) mod partial;
mod running;
pub(crate) mod session;
mod window;

pub use event_time::{EventTimeWindow, WindowDisplay, window_struct_type};
pub use running::RunningAggregate;
pub use session::SessionAggregate;
pub use window::WindowAggregate;

use crate::ops::Emits;
use partial::PartialAggregate;

/// The name checkpoints fingerprint all three under: one operator ran them before
/// they were split, and a checkpoint written then still resumes.
const FINGERPRINT_NAME: &str = "RunningAggregateExec";

/// What an aggregate's state depends on, for the query's fingerprint.
fn fingerprint(agg: &PartialAggregate, window: Option<String>, changed_only: bool) -> String {
    format!(
        "{FINGERPRINT_NAME} {}{}{}",
        agg.describe(),
        window.map(|w| format!(" window {w}")).unwrap_or_default(),
        if changed_only { " changed only" } else { "" }
    )
}

/// What an aggregate's output batches hold: closed windows only (append), the groups
/// a batch changed keyed by the group keys (update), or every group (complete).
fn emits(window: Option<&EventTimeWindow>, changed_only: bool, agg: &PartialAggregate) -> Emits {
    if window.is_some_and(|w| w.emit_closed_only) {
        Emits::Appends
    } else if changed_only {
        Emits::Changes {
            keys: (0..agg.keys()).collect(),
        }
    } else {
        Emits::WholeResult
    }
}

/// The output options the three aggregates share.
macro_rules! output_options {
    ($operator:ty) => {
        impl $operator {
            /// Emit only the groups each batch changed (the `update` output mode); by
            /// default every group is emitted (`complete`).
            pub fn with_changed_only(mut self, changed_only: bool) -> Self {
                self.changed_only = changed_only;
                self
            }

            /// Name the output columns `c0, c1, ...` (see
            /// [`crate::ops::positional_schema`]): a SQL planner maps them back by
            /// position.
            pub fn with_positional_names(mut self) -> Self {
                self.output_schema = crate::ops::positional_schema(&self.output_schema);
                self
            }
        }
    };
}

output_options!(RunningAggregate);
output_options!(WindowAggregate);
output_options!(SessionAggregate);
