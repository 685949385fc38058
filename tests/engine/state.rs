//! State across batches: update_state_by_key and map_with_state.

use std::sync::Arc;
use std::time::Duration;

use flumen::datafusion::arrow::compute;
use flumen::datafusion::arrow::datatypes::Int64Type;
use flumen::datafusion::datasource::MemTable;
use flumen::datafusion::functions::math::expr_fn::round;
use flumen::datafusion::functions_aggregate::expr_fn::{
    approx_distinct, avg, count, count_distinct, max, min, stddev, sum,
};
use flumen::datafusion::functions_nested::expr_fn::string_to_array;
use flumen::datafusion::prelude::SessionContext;
use flumen::datafusion::scalar::ScalarValue;
use flumen::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::*;

/// Lines split into words, counted by `update_state_by_key` into a memory sink: the
/// queue that feeds it and the sink.
fn running_counts(
    ctx: &StreamingContext,
) -> (
    Arc<flumen::engine::sources::queue::QueueSource>,
    Arc<MemorySink>,
) {
    let (q, lines_stream) = ctx.queue_stream("lines", lines_schema(), true).unwrap();
    let sink = MemorySink::new("counts");
    lines_stream
        .flat_map(
            string_to_array(col("line"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
        )
        .unwrap()
        .update_state_by_key(vec![col("word")], vec![count(lit(1)).alias("n")])
        .unwrap()
        .write_to(sink.clone())
        .unwrap();
    (q, sink)
}

#[tokio::test]
async fn running_word_count() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (q, sink) = running_counts(&ctx);
    q.push(vec![lines(&["a b a"])]).unwrap();
    q.push(vec![lines(&["b c"])]).unwrap();
    q.push(vec![]).unwrap();
    q.push(vec![lines(&["a"])]).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(4).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert_eq!(rows(&sink.batch(t(1000))), strs(&["a|2", "b|1"]));
    assert_eq!(rows(&sink.batch(t(2000))), strs(&["a|2", "b|2", "c|1"]));
    assert_eq!(rows(&sink.batch(t(3000))), strs(&["a|2", "b|2", "c|1"]));
    assert_eq!(rows(&sink.batch(t(4000))), strs(&["a|3", "b|2", "c|1"]));
    assert_eq!(ctx.recent_batches().last().unwrap().state_rows, 3);
}

/// The embedded API's state settings: `with_state_config` on the builder reaches
/// `update_state_by_key` — 3 partitions, a 1-byte budget (every partition spilled), a
/// time-to-live that forgets `a` after 10 s without an update.
#[tokio::test]
async fn update_state_by_key_keeps_its_state_as_the_context_says() {
    let _g = serial().await;
    let clock = ManualClock::default();
    let ctx = StreamingContext::builder(Duration::from_millis(1000))
        .with_clock(Arc::new(clock.clone()))
        .with_state_config(flumen::engine::state::StateConfig {
            partitions: 3,
            memory: 1,
            ttl: Some(Duration::from_secs(10)),
            ..Default::default()
        })
        .build()
        .unwrap();
    assert_eq!(ctx.state_config().partitions, 3);
    let (q, sink) = running_counts(&ctx);
    q.push(vec![lines(&["a b a"])]).unwrap();
    for _ in 0..11 {
        q.push(vec![lines(&["b"])]).unwrap();
    }
    q.push(vec![lines(&["a b"])]).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(13).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert_eq!(rows(&sink.batch(t(1000))), strs(&["a|2", "b|1"]));
    // At 13 s `a` (last updated at 1 s) has expired: it starts again; `b` goes on.
    assert_eq!(rows(&sink.batch(t(13000))), strs(&["a|1", "b|13"]));
    let last = ctx.recent_batches().last().unwrap().clone();
    let op = &last.operators[0];
    assert!(op.spilled_bytes > 0, "{op:?}");
    assert_eq!(op.evicted_rows, 1, "{op:?}");
}

fn kv_schema() -> SchemaRef {
    schema(&[("k", DataType::Utf8), ("v", DataType::Int64)])
}

/// update_state_by_key over 100 batches and 10,000 keys ends equal to one DataFusion
/// GROUP BY over all of the input — with 5 state partitions spilled after every batch,
/// so list and binary states (count distinct, approx_distinct) go through the spill
/// files too.
#[tokio::test]
async fn running_aggregates_equal_one_batch_query() {
    let _g = serial().await;
    let mut rng = SmallRng::seed_from_u64(42);
    let mut all = Vec::new();
    let ctx = StreamingContext::builder(Duration::from_millis(1000))
        .with_clock(Arc::new(ManualClock::default()))
        .with_state_config(flumen::engine::state::StateConfig {
            partitions: 5,
            memory: 1,
            ttl: None,
            ..Default::default()
        })
        .build()
        .unwrap();
    let (q, s) = ctx.queue_stream("kv", kv_schema(), true).unwrap();
    for _ in 0..100 {
        let keys: Vec<String> = (0..1000)
            .map(|_| format!("k{}", rng.random_range(0..10_000)))
            .collect();
        let values: Vec<Option<i64>> = (0..1000)
            .map(|_| (rng.random_range(0..20) != 0).then(|| rng.random_range(-1000..1000)))
            .collect();
        let b = RecordBatch::try_new(
            kv_schema(),
            vec![
                Arc::new(StringArray::from(keys)),
                Arc::new(Int64Array::from(values)),
            ],
        )
        .unwrap();
        all.push(b.clone());
        q.push(vec![b]).unwrap();
    }
    let aggrs = || {
        vec![
            count(lit(1)).alias("n"),
            sum(col("v")).alias("s"),
            avg(col("v")).alias("a"),
            min(col("v")).alias("lo"),
            max(col("v")).alias("hi"),
            count_distinct(col("v")).alias("d"),
            approx_distinct(col("v")).alias("ad"),
            stddev(col("v")).alias("sd"),
        ]
    };
    let rounded = || {
        vec![
            col("k"),
            col("n"),
            col("s"),
            col("a"),
            col("lo"),
            col("hi"),
            col("d"),
            col("ad"),
            round(vec![col("sd"), lit(6)]).alias("sd"),
        ]
    };
    let sink = MemorySink::new("state");
    s.update_state_by_key(vec![col("k")], aggrs())
        .unwrap()
        .select(rounded())
        .unwrap()
        .write_to(sink.clone())
        .unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(100).await.unwrap();
    ctx.stop(true).await.unwrap();

    let batch = SessionContext::new();
    let table = MemTable::try_new(kv_schema(), vec![all]).unwrap();
    let expected = batch
        .read_table(Arc::new(table))
        .unwrap()
        .aggregate(vec![col("k")], aggrs())
        .unwrap()
        .select(rounded())
        .unwrap()
        .collect()
        .await
        .unwrap();
    let got = rows(&sink.last());
    let want = rows(&expected);
    assert!(want.len() > 9000, "most keys seen: {}", want.len());
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

/// A running sum per key that forgets keys idle for two batches, telling them so.
#[tokio::test]
async fn map_with_state_keeps_state_and_times_out_idle_keys() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (q, s) = ctx
        .queue_stream("events", pairs(&[]).schema(), true)
        .unwrap();
    let state_schema = schema(&[("total", DataType::Int64)]);
    let out_schema = schema(&[
        ("name", DataType::Utf8),
        ("total", DataType::Int64),
        ("timed_out", DataType::Boolean),
    ]);
    let out = out_schema.clone();
    let st = state_schema.clone();
    let spec = StateSpec::new(state_schema, out_schema, move |kb: &KeyedBatch| {
        let prev = kb
            .state
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let mut totals = Vec::new();
        for i in 0..kb.num_keys() {
            let values = kb.values_of(i);
            let added = compute::sum(
                values
                    .column(1)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap(),
            )
            .unwrap_or(0);
            let before = if prev.is_valid(i) { prev.value(i) } else { 0 };
            totals.push(before + added);
        }
        let totals = Arc::new(Int64Array::from(totals));
        Ok(StateUpdate {
            state: RecordBatch::try_new(st.clone(), vec![totals.clone()])?,
            remove: None,
            output: RecordBatch::try_new(
                out.clone(),
                vec![
                    kb.keys.column(0).clone(),
                    totals,
                    Arc::new(kb.timing_out.clone()),
                ],
            )?,
        })
    })
    .with_timeout(std::time::Duration::from_secs(2));
    let sink = MemorySink::new("totals");
    s.map_with_state(&["name"], spec)
        .unwrap()
        .write_to(sink.clone())
        .unwrap();
    q.push(vec![pairs(&[("a", 1), ("b", 2), ("a", 3)])])
        .unwrap(); // t=1
    q.push(vec![pairs(&[("a", 10)])]).unwrap(); // t=2
    q.push(vec![pairs(&[("a", 1)])]).unwrap(); // t=3: b idle 2s -> times out
    q.push(vec![pairs(&[("b", 5)])]).unwrap(); // t=4: b starts afresh
    ctx.start().await.unwrap();
    ctx.advance_batches(4).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert_eq!(
        rows(&sink.batch(t(1000))),
        strs(&["a|4|false", "b|2|false"])
    );
    assert_eq!(rows(&sink.batch(t(2000))), strs(&["a|14|false"]));
    assert_eq!(
        rows(&sink.batch(t(3000))),
        strs(&["a|15|false", "b|2|true"])
    );
    assert_eq!(rows(&sink.batch(t(4000))), strs(&["b|5|false"]));
    assert_eq!(ctx.recent_batches().last().unwrap().state_rows, 2);
}

#[tokio::test]
async fn map_with_state_rejects_unknown_keys_and_bad_results() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (q, s) = ctx
        .queue_stream("events", pairs(&[]).schema(), true)
        .unwrap();
    let st = schema(&[("total", DataType::Int64)]);
    let spec = StateSpec::new(st.clone(), st.clone(), move |_kb: &KeyedBatch| {
        Ok(StateUpdate {
            state: RecordBatch::new_empty(schema(&[("total", DataType::Int64)])),
            remove: None,
            output: RecordBatch::new_empty(schema(&[("total", DataType::Int64)])),
        })
    });
    let err = s
        .map_with_state(&["nope"], spec.clone())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "map_with_state key column 'nope' is not in the stream; it has name, n"
    );
    s.map_with_state(&["name"], spec)
        .unwrap()
        .write_to(MemorySink::new("x"))
        .unwrap();
    q.push(vec![pairs(&[("a", 1)])]).unwrap();
    ctx.start().await.unwrap();
    let err = ctx.advance_batches(1).await.unwrap_err().to_string();
    assert!(
        err.contains("map_with_state function: returned 0 state rows for 1 keys"),
        "{err}"
    );
}

