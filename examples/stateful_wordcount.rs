//! Running word counts across batches (Spark's `StatefulNetworkWordCount`, with
//! `updateStateByKey`): every batch prints each word's count so far.
//!
//! Run with `cargo run --example stateful_wordcount`.

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

    let running = lines
        .flat_map(
            string_to_array(col("line"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
        )?
        .update_state_by_key(vec![col("word")], vec![count(lit(1)).alias("count")])?
        .transform(|df| Ok(df.sort_by(vec![col("count"), col("word")])?))?;
    running.print(20)?;

    for text in ["hello world", "hello flumen", "goodbye world"] {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec![text]))],
        )?;
        queue.push(vec![batch])?;
    }

    ctx.start().await?;
    ctx.await_termination().await
}
