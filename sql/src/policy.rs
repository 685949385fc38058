//! A stream's own policies — where its late rows and bad records go, how many records
//! a batch takes — resolved once, at `CREATE STREAM`, from its `WITH` options. Queries
//! read the typed [`StreamPolicy`], never the option strings again.

use flumen_engine::registry::{ConnectorOptions, bool_option, positive_option};
use flumen_engine::{Result, plan_err};

use crate::statement::{Options, Watermark};

/// Options of a stream that Flumen handles itself, not its connector.
pub const STREAM_OPTIONS: [&str; 4] = [
    "late_rows",
    "dead_letter",
    "max_records_per_batch",
    "backpressure",
];

/// What happens to a row older than its stream's watermark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LateRows {
    /// Counted and dropped (the default).
    #[default]
    Drop,
    /// Counted and written to `sink`; `own` when it is the `<stream>_late` memory sink
    /// the stream creates, rather than a sink the user named.
    DeadLetter { sink: String, own: bool },
}

/// Flumen's options of one stream, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPolicy {
    pub late_rows: LateRows,
    /// With `on_error = 'dead_letter'`: the sink its undecodable records go to
    /// (`<stream>_errors`, also readable as a stream).
    pub errors: Option<String>,
    /// `max_records_per_batch`: the most records one batch takes.
    pub max_records_per_batch: Option<u64>,
    /// `backpressure`: the batch size follows the processing rate.
    pub backpressure: bool,
}

impl StreamPolicy {
    /// The policy of source stream `stream`, from its `options`; an error names the
    /// option at fault.
    pub fn resolve(
        stream: &str,
        watermark: Option<&Watermark>,
        options: &Options,
    ) -> Result<StreamPolicy> {
        let late_rows = late_rows(stream, watermark, options)?;
        let errors = options
            .get("on_error")
            .is_some_and(|p| p.eq_ignore_ascii_case("dead_letter"))
            .then(|| errors_sink(stream));
        let what = format!("stream {stream}");
        let opts = connector_options(options);
        Ok(StreamPolicy {
            late_rows,
            errors,
            max_records_per_batch: positive_option(&what, &opts, "max_records_per_batch")?,
            backpressure: bool_option(&what, &opts, "backpressure", false)?,
        })
    }

    /// Whether a batch's size is capped (the connector must support it).
    pub fn caps_records(&self) -> bool {
        self.max_records_per_batch.is_some() || self.backpressure
    }
}

fn late_rows(stream: &str, watermark: Option<&Watermark>, options: &Options) -> Result<LateRows> {
    let policy = options
        .get("late_rows")
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_else(|| "drop".into());
    match policy.as_str() {
        "drop" => {
            if options.contains_key("dead_letter") {
                return plan_err!(
                    "CREATE STREAM {stream}: dead_letter names where late rows go; it needs late_rows = 'dead_letter'"
                );
            }
            return Ok(LateRows::Drop);
        }
        "dead_letter" => {}
        other => {
            return plan_err!(
                "CREATE STREAM {stream}: late_rows = '{other}' is not accepted; use 'drop' (count them) or 'dead_letter' (count them and write them to a sink)"
            );
        }
    }
    if watermark.is_none() {
        return plan_err!(
            "CREATE STREAM {stream}: late_rows = 'dead_letter' needs a watermark (WATERMARK FOR ts AS ts - INTERVAL '<n>' SECOND): rows are late only against one"
        );
    }
    Ok(match options.get("dead_letter") {
        Some(sink) => LateRows::DeadLetter {
            sink: sink.clone(),
            own: false,
        },
        None => LateRows::DeadLetter {
            sink: late_sink(stream),
            own: true,
        },
    })
}

/// The memory sink a stream's late rows go to when its `dead_letter` names none.
pub fn late_sink(stream: &str) -> String {
    format!("{stream}_late")
}

/// The memory sink (and stream) of a stream's undecodable records.
pub fn errors_sink(stream: &str) -> String {
    format!("{stream}_errors")
}

/// The stream `name` holds the bad records of, if it is an `<stream>_errors` name.
pub fn errors_of(name: &str) -> Option<&str> {
    name.strip_suffix("_errors")
}

/// A source stream's options minus Flumen's own: what its connector is given.
pub fn source_options(options: &Options) -> ConnectorOptions {
    options
        .iter()
        .filter(|(k, _)| !STREAM_OPTIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Every option, for a connector.
pub fn connector_options(options: &Options) -> ConnectorOptions {
    options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Options {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn watermark() -> Watermark {
        Watermark {
            column: "ts".into(),
            delay: Duration::from_secs(5),
        }
    }

    #[test]
    fn defaults_drop_late_rows_and_fail_on_bad_records() {
        let p = StreamPolicy::resolve("s", None, &opts(&[("connector", "rate")])).unwrap();
        assert_eq!(p, StreamPolicy::default());
        assert!(!p.caps_records());
    }

    #[test]
    fn dead_letters_are_named_once() {
        let w = watermark();
        let p = StreamPolicy::resolve(
            "clicks",
            Some(&w),
            &opts(&[("late_rows", "DEAD_LETTER"), ("on_error", "dead_letter")]),
        )
        .unwrap();
        assert_eq!(
            p.late_rows,
            LateRows::DeadLetter {
                sink: "clicks_late".into(),
                own: true
            }
        );
        assert_eq!(p.errors.as_deref(), Some("clicks_errors"));
        assert_eq!(errors_of("clicks_errors"), Some("clicks"));

        let named = StreamPolicy::resolve(
            "clicks",
            Some(&w),
            &opts(&[("late_rows", "dead_letter"), ("dead_letter", "archive")]),
        )
        .unwrap();
        assert_eq!(
            named.late_rows,
            LateRows::DeadLetter {
                sink: "archive".into(),
                own: false
            }
        );
    }

    #[test]
    fn wrong_options_name_the_stream_and_option() {
        let err = |o: &[(&str, &str)], w: Option<&Watermark>| {
            StreamPolicy::resolve("s", w, &opts(o))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[("late_rows", "keep")], None),
            "CREATE STREAM s: late_rows = 'keep' is not accepted; use 'drop' (count them) or 'dead_letter' (count them and write them to a sink)"
        );
        assert_eq!(
            err(&[("dead_letter", "x")], None),
            "CREATE STREAM s: dead_letter names where late rows go; it needs late_rows = 'dead_letter'"
        );
        assert!(
            err(&[("late_rows", "dead_letter")], None).contains("needs a watermark"),
            "a dead letter for late rows needs a watermark"
        );
        assert_eq!(
            err(&[("max_records_per_batch", "0")], None),
            "stream s option max_records_per_batch must be a positive whole number, got '0'"
        );
        assert_eq!(
            err(&[("backpressure", "yes")], Some(&watermark())),
            "stream s option backpressure must be 'true' or 'false', got 'yes'"
        );
    }

    #[test]
    fn connectors_see_only_their_options() {
        let o = opts(&[
            ("connector", "kafka"),
            ("topic", "t"),
            ("max_records_per_batch", "10"),
            ("late_rows", "drop"),
        ]);
        let mut keys: Vec<String> = source_options(&o).into_keys().collect();
        keys.sort();
        assert_eq!(keys, ["connector", "topic"]);
    }
}
