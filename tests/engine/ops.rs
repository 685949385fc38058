//! Stateless DStream operations, each over real batches on the manual clock.

use std::sync::Arc;

use flumen::datafusion::datasource::MemTable;
use flumen::datafusion::functions::string::expr_fn::upper;
use flumen::datafusion::functions_aggregate::expr_fn::{max, sum};
use flumen::datafusion::functions_nested::expr_fn::string_to_array;
use flumen::datafusion::scalar::ScalarValue;
use flumen::prelude::*;

use crate::common::*;

fn split_words(s: &Stream) -> Stream {
    s.flat_map(string_to_array(col("line"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"))
        .unwrap()
}

/// Runs `n` batches after pushing `inputs` (one element each) through `build`, and
/// returns the sink.
async fn run(
    inputs: Vec<Vec<RecordBatch>>,
    schema: SchemaRef,
    n: usize,
    build: impl FnOnce(&StreamingContext, &Stream) -> Stream,
) -> Arc<MemorySink> {
    let (ctx, _clock) = manual_ctx(1000);
    let (q, s) = ctx.queue_stream("input", schema, true).unwrap();
    let out = build(&ctx, &s);
    let sink = MemorySink::new("out");
    out.write_to(sink.clone()).unwrap();
    for i in inputs {
        q.push(i).unwrap();
    }
    ctx.start().await.unwrap();
    ctx.advance_batches(n).await.unwrap();
    ctx.stop(true).await.unwrap();
    sink
}

#[tokio::test]
async fn select_filter_and_flat_map() {
    let _g = serial().await;
    let sink = run(
        vec![vec![lines(&["a b", "c"])], vec![lines(&["d e f"])]],
        lines_schema(),
        2,
        |_, s| {
            split_words(s)
                .filter(col("word").not_eq(lit("e")))
                .unwrap()
                .map(vec![upper(col("word")).alias("w")])
                .unwrap()
        },
    )
    .await;
    assert_eq!(rows(&sink.batch(t(1000))), strs(&["A", "B", "C"]));
    assert_eq!(rows(&sink.batch(t(2000))), strs(&["D", "F"]));
    assert_eq!(sink.schema().unwrap().field(0).name(), "w");
}

#[tokio::test]
async fn union_and_repartition() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (qa, a) = ctx.queue_stream("a", lines_schema(), true).unwrap();
    let (qb, b) = ctx.queue_stream("b", lines_schema(), true).unwrap();
    let sink = MemorySink::new("out");
    a.union(&b)
        .unwrap()
        .repartition(3)
        .unwrap()
        .write_to(sink.clone())
        .unwrap();
    qa.push(vec![lines(&["a1", "a2"])]).unwrap();
    qb.push(vec![lines(&["b1"])]).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(1).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert_eq!(rows(&sink.batch(t(1000))), strs(&["a1", "a2", "b1"]));
}

#[tokio::test]
async fn count_reduce_count_by_value_reduce_by_key() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (q, s) = ctx
        .queue_stream("input", pairs(&[]).schema(), true)
        .unwrap();
    let counts = MemorySink::new("count");
    let reduced = MemorySink::new("reduce");
    let by_value = MemorySink::new("by_value");
    let by_key = MemorySink::new("by_key");
    s.count().unwrap().write_to(counts.clone()).unwrap();
    s.reduce(sum(col("n")).alias("total"))
        .unwrap()
        .write_to(reduced.clone())
        .unwrap();
    s.select(vec![col("name")])
        .unwrap()
        .count_by_value()
        .unwrap()
        .write_to(by_value.clone())
        .unwrap();
    s.reduce_by_key(
        vec![col("name")],
        vec![sum(col("n")).alias("total"), max(col("n")).alias("top")],
    )
    .unwrap()
    .write_to(by_key.clone())
    .unwrap();
    q.push(vec![pairs(&[("a", 1), ("b", 2), ("a", 3)])])
        .unwrap();
    q.push(vec![]).unwrap(); // an empty batch
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert_eq!(rows(&counts.batch(t(1000))), strs(&["3"]));
    assert_eq!(
        rows(&counts.batch(t(2000))),
        strs(&["0"]),
        "an empty batch counts 0"
    );
    assert_eq!(rows(&reduced.batch(t(1000))), strs(&["6"]));
    assert_eq!(rows(&by_value.batch(t(1000))), strs(&["a|2", "b|1"]));
    assert_eq!(rows(&by_key.batch(t(1000))), strs(&["a|4|3", "b|2|2"]));
    assert!(rows(&by_key.batch(t(2000))).is_empty());
}

#[tokio::test]
async fn joins_of_two_streams_in_the_same_batch() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let (ql, l) = ctx.queue_stream("left", pairs(&[]).schema(), true).unwrap();
    let (qr, r) = ctx
        .queue_stream("right", pairs(&[]).schema(), true)
        .unwrap();
    let inner = MemorySink::new("inner");
    let left = MemorySink::new("left");
    let cogrouped = MemorySink::new("cogroup");
    l.join(&r, &["name"])
        .unwrap()
        .write_to(inner.clone())
        .unwrap();
    l.left_join(&r, &["name"])
        .unwrap()
        .write_to(left.clone())
        .unwrap();
    l.cogroup(&r, &["name"])
        .unwrap()
        .write_to(cogrouped.clone())
        .unwrap();
    ql.push(vec![pairs(&[("a", 1), ("b", 2), ("a", 3)])])
        .unwrap();
    qr.push(vec![pairs(&[("a", 10), ("c", 30)])]).unwrap();
    // Batch 2: the right side is empty; rows of batch 1 must not join with batch 2.
    ql.push(vec![pairs(&[("c", 5)])]).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    ctx.stop(true).await.unwrap();

    assert_eq!(rows(&inner.batch(t(1000))), strs(&["a|1|10", "a|3|10"]));
    assert_eq!(
        inner
            .schema()
            .unwrap()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>(),
        vec!["name", "n", "n_right"]
    );
    assert!(inner.batch(t(2000)).is_empty());
    assert_eq!(
        rows(&left.batch(t(1000))),
        strs(&["a|1|10", "a|3|10", "b|2|NULL"])
    );
    assert_eq!(rows(&left.batch(t(2000))), strs(&["c|5|NULL"]));
    assert_eq!(
        rows(&cogrouped.batch(t(1000))),
        strs(&[
            "a|[{n: 1}, {n: 3}]|[{n: 10}]",
            "b|[{n: 2}]|[]",
            "c|[]|[{n: 30}]",
        ])
    );
}

