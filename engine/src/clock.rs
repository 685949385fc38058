//! Clocks: the system clock, and a manual clock that tests advance by hand.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::time::Time;

/// The source of time for the scheduler.
///
/// The scheduler calls [`Clock::now`] to align batch times and
/// [`Clock::sleep_until`] to wait for the next one.
pub trait Clock: Debug + Send + Sync {
    /// The current time.
    fn now(&self) -> Time;
    /// A future that completes once [`Clock::now`] is at or after `t`.
    fn sleep_until(&self, t: Time) -> BoxFuture<'static, ()>;
    /// The manual clock behind this one, if any (tests use it to step batches).
    fn as_manual(&self) -> Option<&ManualClock> {
        None
    }
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Time::from_millis(ms)
    }

    fn sleep_until(&self, t: Time) -> BoxFuture<'static, ()> {
        let wait = (t.as_millis() - self.now().as_millis()).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(wait)))
    }
}

/// A clock that only moves when told to: tests advance it and the scheduler runs the
/// batches that became due, deterministically.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A manual clock reading `start`.
    pub fn new(start: Time) -> Self {
        let (tx, _) = watch::channel(start.as_millis());
        Self { now: Arc::new(tx) }
    }

    /// Move the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.now.send_modify(|t| *t += d.as_millis() as i64);
    }

    /// Set the clock to `t` (never backwards).
    pub fn set(&self, t: Time) {
        self.now.send_modify(|now| *now = (*now).max(t.as_millis()));
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(Time::from_millis(0))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        Time::from_millis(*self.now.borrow())
    }

    fn sleep_until(&self, t: Time) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as any clone of the clock; if it is gone the
            // clock can never reach `t`, so waiting forever is the honest answer.
            if rx.wait_for(|now| *now >= t.as_millis()).await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    }

    fn as_manual(&self) -> Option<&ManualClock> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::new(Time::from_millis(1000));
        let sleeper = clock.sleep_until(Time::from_millis(3000));
        let handle = tokio::spawn(sleeper);
        clock.advance(Duration::from_secs(1));
        tokio::task::yield_now().await;
        assert!(!handle.is_finished());
        clock.advance(Duration::from_secs(1));
        handle.await.unwrap();
        assert_eq!(clock.now(), Time::from_millis(3000));
    }
}
