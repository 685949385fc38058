//! Flumen's benchmark runner: one subcommand per suite, a JSON result line each.
//!
//! ```text
//! cargo run --release -p flumen-benchmarks -- wordcount --lines 1000000 [--batches 10]
//! ```

use std::sync::Arc;

/// mimalloc keeps freed memory for reuse: batch after batch, hash tables and buffers
/// of the same sizes are allocated again, and the system allocator would hand each
/// back to the kernel and fault it in zeroed the next time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_nested::expr_fn::string_to_array;
use datafusion::prelude::{SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use flumen_connectors::nexmark::Table;
use flumen_engine::{MemorySink, StreamingContext, Trigger};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod compare;
mod kafka;
mod latency;
mod memory;
mod nexmark;
mod sink;
mod state;

const USAGE: &str = "usage: flumen-benchmarks wordcount [--lines N] [--batches N] [--words-per-line N] [--distinct N] [--cluster df://HOST:PORT]
       flumen-benchmarks nexmark [--events N] [--events-per-batch N] [--query q0|q1|q2|q5|q7|q8] [--cluster df://HOST:PORT]
       flumen-benchmarks kafka [--records N] [--partitions N] [--max-records-per-batch N]
       flumen-benchmarks parquet-sink [--events N] [--events-per-batch N] [--runs N]
       flumen-benchmarks export --dir DIR [--lines N] [--events N] [--files N]
       flumen-benchmarks files --dir DIR [--workload wordcount|q0|q1|q2|q5|q7] [--system flumen|datafusion]
       flumen-benchmarks memory [--events N] [--event-rate N]
       flumen-benchmarks latency [--workload wordcount|q5] [--rate N] [--interval-ms N] [--seconds N]
       flumen-benchmarks state [--query count|join] [--keys N] [--rows-per-batch N] [--batches N] [--checkpoint DIR] [--partitions N] [--memory SIZE] [--set NAME=VALUE]";

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("wordcount") => wordcount(&args[1..]).await,
        Some("nexmark") => nexmark_suite(&args[1..]).await,
        Some("kafka") => kafka::run(&args[1..]).await,
        Some("parquet-sink") => sink::run(&args[1..]).await,
        Some("export") => compare::export(&args[1..]).await,
        Some("files") => compare::files(&args[1..]).await,
        Some("memory") => memory::run(&args[1..]).await,
        Some("latency") => latency::run(&args[1..]).await,
        Some("state") => state::run(&args[1..]).await,
        _ => bail!("{USAGE}"),
    }
}

fn flag(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name} takes a whole number")),
        None => Ok(default),
    }
}

/// The value after `name`, if given.
fn text_flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

async fn nexmark_suite(args: &[String]) -> Result<()> {
    let events = flag(args, "--events", 10_000_000)?;
    let per_batch = flag(args, "--events-per-batch", 1_000_000)?;
    let only = text_flag(args, "--query").map(str::to_string);
    let cluster = text_flag(args, "--cluster");
    let batch_rows = 8192;
    let bids = Arc::new(nexmark::generate(Table::Bid, events, batch_rows));
    let persons = nexmark::generate(Table::Person, events, batch_rows);
    let auctions = nexmark::generate(Table::Auction, events, batch_rows);
    let data = nexmark::Data {
        bids,
        persons: Arc::new(persons),
        auctions: Arc::new(auctions),
        events,
    };
    println!(
        "nexmark: {events} events ({} bids), {per_batch} events per micro-batch, 2 cores",
        data.rows_read("q0")
    );
    for (name, sql) in nexmark::QUERIES {
        if only.as_deref().is_some_and(|q| q != name) {
            continue;
        }
        let (rate, out_rows, batches, per_batch_ms) =
            nexmark::run_query(sql, &data, data.rows_read(name), per_batch, cluster).await?;
        println!(
            "  {name}: {rate:>12.0} events/s ({:>10.0} per core), {batches} batches ({per_batch_ms:.1} ms each), {out_rows} rows out",
            rate / 2.0
        );
        println!(
            "{{\"suite\":\"nexmark\",\"query\":\"{name}\",\"events\":{events},\"events_per_s\":{rate:.0},\"events_per_s_per_core\":{:.0}}}",
            rate / 2.0
        );
    }
    Ok(())
}