#[tokio::test]
async fn join_with_a_static_table_drops_blacklisted_names() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let blacklist = RecordBatch::try_new(
        schema(&[("name", DataType::Utf8)]),
        vec![Arc::new(StringArray::from(vec!["spam", "eggs"]))],
    )
    .unwrap();
    let table = MemTable::try_new(blacklist.schema(), vec![vec![blacklist]]).unwrap();
    ctx.session()
        .register_table("blacklist", Arc::new(table))
        .unwrap();
    let (q, s) = ctx
        .queue_stream("names", pairs(&[]).schema(), true)
        .unwrap();
    let sink = MemorySink::new("clean");
    let blacklist = ctx.table("blacklist").await.unwrap();
    s.join_table(blacklist, JoinType::LeftAnti, &["name"])
        .unwrap()
        .write_to(sink.clone())
        .unwrap();
    q.push(vec![pairs(&[("ham", 1), ("spam", 2), ("eggs", 3)])])
        .unwrap();
    q.push(vec![pairs(&[("spam", 4), ("toast", 5)])]).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert_eq!(rows(&sink.batch(t(1000))), strs(&["ham|1"]));
    assert_eq!(rows(&sink.batch(t(2000))), strs(&["toast|5"]));
}

#[tokio::test]
async fn transform_and_sql_over_each_batch() {
    let _g = serial().await;
    let (ctx, _clock) = manual_ctx(1000);
    let names = RecordBatch::try_new(
        schema(&[("name", DataType::Utf8), ("full", DataType::Utf8)]),
        vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(StringArray::from(vec!["Alice", "Bob"])),
        ],
    )
    .unwrap();
    let table = MemTable::try_new(names.schema(), vec![vec![names]]).unwrap();
    ctx.session()
        .register_table("people", Arc::new(table))
        .unwrap();
    let (q, s) = ctx
        .queue_stream("input", pairs(&[]).schema(), true)
        .unwrap();
    let transformed = MemorySink::new("t");
    let by_sql = MemorySink::new("sql");
    s.transform(|df| Ok(df.filter(col("n").gt(lit(1)))?.sort_by(vec![col("n")])?))
        .unwrap()
        .write_to(transformed.clone())
        .unwrap();
    s.sql(
        "SELECT p.full, sum(b.n) AS total FROM batch b JOIN people p ON b.name = p.name \
         GROUP BY p.full",
    )
    .await
    .unwrap()
    .write_to(by_sql.clone())
    .unwrap();
    q.push(vec![pairs(&[("a", 1), ("b", 2), ("a", 3)])])
        .unwrap();
    q.push(vec![pairs(&[("b", 7)])]).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert_eq!(rows(&transformed.batch(t(1000))), strs(&["a|3", "b|2"]));
    assert_eq!(rows(&by_sql.batch(t(1000))), strs(&["Alice|4", "Bob|2"]));
    assert_eq!(rows(&by_sql.batch(t(2000))), strs(&["Bob|7"]));
}

#[tokio::test]
async fn sql_errors_name_the_problem() {
    let (ctx, _clock) = manual_ctx(1000);
    let (_q, s) = ctx
        .queue_stream("input", pairs(&[]).schema(), true)
        .unwrap();
    let err = s
        .sql("SELECT nope FROM batch")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test]
async fn print_uses_sparks_layout() {
    let out = flumen::engine::print::format_print(
        t(1357008430000),
        &[pairs(&[("a", 1), ("b", 2), ("c", 3)])],
        2,
    )
    .unwrap();
    assert_eq!(
        out,
        "-------------------------------------------\n\
         Time: 1357008430000 ms\n\
         -------------------------------------------\n\
         (a,1)\n(b,2)\n...\n\n"
    );
}
