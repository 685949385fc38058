//! StreamingContext lifecycle, scheduler and listeners.

use std::sync::Arc;
use std::time::Duration;

use flumen::prelude::*;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::common::*;

#[tokio::test]
async fn adding_streams_or_outputs_after_start_is_refused() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (_q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let sink = MemorySink::new("out");
    s.write_to(sink).unwrap();
    ctx.start().await.unwrap();
    let err = s.print(10).unwrap_err().to_string();
    assert!(
        err.contains("cannot add an output after the StreamingContext has started"),
        "{err}"
    );
    let err = ctx
        .queue_stream("more", lines_schema(), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot add a stream after the StreamingContext has started"),
        "{err}"
    );
    let err = s.filter(col("line").is_not_null()).unwrap_err().to_string();
    assert!(err.contains("cannot filter after"), "{err}");
    ctx.stop(true).await.unwrap();
}

#[tokio::test]
async fn a_stopped_context_cannot_be_restarted() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (_q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    s.write_to(MemorySink::new("out")).unwrap();
    ctx.start().await.unwrap();
    assert_eq!(ctx.state(), StreamingContextState::Active);
    ctx.stop(true).await.unwrap();
    assert_eq!(ctx.state(), StreamingContextState::Stopped);
    let err = ctx.start().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "the StreamingContext has been stopped and cannot be restarted; create a new StreamingContext"
    );
}

#[tokio::test]
async fn start_without_output_is_refused() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (_q, _s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let err = ctx.start().await.unwrap_err().to_string();
    assert!(err.starts_with("no output operations registered"), "{err}");
    assert_eq!(ctx.state(), StreamingContextState::Initialized);
}

#[tokio::test]
async fn only_one_active_context_per_process() {
    let _g = serial().await;
    let (a, _ca) = manual_ctx(1000);
    let (_q, s) = a.queue_stream("lines", lines_schema(), true).unwrap();
    s.write_to(MemorySink::new("a")).unwrap();
    a.start().await.unwrap();

    let (b, _cb) = manual_ctx(1000);
    let (_q2, s2) = b.queue_stream("lines", lines_schema(), true).unwrap();
    s2.write_to(MemorySink::new("b")).unwrap();
    let err = b.start().await.unwrap_err().to_string();
    assert!(
        err.contains("another StreamingContext is already active"),
        "{err}"
    );
    assert!(err.contains("StreamingContext::get_active()"), "{err}");
    let active = StreamingContext::get_active().expect("active context");
    assert_eq!(active.batch_interval(), a.batch_interval());

    a.stop(true).await.unwrap();
    assert!(StreamingContext::get_active().is_none());
    // Once the first stopped, the second may start.
    b.start().await.unwrap();
    b.stop(false).await.unwrap();
}

