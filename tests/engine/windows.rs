//! Windows over batch time, against hand-computed results.

use std::time::Duration;

use flumen::datafusion::functions_aggregate::expr_fn::sum;
use flumen::prelude::*;

use crate::common::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test]
async fn sliding_and_tumbling_counts() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let sliding = MemorySink::new("sliding");
    let tumbling = MemorySink::new("tumbling");
    let windowed = MemorySink::new("window");
    s.count_by_window(secs(3), secs(1))
        .unwrap()
        .write_to(sliding.clone())
        .unwrap();
    s.count_by_window(secs(2), secs(2))
        .unwrap()
        .write_to(tumbling.clone())
        .unwrap();
    s.window(secs(2), secs(1))
        .unwrap()
        .write_to(windowed.clone())
        .unwrap();
    for i in 1..=5 {
        let words: Vec<String> = (0..i).map(|j| format!("b{i}r{j}")).collect();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        q.push(vec![lines(&refs)]).unwrap();
    }
    ctx.start().await.unwrap();
    ctx.advance_batches(5).await.unwrap();
    ctx.stop(true).await.unwrap();
    // Batch i holds i rows; a 3 s window at t sums batches t-2..t.
    let counts: Vec<Vec<String>> = sliding
        .batch_times()
        .into_iter()
        .map(|t| rows(&sliding.batch(t)))
        .collect();
    assert_eq!(
        counts,
        vec![
            strs(&["1"]),
            strs(&["3"]),
            strs(&["6"]),
            strs(&["9"]),
            strs(&["12"])
        ]
    );
    // Tumbling 2 s: only at t = 2 and 4.
    assert_eq!(tumbling.batch_times(), vec![t(2000), t(4000)]);
    assert_eq!(rows(&tumbling.batch(t(2000))), strs(&["3"]));
    assert_eq!(rows(&tumbling.batch(t(4000))), strs(&["7"]));
    assert_eq!(
        rows(&windowed.batch(t(3000))),
        strs(&["b2r0", "b2r1", "b3r0", "b3r1", "b3r2"])
    );
}

/// The seed's example: a 10 s window sliding every 5 s over 5 s batches.
#[tokio::test]
async fn reduce_by_key_and_window_over_5s_batches() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(5000);
    let (q, s) = ctx
        .queue_stream("events", pairs(&[]).schema(), true)
        .unwrap();
    let sink = MemorySink::new("out");
    let by_value = MemorySink::new("by_value");
    s.reduce_by_key_and_window(
        vec![col("name")],
        vec![sum(col("n")).alias("total")],
        secs(10),
        secs(5),
    )
    .unwrap()
    .write_to(sink.clone())
    .unwrap();
    s.select(vec![col("name")])
        .unwrap()
        .count_by_value_and_window(secs(10), secs(5))
        .unwrap()
        .write_to(by_value.clone())
        .unwrap();
    q.push(vec![pairs(&[("a", 1), ("b", 1)])]).unwrap(); // t=5
    q.push(vec![pairs(&[("a", 2)])]).unwrap(); // t=10
    q.push(vec![pairs(&[("b", 4)])]).unwrap(); // t=15
    ctx.start().await.unwrap();
    ctx.advance_batches(3).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert_eq!(rows(&sink.batch(t(5000))), strs(&["a|1", "b|1"]));
    assert_eq!(rows(&sink.batch(t(10000))), strs(&["a|3", "b|1"]));
    assert_eq!(rows(&sink.batch(t(15000))), strs(&["a|2", "b|4"]));
    assert_eq!(rows(&by_value.batch(t(10000))), strs(&["a|2", "b|1"]));
}

#[tokio::test]
async fn reduce_by_window_and_windows_of_windows() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (q, s) = ctx
        .queue_stream("events", pairs(&[]).schema(), true)
        .unwrap();
    let sink = MemorySink::new("out");
    let nested = MemorySink::new("nested");
    s.reduce_by_window(sum(col("n")).alias("total"), secs(2), secs(1))
        .unwrap()
        .write_to(sink.clone())
        .unwrap();
    let w = s.window(secs(2), secs(2)).unwrap();
    let err = w.window(secs(3), secs(2)).unwrap_err().to_string();
    assert_eq!(
        err,
        "window length 3s is not a multiple of the parent stream's slide 2s; use 2s or 4s"
    );
    w.window(secs(4), secs(4))
        .unwrap()
        .count()
        .unwrap()
        .write_to(nested.clone())
        .unwrap();
    for n in 1..=4 {
        q.push(vec![pairs(&[("x", n)])]).unwrap();
    }
    ctx.start().await.unwrap();
    ctx.advance_batches(4).await.unwrap();
    ctx.stop(true).await.unwrap();
    let totals: Vec<Vec<String>> = sink
        .batch_times()
        .into_iter()
        .map(|t| rows(&sink.batch(t)))
        .collect();
    assert_eq!(
        totals,
        vec![strs(&["1"]), strs(&["3"]), strs(&["5"]), strs(&["7"])]
    );
    assert_eq!(nested.batch_times(), vec![t(4000)]);
    assert_eq!(rows(&nested.batch(t(4000))), strs(&["4"]));
}

#[tokio::test]
async fn window_durations_must_be_multiples_of_the_batch_interval() {
    let (ctx, _clock) = manual_ctx(2000);
    let (_q, s) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let err = s.window(secs(5), secs(2)).unwrap_err().to_string();
    assert_eq!(
        err,
        "window length 5s is not a multiple of the batch interval 2s; use 4s or 6s"
    );
    let err = s
        .count_by_window(secs(4), Duration::from_millis(1500))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "window slide 1500ms is not a multiple of the batch interval 2s; use 2s"
    );
    let err = s.window(secs(2), secs(4)).unwrap_err().to_string();
    assert!(
        err.starts_with("window slide 4s is longer than the window length 2s"),
        "{err}"
    );
}