/// Spark's `StreamingContext.getOrCreate`: the same function builds the pipeline on
/// every start; the second start resumes the running totals from the checkpoint.
#[tokio::test]
async fn get_or_create_resumes_from_the_checkpoint() {
    let _g = serial().await;
    let dir = temp_dir("get-or-create");
    let clock = ManualClock::default();
    let build = |clock: ManualClock, sink: Arc<MemorySink>| {
        move || {
            let ctx = StreamingContext::builder(Duration::from_secs(1))
                .with_clock(Arc::new(clock))
                .build()?;
            let rate = Arc::new(flumen::connectors::rate::RateSource::new("r", 10, None));
            ctx.source(rate)?
                .update_state_by_key(
                    vec![(col("value") % lit(2i64)).alias("parity")],
                    vec![count(lit(1)).alias("n"), sum(col("value")).alias("s")],
                )?
                .write_to(sink)?;
            Ok(ctx)
        }
    };
    let first = MemorySink::new("totals");
    let ctx = StreamingContext::get_or_create(&dir, build(clock.clone(), first.clone())).unwrap();
    assert_eq!(
        ctx.checkpoint_location().map(|l| l.display()),
        Some(dir.display().to_string())
    );
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    ctx.stop(true).await.unwrap();
    // Values 0..20 in two batches.
    let last = |sink: &MemorySink| {
        let mut r = rows(&sink.last());
        r.sort();
        r
    };
    assert_eq!(last(&first), strs(&["0|10|90", "1|10|100"]));

    let second = MemorySink::new("totals");
    let ctx = StreamingContext::get_or_create(&dir, build(clock.clone(), second.clone())).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(1).await.unwrap();
    ctx.stop(true).await.unwrap();
    // Values 0..30: the state came back, the rate source went on from 20.
    assert_eq!(last(&second), strs(&["0|15|210", "1|15|225"]));

    // A function whose context already checkpoints elsewhere is refused.
    let err = StreamingContext::get_or_create(&dir, || {
        StreamingContext::builder(Duration::from_secs(1))
            .with_checkpoint("/elsewhere")
            .build()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("already checkpoints to /elsewhere"), "{err}");
}

/// map_with_state's keys, state and idle times come back from a checkpoint.
#[tokio::test]
async fn map_with_state_resumes_from_the_checkpoint() {
    let _g = serial().await;
    let dir = temp_dir("map-with-state-checkpoint");
    let clock = ManualClock::default();
    let build = |clock: ManualClock, sink: Arc<MemorySink>| {
        move || {
            let ctx = StreamingContext::builder(Duration::from_secs(1))
                .with_clock(Arc::new(clock))
                .build()?;
            let st = schema(&[("total", DataType::Int64)]);
            let out = schema(&[("k", DataType::Int64), ("total", DataType::Int64)]);
            let (st2, out2) = (st.clone(), out.clone());
            let spec = StateSpec::new(st, out, move |kb: &KeyedBatch| {
                let prev = kb
                    .state
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                let totals: Int64Array = (0..kb.num_keys())
                    .map(|i| {
                        let v = kb.values_of(i);
                        let v = v.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                        let before = if prev.is_valid(i) { prev.value(i) } else { 0 };
                        Some(before + compute::sum(v).unwrap_or(0))
                    })
                    .collect();
                let totals = Arc::new(totals);
                Ok(StateUpdate {
                    state: RecordBatch::try_new(st2.clone(), vec![totals.clone()])?,
                    remove: None,
                    output: RecordBatch::try_new(
                        out2.clone(),
                        vec![kb.keys.column(0).clone(), totals],
                    )?,
                })
            });
            let rate = Arc::new(flumen::connectors::rate::RateSource::new("r", 10, None));
            ctx.source(rate)?
                .select(vec![(col("value") % lit(3i64)).alias("k"), col("value")])?
                .map_with_state(&["k"], spec)?
                .write_to(sink)?;
            Ok(ctx)
        }
    };
    let first = MemorySink::new("totals");
    let ctx = StreamingContext::get_or_create(&dir, build(clock.clone(), first.clone())).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    ctx.stop(true).await.unwrap();
    let second = MemorySink::new("totals");
    let ctx = StreamingContext::get_or_create(&dir, build(clock.clone(), second.clone())).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    ctx.stop(true).await.unwrap();
    // Values 0..40 by value % 3, as one query over all of them gives.
    let mut got = rows(&second.last());
    got.sort();
    let expected: Vec<String> = (0..3i64)
        .map(|k| format!("{k}|{}", (0..40i64).filter(|v| v % 3 == k).sum::<i64>()))
        .collect();
    assert_eq!(got, expected);
}

fn int_kv_schema() -> SchemaRef {
    schema(&[("k", DataType::Int64), ("v", DataType::Int64)])
}

/// A map_with_state spec keeping a running count and sum per key, emitting
/// `k, n, s` for every key called.
fn count_and_sum_spec() -> StateSpec {
    let state = schema(&[("n", DataType::Int64), ("s", DataType::Int64)]);
    let out = schema(&[
        ("k", DataType::Int64),
        ("n", DataType::Int64),
        ("s", DataType::Int64),
    ]);
    let (st, ot) = (state.clone(), out.clone());
    StateSpec::new(state, out, move |kb: &KeyedBatch| {
        let prev_n = kb.state.column(0).as_primitive::<Int64Type>();
        let prev_s = kb.state.column(1).as_primitive::<Int64Type>();
        let v = kb.values.column(1).as_primitive::<Int64Type>();
        let mut n = Vec::with_capacity(kb.num_keys());
        let mut s = Vec::with_capacity(kb.num_keys());
        for i in 0..kb.num_keys() {
            let (from, to) = (kb.offsets[i], kb.offsets[i + 1]);
            let had = kb.has_state.value(i);
            n.push((to - from) as i64 + if had { prev_n.value(i) } else { 0 });
            s.push(
                v.values()[from..to].iter().sum::<i64>() + if had { prev_s.value(i) } else { 0 },
            );
        }
        let n: ArrayRef = Arc::new(Int64Array::from(n));
        let s: ArrayRef = Arc::new(Int64Array::from(s));
        Ok(StateUpdate {
            state: RecordBatch::try_new(st.clone(), vec![n.clone(), s.clone()])?,
            remove: None,
            output: RecordBatch::try_new(ot.clone(), vec![kb.keys.column(0).clone(), n, s])?,
        })
    })
}

/// map_with_state over 1,000,000 keys (3,000,000 random rows in 10 batches) in 1, 2
/// and 7 state partitions, the 7 with a 1-byte budget (every partition spilled after
/// every batch): each key's last count and sum are what one DataFusion batch query
/// over all the input gives.
#[tokio::test]
async fn map_with_state_over_a_million_keys_in_1_2_and_7_partitions_and_spilled_equals_the_batch_query()
 {
    let _g = serial().await;
    let mut rng = SmallRng::seed_from_u64(7);
    let input: Vec<RecordBatch> = (0..10)
        .map(|_| {
            let k: Int64Array = (0..300_000)
                .map(|_| Some(rng.random_range(0..1_000_000)))
                .collect();
            let v: Int64Array = (0..300_000)
                .map(|_| Some(rng.random_range(0..1000)))
                .collect();
            RecordBatch::try_new(int_kv_schema(), vec![Arc::new(k), Arc::new(v)]).unwrap()
        })
        .collect();
    let batch = SessionContext::new();
    batch
        .register_table(
            "kv",
            Arc::new(MemTable::try_new(int_kv_schema(), vec![input.clone()]).unwrap()),
        )
        .unwrap();
    let want = batch
        .sql("SELECT k, count(*) AS n, sum(v) AS s FROM kv GROUP BY k")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let last_per_key = |batches: &[RecordBatch]| {
        let mut out = std::collections::HashMap::new();
        for b in batches {
            let k = b.column(0).as_primitive::<Int64Type>();
            let n = b.column(1).as_primitive::<Int64Type>();
            let s = b.column(2).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let e = out.entry(k.value(i)).or_insert((0, 0));
                if n.value(i) > e.0 {
                    *e = (n.value(i), s.value(i));
                }
            }
        }
        out
    };
    let want = last_per_key(&want);
    assert!(want.len() > 900_000, "most keys drawn: {}", want.len());
    for (partitions, memory) in [(1, usize::MAX), (2, usize::MAX), (7, 1)] {
        let ctx = StreamingContext::builder(Duration::from_millis(1000))
            .with_clock(Arc::new(ManualClock::default()))
            .with_state_config(flumen::engine::state::StateConfig {
                partitions,
                memory,
                ttl: None,
                ..Default::default()
            })
            .build()
            .unwrap();
        let (q, s) = ctx.queue_stream("kv", int_kv_schema(), true).unwrap();
        let sink = MemorySink::new("totals");
        s.map_with_state(&["k"], count_and_sum_spec())
            .unwrap()
            .write_to(sink.clone())
            .unwrap();
        for b in &input {
            q.push(vec![b.clone()]).unwrap();
        }
        ctx.start().await.unwrap();
        ctx.advance_batches(10).await.unwrap();
        ctx.stop(true).await.unwrap();
        let got = last_per_key(&sink.all());
        assert_eq!(got.len(), want.len(), "{partitions} partitions");
        assert!(got == want, "{partitions} partitions: totals differ");
        let last = ctx.recent_batches().last().unwrap().clone();
        let op = &last.operators[0];
        assert_eq!(op.rows as usize, want.len());
        assert_eq!(op.spilled_bytes > 0, memory == 1, "{op:?}");
    }
}

