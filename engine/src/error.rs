//! The engine's error type: who must act, and whether a retry can help.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the engine reports.
///
/// Variants say who must act: the user (`Plan`, `Schema`, `Lifecycle`), an external
/// system (`Source`, `Sink`, `Io`) or the engine itself (`Internal`). The scheduler asks
/// [`Error::is_retryable`] whether retrying the batch can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The query or its definition is wrong; the user must change it.
    #[error("{0}")]
    Plan(String),
    /// The context was used in a way its lifecycle does not allow.
    #[error("{0}")]
    Lifecycle(String),
    /// Data does not match the schema a source declared.
    #[error("source '{source_name}': {message}")]
    Schema {
        source_name: String,
        message: String,
    },
    /// A source failed to plan or read a batch.
    #[error("source '{source_name}': {message}")]
    Source {
        source_name: String,
        message: String,
        retryable: bool,
    },
    /// A sink failed to write or commit a batch.
    #[error("sink '{sink_name}': {message}")]
    Sink {
        sink_name: String,
        message: String,
        retryable: bool,
    },
    /// The cluster a query runs on (its scheduler or an executor) failed or cannot be
    /// reached.
    #[error("cluster {url}: {message}")]
    Cluster {
        url: String,
        message: String,
        retryable: bool,
    },
    /// A user callback (`foreach_batch`, `map_with_state`, ...) returned an error.
    #[error("{context}: {message}")]
    User { context: String, message: String },
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A batch failed; `source` says why.
    #[error("batch {batch_time} failed: {source}")]
    Batch {
        batch_time: crate::time::Time,
        source: Box<Error>,
    },
    /// The query had stopped with this error.
    #[error("the streaming query failed: {0}")]
    QueryFailed(std::sync::Arc<Error>),
    /// A checkpoint cannot be used: corrupt, or written by another query.
    #[error("{0}")]
    Checkpoint(String),
    /// A bug in Flumen: please report it.
    #[error("internal error (a bug in Flumen): {0}")]
    Internal(String),
    /// `source` with where it happened (`line 3`, `query 2`): its kind and whether a
    /// retry can help stay those of `source` (DataFusion's `Context`).
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
}

impl Error {
    /// The error's kind, as metrics label it: `plan`, `lifecycle`, `schema`, `source`,
    /// `sink`, `cluster`, `user`, `execution` (DataFusion, Arrow), `io`, `checkpoint`, `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Plan(_) => "plan",
            Error::Lifecycle(_) => "lifecycle",
            Error::Schema { .. } => "schema",
            Error::Source { .. } => "source",
            Error::Sink { .. } => "sink",
            Error::Cluster { .. } => "cluster",
            Error::User { .. } => "user",
            Error::DataFusion(_) | Error::Arrow(_) => "execution",
            Error::Io(_) => "io",
            Error::Batch { source, .. } => source.kind(),
            Error::QueryFailed(e) => e.kind(),
            Error::Checkpoint(_) => "checkpoint",
            Error::Internal(_) => "internal",
            Error::Context { source, .. } => source.kind(),
        }
    }

    /// This error with where it happened in front of it (`line 3: ...`), of the same
    /// kind and as retryable as before.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }

    /// Whether running the same batch again may succeed (a server down, a full disk
    /// being cleaned up). Plan, schema and lifecycle errors never are.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Source { retryable, .. }
            | Error::Sink { retryable, .. }
            | Error::Cluster { retryable, .. } => *retryable,
            Error::Io(_) => true,
            Error::Batch { source, .. } | Error::Context { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

/// `Err(Error::Plan(format!(...)))`
#[macro_export]
macro_rules! plan_err {
    ($($arg:tt)*) => {
        Err($crate::error::Error::Plan(format!($($arg)*)))
    };
}

/// `Err(Error::Lifecycle(format!(...)))`
#[macro_export]
macro_rules! lifecycle_err {
    ($($arg:tt)*) => {
        Err($crate::error::Error::Lifecycle(format!($($arg)*)))
    };
}

/// `Err(Error::Internal(format!(...)))`
#[macro_export]
macro_rules! internal_err {
    ($($arg:tt)*) => {
        Err($crate::error::Error::Internal(format!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_retryability_of_what_it_wraps() {
        let outage = Error::Source {
            source_name: "clicks".into(),
            message: "broker 127.0.0.1:9092 unreachable".into(),
            retryable: true,
        };
        let e = outage.context("query 2").context("line 7");
        assert_eq!(
            e.to_string(),
            "line 7: query 2: source 'clicks': broker 127.0.0.1:9092 unreachable"
        );
        assert_eq!(e.kind(), "source");
        assert!(e.is_retryable());

        let wrong = Error::Plan("no column 'x'".into()).context("line 1");
        assert_eq!(wrong.kind(), "plan");
        assert!(!wrong.is_retryable());
    }
}
