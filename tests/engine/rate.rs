//! Rate control: back pressure lowers a source's intake under a slow sink and raises
//! it again when the sink is quick.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use flumen::engine::{SourceOptions, Time, WriteKey};
use flumen::prelude::*;

use crate::common::*;

/// A sink that takes `delay_ms` per write: an overloaded database, say.
#[derive(Debug, Default)]
struct SlowSink {
    delay_ms: AtomicU64,
}

#[async_trait]
impl Sink for SlowSink {
    fn name(&self) -> &str {
        "slow"
    }

    async fn write(
        &self,
        _key: &WriteKey,
        _batches: Vec<RecordBatch>,
    ) -> flumen::engine::Result<()> {
        tokio::time::sleep(Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))).await;
        Ok(())
    }

    async fn commit(&self, _q: &str, _t: Time, _p: usize) -> flumen::engine::Result<()> {
        Ok(())
    }
}

fn intake(ctx: &StreamingContext) -> Vec<u64> {
    ctx.recent_batches()
        .iter()
        .map(|b| b.input_rows.iter().map(|(_, n)| n).sum())
        .collect()
}

#[tokio::test]
async fn backpressure_lowers_the_intake_under_a_slow_sink_and_recovers() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(100);
    // 10,000 rows/s: 1,000 due per 100 ms batch (the first batch covers the second
    // before it, as Spark's rate source).
    let rate = Arc::new(flumen::connectors::rate::RateSource::new("r", 10_000, None));
    let s = ctx
        .source_with(
            rate,
            SourceOptions {
                backpressure: true,
                ..SourceOptions::default()
            },
        )
        .unwrap();
    let sink = Arc::new(SlowSink::default());
    s.write_to(sink.clone()).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    assert_eq!(intake(&ctx), vec![10_000, 1_000]);
    // Each batch now takes 200 ms, twice the interval: the intake must fall.
    sink.delay_ms.store(200, Ordering::Relaxed);
    ctx.advance_batches(4).await.unwrap();
    let slow = intake(&ctx)[2..].to_vec();
    assert!(
        slow.windows(2).skip(1).all(|w| w[1] < w[0]),
        "intake should keep falling while batches are slow: {slow:?}"
    );
    let lowest = *slow.last().unwrap();
    assert!(lowest < 500, "{slow:?}");
    // Quick again: the intake climbs back and works off the backlog.
    sink.delay_ms.store(0, Ordering::Relaxed);
    ctx.advance_batches(3).await.unwrap();
    let after = intake(&ctx)[6..].to_vec();
    assert!(
        after.iter().any(|n| *n > 1_000),
        "intake should recover above the due rate to catch up: {after:?}"
    );
    let total: u64 = intake(&ctx).iter().sum();
    assert_eq!(
        total,
        10_000 + 8 * 1_000,
        "every due row is read exactly once"
    );
    ctx.stop(true).await.unwrap();
}

#[tokio::test]
async fn a_fixed_cap_and_sources_that_cannot_keep_one() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let rate = Arc::new(flumen::connectors::rate::RateSource::new("r", 50, None));
    let s = ctx
        .source_with(
            rate,
            SourceOptions {
                max_records_per_batch: Some(20),
                ..SourceOptions::default()
            },
        )
        .unwrap();
    s.write_to(MemorySink::new("out")).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(3).await.unwrap();
    assert_eq!(intake(&ctx), vec![20, 20, 20]);
    ctx.stop(true).await.unwrap();

    let (ctx, _clock) = manual_ctx(1000);
    let queue = flumen::engine::QueueSource::new("q", lines_schema(), true);
    let err = ctx
        .source_with(
            queue,
            SourceOptions {
                backpressure: true,
                ..SourceOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "stream q: this source cannot cap the records of a batch (max_records_per_batch, backpressure); a batch takes whole queued elements"
    );
}