/// What map_with_state with a 4 s timeout, a running total per `value % 300` that is
/// removed past 2000, gives over the rate source's batches `1..=to` (values
/// `100(i-1)..100i` at `i` s; keys 0..9 get no rows from 600 on): `k|total|timed out`
/// per batch.
fn timeout_model(to: i64) -> Vec<Vec<String>> {
    let mut state: std::collections::BTreeMap<i64, (i64, i64)> = Default::default();
    let mut out = Vec::new();
    for i in 1..=to {
        let now = i * 1000;
        let mut rows = Vec::new();
        let mut sums: std::collections::BTreeMap<i64, i64> = Default::default();
        for v in 100 * (i - 1)..100 * i {
            if v < 600 || v % 300 >= 10 {
                *sums.entry(v % 300).or_default() += v;
            }
        }
        let idle: Vec<i64> = state
            .iter()
            .filter(|(k, (_, seen))| !sums.contains_key(k) && now - seen >= 4000)
            .map(|(k, _)| *k)
            .collect();
        for k in idle {
            let (total, _) = state.remove(&k).unwrap();
            rows.push(format!("{k}|{total}|true"));
        }
        for (k, s) in sums {
            let total = state.get(&k).map_or(0, |(t, _)| *t) + s;
            rows.push(format!("{k}|{total}|false"));
            if total > 2000 {
                state.remove(&k);
            } else {
                state.insert(k, (total, now));
            }
        }
        rows.sort();
        out.push(rows);
    }
    out
}

