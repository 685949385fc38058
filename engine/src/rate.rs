//! Rate control: how many records a source may put into one batch.
//!
//! `max_records_per_batch` is a fixed cap. `backpressure = true` adds Spark's PID rate
//! estimator: after every batch it compares the rate the batch was processed at with
//! the rate records were let in, and the next batch's intake follows.
//!
//! ```text
//!  processing_rate = records / processing_time
//!  error           = last_rate - processing_rate            (proportional, 1.0)
//!  historical      = scheduling_delay * processing_rate / batch_interval  (integral, 0.2)
//!  new_rate        = max(last_rate - error - 0.2 * historical, min_rate)
//!  max_records     = min(max_records_per_batch, new_rate * batch_interval)
//! ```
//!
//! While a batch takes longer than the interval the rate falls towards what the
//! pipeline can process; once batches are quick again the processing rate exceeds the
//! limit and the rate climbs back.

use std::time::Duration;

/// Spark's `PIDRateEstimator`, with its default gains.
#[derive(Debug, Clone)]
pub struct PidRateEstimator {
    interval: Duration,
    proportional: f64,
    integral: f64,
    min_rate: f64,
    /// Records per second let in now; `None` before the first measured batch.
    rate: Option<f64>,
}

impl PidRateEstimator {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            proportional: 1.0,
            integral: 0.2,
            min_rate: 100.0,
            rate: None,
        }
    }

    /// The current rate limit in records per second, if one has been computed.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Feeds one finished batch: `records` processed in `processing` after waiting
    /// `scheduling_delay`. Batches without records teach nothing and are ignored.
    pub fn update(&mut self, records: u64, processing: Duration, scheduling_delay: Duration) {
        let secs = processing.as_secs_f64();
        if records == 0 || secs <= 0.0 {
            return;
        }
        let processing_rate = records as f64 / secs;
        let Some(last) = self.rate else {
            self.rate = Some(processing_rate.max(self.min_rate));
            return;
        };
        let error = last - processing_rate;
        let historical =
            scheduling_delay.as_secs_f64() * processing_rate / self.interval.as_secs_f64();
        let new = last - self.proportional * error - self.integral * historical;
        self.rate = Some(new.max(self.min_rate));
    }
}

/// A source's intake limits.
#[derive(Debug, Clone, Default)]
pub struct RateLimit {
    /// `max_records_per_batch`.
    pub max_records_per_batch: Option<u64>,
    /// `backpressure = true`.
    pub estimator: Option<PidRateEstimator>,
}

impl RateLimit {
    /// The most records the next batch may take.
    pub fn max_records(&self, interval: Duration) -> Option<u64> {
        let pid = self
            .estimator
            .as_ref()
            .and_then(|e| e.rate())
            .map(|r| ((r * interval.as_secs_f64()).ceil() as u64).max(1));
        match (self.max_records_per_batch, pid) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_falls_while_batches_are_slow_and_recovers() {
        let mut e = PidRateEstimator::new(Duration::from_millis(100));
        // 1000 records in 50 ms: 20,000/s.
        e.update(1000, Duration::from_millis(50), Duration::ZERO);
        assert_eq!(e.rate(), Some(20_000.0));
        // Now 1000 records take 400 ms (2,500/s) and batches queue up: the rate falls
        // below the processing rate (to drain the queue) and stays there.
        let mut last = e.rate().unwrap();
        for _ in 0..3 {
            e.update(1000, Duration::from_millis(400), Duration::from_millis(300));
            let r = e.rate().unwrap();
            assert!(r <= last, "{r} <= {last}");
            last = r;
        }
        assert!(last < 2_500.0, "{last}");
        // Quick again: the rate climbs back.
        e.update(250, Duration::from_millis(10), Duration::ZERO);
        assert!(e.rate().unwrap() > 20_000.0);
        // Never below the minimum.
        e.update(1, Duration::from_secs(100), Duration::from_secs(100));
        assert_eq!(e.rate(), Some(100.0));
    }

    #[test]
    fn the_fixed_cap_and_the_estimate_combine() {
        let mut l = RateLimit {
            max_records_per_batch: Some(500),
            estimator: Some(PidRateEstimator::new(Duration::from_secs(1))),
        };
        assert_eq!(l.max_records(Duration::from_secs(1)), Some(500));
        l.estimator
            .as_mut()
            .unwrap()
            .update(300, Duration::from_secs(1), Duration::ZERO);
        assert_eq!(l.max_records(Duration::from_secs(1)), Some(300));
    }
}
