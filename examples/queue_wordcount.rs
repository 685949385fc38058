//! The word count over a queue of line batches (Spark's `QueueStream` example):
//! each batch's words are counted, and the counts printed.
//!
//! Run with `cargo run --example queue_wordcount`.

use std::sync::Arc;
use std::time::Duration;

use flumen::datafusion::functions_aggregate::expr_fn::count;
use flumen::datafusion::functions_nested::expr_fn::string_to_array;
use flumen::datafusion::scalar::ScalarValue;
use flumen::prelude::*;

#[tokio::main]
async fn main() -> Result<()> {
    let ctx = StreamingContext::builder(Duration::from_millis(500))
        .with_trigger(Trigger::AvailableNow)
        .build()?;
    let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
    let (queue, lines) = ctx.queue_stream("lines", schema.clone(), true)?;

    let words = lines.flat_map(
        string_to_array(col("line"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
    )?;
    let counts = words.reduce_by_key(vec![col("word")], vec![count(lit(1)).alias("count")])?;
    counts.print(10)?;

    let texts = [
        "to be or not to be",
        "that is the question",
        "whether tis nobler in the mind to suffer",
    ];
    for text in texts {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec![text; 3]))],
        )?;
        queue.push(vec![batch])?;
    }

    ctx.start().await?;
    ctx.await_termination().await
}