/// map_with_state's timeouts and removals survive restarts: the keys that timed out
/// or were removed before a checkpoint (tombstones in its deltas) do not come back;
/// restarted after every batch, each batch is what the model of one uninterrupted
/// run gives.
#[tokio::test]
async fn map_with_state_timeouts_and_removals_survive_restarts() {
    let _g = serial().await;
    let dir = temp_dir("map-with-state-timeouts");
    let clock = ManualClock::default();
    let build = |clock: ManualClock, sink: Arc<MemorySink>| {
        move || {
            let ctx = StreamingContext::builder(Duration::from_secs(1))
                .with_clock(Arc::new(clock))
                .build()?;
            let st = schema(&[("total", DataType::Int64)]);
            let out = schema(&[
                ("k", DataType::Int64),
                ("total", DataType::Int64),
                ("timed_out", DataType::Boolean),
            ]);
            let (st2, out2) = (st.clone(), out.clone());
            let spec = StateSpec::new(st, out, move |kb: &KeyedBatch| {
                let prev = kb.state.column(0).as_primitive::<Int64Type>();
                let v = kb.values.column(1).as_primitive::<Int64Type>();
                let totals: Int64Array = (0..kb.num_keys())
                    .map(|i| {
                        let before = if kb.has_state.value(i) {
                            prev.value(i)
                        } else {
                            0
                        };
                        let added: i64 = v.values()[kb.offsets[i]..kb.offsets[i + 1]].iter().sum();
                        Some(before + added)
                    })
                    .collect();
                let remove: BooleanArray = totals.iter().map(|t| t.map(|t| t > 2000)).collect();
                let totals = Arc::new(totals);
                Ok(StateUpdate {
                    state: RecordBatch::try_new(st2.clone(), vec![totals.clone()])?,
                    remove: Some(remove),
                    output: RecordBatch::try_new(
                        out2.clone(),
                        vec![
                            kb.keys.column(0).clone(),
                            totals,
                            Arc::new(kb.timing_out.clone()),
                        ],
                    )?,
                })
            })
            .with_timeout(Duration::from_secs(4));
            let rate = Arc::new(flumen::connectors::rate::RateSource::new("r", 100, None));
            ctx.source(rate)?
                .filter(
                    col("value")
                        .lt(lit(600i64))
                        .or((col("value") % lit(300i64)).gt_eq(lit(10i64))),
                )?
                .select(vec![(col("value") % lit(300i64)).alias("k"), col("value")])?
                .map_with_state(&["k"], spec)?
                .write_to(sink)?;
            Ok(ctx)
        }
    };
    let model = timeout_model(16);
    let mut batch = 0i64;
    for run in [1; 16] {
        let sink = MemorySink::new("totals");
        let ctx =
            StreamingContext::get_or_create(&dir, build(clock.clone(), sink.clone())).unwrap();
        ctx.start().await.unwrap();
        ctx.advance_batches(run).await.unwrap();
        ctx.stop(true).await.unwrap();
        for _ in 0..run {
            batch += 1;
            let got = rows(&sink.batch(t(batch * 1000)));
            assert_eq!(got, model[batch as usize - 1], "batch {batch}");
        }
    }
    // The model does time keys out and remove them.
    let all: Vec<&String> = model.iter().flatten().collect();
    assert!(all.iter().any(|r| r.ends_with("|true")));
    assert!(
        all.iter()
            .any(|r| r.split('|').nth(1).unwrap().parse::<i64>().unwrap() > 2000)
    );
}