#[tokio::test]
async fn batches_run_on_interval_multiples_and_report_scheduling_delay() {
    let _g = serial().await;
    let (ctx, clock) = manual_ctx(1000);
    let (q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let sink = MemorySink::new("out");
    s.write_to(sink.clone()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    struct Recorder(Arc<Mutex<Vec<BatchInfo>>>);
    impl StreamingListener for Recorder {
        fn on_batch_completed(&self, info: &BatchInfo) {
            self.0.lock().push(info.clone());
        }
    }
    ctx.add_listener(Arc::new(Recorder(seen.clone())));
    for i in 0..3 {
        q.push(vec![lines(&[&format!("l{i}"), "x"])]).unwrap();
    }
    ctx.start().await.unwrap();
    // Three intervals at once: the batches at 1000, 2000, 3000 run one after another,
    // the earlier ones late.
    clock.advance(Duration::from_secs(3));
    ctx.await_batch(t(3000)).await.unwrap();
    let infos = seen.lock().clone();
    assert_eq!(
        infos.iter().map(|i| i.batch_time).collect::<Vec<_>>(),
        vec![t(1000), t(2000), t(3000)]
    );
    assert_eq!(
        infos.iter().map(|i| i.scheduling_delay).collect::<Vec<_>>(),
        vec![
            Duration::from_millis(2000),
            Duration::from_millis(1000),
            Duration::ZERO
        ]
    );
    for i in &infos {
        assert_eq!(i.input_rows, vec![("lines".to_string(), 2)]);
        assert_eq!(i.output_rows, 2);
        assert_eq!(i.total_delay, i.scheduling_delay + i.processing_time);
    }
    assert_eq!(ctx.recent_batches(), infos);
    assert_eq!(sink.batch_times(), vec![t(1000), t(2000), t(3000)]);
    assert_eq!(rows(&sink.batch(t(2000))), strs(&["l1", "x"]));
    ctx.stop(true).await.unwrap();
}

#[tokio::test]
async fn retained_batches_are_bounded() {
    let _g = serial().await;
    let clock = ManualClock::default();
    let ctx = StreamingContext::builder(Duration::from_millis(100))
        .with_clock(Arc::new(clock))
        .with_retained_batches(3)
        .build()
        .unwrap();
    let (_q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    s.write_to(MemorySink::new("out")).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(5).await.unwrap();
    let kept: Vec<u64> = ctx.recent_batches().iter().map(|b| b.batch_id).collect();
    assert_eq!(kept, vec![2, 3, 4]);
    ctx.stop(true).await.unwrap();
}

#[tokio::test]
async fn graceful_stop_lets_the_batch_in_flight_finish() {
    let _g = serial().await;
    let (ctx, clock) = manual_ctx(1000);
    let (q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let done = Arc::new(Mutex::new(Vec::new()));
    {
        let (entered, release, done) = (entered.clone(), release.clone(), done.clone());
        s.foreach_batch(move |t, df| {
            let (entered, release, done) = (entered.clone(), release.clone(), done.clone());
            async move {
                entered.notify_one();
                release.notified().await;
                let n = df.count().await?;
                done.lock().push((t, n));
                Ok(())
            }
        })
        .unwrap();
    }
    q.push(vec![lines(&["a", "b", "c"])]).unwrap();
    ctx.start().await.unwrap();
    clock.advance(Duration::from_secs(1));
    entered.notified().await;
    let stopper = {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.stop(true).await })
    };
    tokio::task::yield_now().await;
    assert!(
        !stopper.is_finished(),
        "stop returned while a batch was in flight"
    );
    release.notify_one();
    stopper.await.unwrap().unwrap();
    assert_eq!(*done.lock(), vec![(t(1000), 3)]);
    assert_eq!(ctx.recent_batches().len(), 1);
    assert_eq!(ctx.state(), StreamingContextState::Stopped);
    assert!(
        ctx.await_termination_timeout(Duration::from_millis(10))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn await_termination_timeout_reports_a_running_context() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (_q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    s.write_to(MemorySink::new("out")).unwrap();
    let err = ctx.await_termination().await.unwrap_err().to_string();
    assert!(err.contains("never started"), "{err}");
    ctx.start().await.unwrap();
    assert!(
        !ctx.await_termination_timeout(Duration::from_millis(20))
            .await
            .unwrap()
    );
    ctx.stop(false).await.unwrap();
    assert!(
        ctx.await_termination_timeout(Duration::from_millis(20))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn available_now_processes_what_is_there_and_stops() {
    let _g = serial().await;
    let clock = ManualClock::default();
    let ctx = StreamingContext::builder(Duration::from_secs(1))
        .with_clock(Arc::new(clock))
        .with_trigger(Trigger::AvailableNow)
        .build()
        .unwrap();
    let (q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let sink = MemorySink::new("out");
    s.count().unwrap().write_to(sink.clone()).unwrap();
    for i in 0..3 {
        q.push(vec![lines(&vec!["x"; i + 1])]).unwrap();
    }
    ctx.start().await.unwrap();
    // The clock never moves: AvailableNow does not wait for it.
    ctx.await_termination().await.unwrap();
    assert_eq!(ctx.state(), StreamingContextState::Stopped);
    assert_eq!(sink.batch_times(), vec![t(1000), t(2000), t(3000)]);
    assert_eq!(rows(&sink.all()), strs(&["1", "2", "3"]));
    // Pushed after start: not part of "available now".
    assert!(q.push(vec![lines(&["late"])]).is_ok());
    assert_eq!(q.len(), 1);
}

#[tokio::test]
async fn data_of_another_schema_is_refused_naming_source_and_field() {
    let (ctx, _clock) = manual_ctx(1000);
    let (q, _s) = ctx
        .queue_stream("events", pairs(&[]).schema(), true)
        .unwrap();
    let bad = RecordBatch::try_new(
        schema(&[("name", DataType::Utf8), ("n", DataType::Utf8)]),
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["1"])),
        ],
    )
    .unwrap();
    let err = q.push(vec![bad]).unwrap_err().to_string();
    assert_eq!(
        err,
        "source 'events': field 'n' is declared Int64 but the data has Utf8"
    );
    let err = q.push(vec![lines(&["x"])]).unwrap_err().to_string();
    assert_eq!(
        err,
        "source 'events': field 1 should be 'name' but the data has 'line'"
    );
    assert!(q.is_empty());
}

#[tokio::test]
async fn a_failing_batch_stops_the_context_with_the_error() {
    let _g = serial().await;
    let (ctx, clock) = manual_ctx(1000);
    let (q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    s.foreach_batch(|_, _| async {
        Err(Error::User {
            context: "foreach_batch".into(),
            message: "disk on fire".into(),
        })
    })
    .unwrap();
    q.push(vec![lines(&["a"])]).unwrap();
    ctx.start().await.unwrap();
    clock.advance(Duration::from_secs(1));
    let err = ctx.await_termination().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "the streaming query failed: batch 1000 ms failed: foreach_batch: disk on fire"
    );
    assert_eq!(ctx.state(), StreamingContextState::Stopped);
    assert!(StreamingContext::get_active().is_none());
}

#[tokio::test]
async fn a_panicking_batch_stops_the_context_with_an_error() {
    let _g = serial().await;
    let (ctx, clock) = manual_ctx(1000);
    let (q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    s.foreach_batch(|_, _| async { panic!("bug in a callback") })
        .unwrap();
    q.push(vec![lines(&["a"])]).unwrap();
    ctx.start().await.unwrap();
    clock.advance(Duration::from_secs(1));
    let err = ctx.await_termination().await.unwrap_err().to_string();
    assert!(
        err.contains("a batch panicked: bug in a callback"),
        "unexpected error: {err}"
    );
    assert_eq!(ctx.state(), StreamingContextState::Stopped);
    assert!(StreamingContext::get_active().is_none());
}

/// Fails its first `failures` writes as a server that is down would, then writes to
/// `inner`.
#[derive(Debug)]
struct Flaky {
    inner: Arc<MemorySink>,
    failures: Mutex<u32>,
}

#[async_trait::async_trait]
impl Sink for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    async fn write(&self, key: &flumen::engine::WriteKey, batches: Vec<RecordBatch>) -> Result<()> {
        {
            let mut left = self.failures.lock();
            if *left > 0 {
                *left -= 1;
                return Err(Error::Sink {
                    sink_name: "flaky".into(),
                    message: "connection refused".into(),
                    retryable: true,
                });
            }
        }
        self.inner.write(key, batches).await
    }

    async fn commit(&self, query_id: &str, batch_time: Time, partitions: usize) -> Result<()> {
        self.inner.commit(query_id, batch_time, partitions).await
    }
}

#[tokio::test]
async fn a_failing_sink_is_retried_and_then_fails_the_query_naming_it() {
    let _g = serial().await;
    // Down for two attempts: the third writes the batch, once.
    let (ctx, clock) = manual_ctx(1000);
    let (q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let out = MemorySink::new("out");
    s.write_to(Arc::new(Flaky {
        inner: Arc::clone(&out),
        failures: Mutex::new(2),
    }))
    .unwrap();
    q.push(vec![lines(&["a", "b"])]).unwrap();
    ctx.start().await.unwrap();
    clock.advance(Duration::from_secs(1));
    ctx.await_batch(Time::from_millis(1000)).await.unwrap();
    assert_eq!(rows(&out.all()), strs(&["a", "b"]));
    ctx.stop(true).await.unwrap();

    // Down for good: the query fails after the last attempt, saying which sink.
    let (ctx, clock) = manual_ctx(1000);
    let (q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    s.write_to(Arc::new(Flaky {
        inner: MemorySink::new("never"),
        failures: Mutex::new(u32::MAX),
    }))
    .unwrap();
    q.push(vec![lines(&["a"])]).unwrap();
    ctx.start().await.unwrap();
    clock.advance(Duration::from_secs(1));
    let err = ctx.await_termination().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "the streaming query failed: batch 1000 ms failed: sink 'flaky': gave up after 4 attempts: sink 'flaky': connection refused"
    );
}
