//! `flumen demo`: a generator stream, a per-batch and a windowed word count, printed
//! batch by batch on the system clock; stops by itself.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_nested::expr_fn::string_to_array;
use datafusion::prelude::{col, lit};
use datafusion::scalar::ScalarValue;
use flumen_engine::StreamingContext;

const WORDS: [&str; 8] = [
    "arrow", "batch", "stream", "window", "state", "flumen", "query", "sink",
];

pub async fn run(seconds: u64) -> Result<()> {
    let interval = Duration::from_secs(1);
    let ctx = StreamingContext::new(interval)?;
    let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
    let (queue, lines) = ctx.queue_stream("lines", schema.clone(), true)?;
    // A deterministic generator: batch i has i + 2 lines of words.
    for i in 0..seconds as usize + 2 {
        let text: Vec<String> = (0..i + 2)
            .map(|j| {
                (0..4)
                    .map(|k| WORDS[(i * 7 + j * 3 + k * 5) % WORDS.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        queue.push(vec![RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(text))],
        )?])?;
    }
    let words = lines.flat_map(
        string_to_array(col("line"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
    )?;
    println!("flumen demo: word counts per 1 s batch, then over a 3 s window sliding every 1 s\n");
    words
        .reduce_by_key(vec![col("word")], vec![count(lit(1)).alias("n")])?
        .transform(|df| Ok(df.sort_by(vec![col("word")])?))?
        .print(8)?;
    words
        .reduce_by_key_and_window(
            vec![col("word")],
            vec![count(lit(1)).alias("n_last_3s")],
            interval * 3,
            interval,
        )?
        .transform(|df| Ok(df.sort_by(vec![col("word")])?))?
        .print(8)?;
    ctx.start().await?;
    let stopped = ctx
        .await_termination_timeout(Duration::from_secs(seconds) + Duration::from_millis(500))
        .await?;
    if !stopped {
        ctx.stop(true).await?;
    }
    let batches = ctx.recent_batches();
    let rows: u64 = batches.iter().map(|b| b.num_input_rows()).sum();
    println!(
        "demo done: {} batches, {rows} lines in; see README.md for the embedded API",
        batches.len()
    );
    Ok(())
}