/// Lines of `words_per_line` words drawn from `distinct` words, with a fixed seed.
fn generate(
    lines: usize,
    words_per_line: usize,
    distinct: usize,
    batches: usize,
) -> (SchemaRef, Vec<RecordBatch>) {
    let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
    let vocabulary: Vec<String> = (0..distinct).map(|i| format!("w{i:05}")).collect();
    let mut rng = SmallRng::seed_from_u64(7);
    let per_batch = lines.div_ceil(batches);
    let mut out = Vec::new();
    let mut made = 0;
    while made < lines {
        let n = per_batch.min(lines - made);
        let mut text = Vec::with_capacity(n);
        for _ in 0..n {
            let mut line = String::with_capacity(words_per_line * 7);
            for w in 0..words_per_line {
                if w > 0 {
                    line.push(' ');
                }
                line.push_str(&vocabulary[rng.random_range(0..distinct)]);
            }
            text.push(line);
        }
        out.push(
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(text))]).unwrap(),
        );
        made += n;
    }
    (schema, out)
}

async fn wordcount(args: &[String]) -> Result<()> {
    let lines = flag(args, "--lines", 1_000_000)?;
    let batches = flag(args, "--batches", 10)?;
    let words_per_line = flag(args, "--words-per-line", 10)?;
    let distinct = flag(args, "--distinct", 10_000)?;
    let (schema, data) = generate(lines, words_per_line, distinct, batches);

    // DataFusion, one batch query over all the data: the ceiling.
    let session = SessionContext::new();
    let table = MemTable::try_new(schema.clone(), vec![data.clone()])?;
    let started = Instant::now();
    let result = session
        .read_table(Arc::new(table))?
        .select(vec![
            string_to_array(col("line"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
        ])?
        .unnest_columns(&["word"])?
        .aggregate(vec![col("word")], vec![count(lit(1)).alias("n")])?
        .collect()
        .await?;
    let batch_secs = started.elapsed().as_secs_f64();
    let batch_groups: usize = result.iter().map(|b| b.num_rows()).sum();

    // Flumen: the same data as `batches` micro-batches with running counts.
    let mut builder =
        StreamingContext::builder(Duration::from_millis(100)).with_trigger(Trigger::AvailableNow);
    let cluster = text_flag(args, "--cluster");
    if let Some(url) = cluster {
        builder = builder.with_cluster(url);
    }
    let ctx = builder.build()?;
    let (queue, stream) = ctx.queue_stream("lines", schema, true)?;
    let sink = MemorySink::new("counts");
    stream
        .flat_map(
            string_to_array(col("line"), lit(" "), lit(ScalarValue::Utf8(None))).alias("word"),
        )?
        .update_state_by_key(vec![col("word")], vec![count(lit(1)).alias("n")])?
        .write_to(sink.clone())?;
    for b in data {
        queue.push(vec![b])?;
    }
    let started = Instant::now();
    ctx.start().await?;
    ctx.await_termination().await?;
    let stream_secs = started.elapsed().as_secs_f64();
    let last = sink.last();
    let groups: usize = last.iter().map(|b| b.num_rows()).sum();
    let total: i64 = last
        .iter()
        .map(|b| {
            let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            (0..n.len()).map(|i| n.value(i)).sum::<i64>()
        })
        .sum();
    if groups != batch_groups || total as usize != lines * words_per_line {
        bail!(
            "wrong result: {groups} groups / {total} words, expected {batch_groups} / {}",
            lines * words_per_line
        );
    }
    let flumen_rate = lines as f64 / stream_secs;
    let df_rate = lines as f64 / batch_secs;
    let recent = ctx.recent_batches();
    let per_batch_ms = recent
        .iter()
        .map(|b| b.processing_time.as_secs_f64() * 1000.0)
        .sum::<f64>()
        / recent.len().max(1) as f64;
    println!(
        "wordcount: {lines} lines x {words_per_line} words, {distinct} distinct, {} batches, on {}",
        recent.len(),
        cluster.unwrap_or("this process")
    );
    println!("  processing per batch (mean):            {per_batch_ms:>12.1} ms");
    println!(
        "  flumen (micro-batches, running counts): {:>12.0} lines/s  ({stream_secs:.3} s)",
        flumen_rate
    );
    println!(
        "  datafusion (one batch query):           {:>12.0} lines/s  ({batch_secs:.3} s)",
        df_rate
    );
    println!(
        "  flumen / datafusion:                    {:>12.1} %",
        100.0 * flumen_rate / df_rate
    );
    println!(
        "{{\"suite\":\"wordcount\",\"lines\":{lines},\"batches\":{batches},\"flumen_lines_per_s\":{flumen_rate:.0},\"datafusion_lines_per_s\":{df_rate:.0}}}"
    );
    Ok(())
}
