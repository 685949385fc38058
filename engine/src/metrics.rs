//! [`QueryMetrics`]: a listener that keeps a query's running totals — the counters
//! and histograms `/metrics` serves in Prometheus' text format — next to the recent
//! batches the context already keeps.
//!
//! ```text
//!  on_batch_completed ─▶ counters   batches, rows in (per source), rows out, late,
//!                                   rejected, sink retries
//!                       ─▶ histograms scheduling delay, processing time, total delay
//!                       ─▶ gauges     state rows/bytes, watermark, lag per source
//!  on_restarted       ─▶ restarts, the error's kind counted
//!  on_terminated      ─▶ the error's kind (source, sink, plan, ...), counted
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::Error;
use crate::listener::{BatchInfo, StreamingListener};

/// Upper bounds (seconds) of the duration histograms' buckets; `+Inf` follows.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram of durations, in Prometheus' shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at most each of [`DURATION_BUCKETS`] (cumulative).
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (bound, n) in DURATION_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if s <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }
}

/// A query's totals since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub batches: u64,
    /// Rows read, per source.
    pub input_rows: BTreeMap<String, u64>,
    pub output_rows: u64,
    pub late_rows: u64,
    pub rejected_rows: u64,
    /// Errors by kind: `rejected_record`, `sink_retry`, and the kind of the error that
    /// stopped the query ([`Error::kind`]).
    pub errors: BTreeMap<String, u64>,
    pub scheduling_delay: Histogram,
    pub processing_time: Histogram,
    pub total_delay: Histogram,
    /// The newest batch's gauges.
    pub state_rows: u64,
    pub state_bytes: u64,
    pub watermark_ms: Option<i64>,
    pub lag: BTreeMap<String, u64>,
    /// Restarts after a failure (the restart policy), and the error of the latest.
    pub restarts: u64,
    pub last_restart_error: Option<String>,
}

/// Keeps a [`MetricsSnapshot`] up to date; add it with
/// [`crate::StreamingContext::add_listener`].
#[derive(Debug, Default)]
pub struct QueryMetrics {
    inner: Mutex<MetricsSnapshot>,
}

impl QueryMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.inner.lock().clone()
    }
}

impl StreamingListener for QueryMetrics {
    fn on_batch_completed(&self, info: &BatchInfo) {
        let mut m = self.inner.lock();
        m.batches += 1;
        for (source, rows) in &info.input_rows {
            *m.input_rows.entry(source.clone()).or_default() += rows;
        }
        m.output_rows += info.output_rows;
        m.late_rows += info.late_rows;
        m.rejected_rows += info.rejected_rows;
        if info.rejected_rows > 0 {
            *m.errors.entry("rejected_record".into()).or_default() += info.rejected_rows;
        }
        if info.sink_retries > 0 {
            *m.errors.entry("sink_retry".into()).or_default() += info.sink_retries;
        }
        m.scheduling_delay.observe(info.scheduling_delay);
        m.processing_time.observe(info.processing_time);
        m.total_delay.observe(info.total_delay);
        m.state_rows = info.state_rows;
        m.state_bytes = info.state_bytes;
        m.watermark_ms = info.watermark.map(|w| w.as_millis());
        for (source, lag) in &info.source_lag {
            m.lag.insert(source.clone(), *lag);
        }
    }

    fn on_restarted(&self, _attempt: u32, error: &Error) {
        let mut m = self.inner.lock();
        m.restarts += 1;
        m.last_restart_error = Some(error.to_string());
        *m.errors.entry(error.kind().to_string()).or_default() += 1;
    }

    fn on_terminated(&self, error: Option<&Error>) {
        if let Some(e) = error {
            *self
                .inner
                .lock()
                .errors
                .entry(e.kind().to_string())
                .or_default() += 1;
        }
    }
}

/// One sample line: `name{labels} value`, label values escaped as the text format asks.
pub fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(out, "{k}=\"{v}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A histogram's `_bucket`, `_sum` and `_count` lines.
pub fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &Histogram) {
    let bucket = format!("{name}_bucket");
    for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
        let le = bound.to_string();
        let mut l = labels.to_vec();
        l.push(("le", &le));
        sample(out, &bucket, &l, n);
    }
    let mut l = labels.to_vec();
    l.push(("le", "+Inf"));
    sample(out, &bucket, &l, h.count);
    sample(out, &format!("{name}_sum"), labels, h.sum);
    sample(out, &format!("{name}_count"), labels, h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(7));
        h.observe(Duration::from_millis(300));
        assert_eq!(h.buckets[0], 0); // ≤ 5 ms
        assert_eq!(h.buckets[1], 1); // ≤ 10 ms
        assert_eq!(h.buckets[6], 2); // ≤ 500 ms
        assert_eq!(h.count, 2);
        let mut out = String::new();
        histogram(&mut out, "d", &[("query", "a\"b")], &h);
        assert!(
            out.contains("d_bucket{query=\"a\\\"b\",le=\"0.01\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("d_bucket{query=\"a\\\"b\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("d_count{query=\"a\\\"b\"} 2\n"), "{out}");
    }
}
