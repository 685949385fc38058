//! Kafka → count per key → blackhole: records/s through the `kafka` source, JSON
//! values of about 100 bytes, the broker (scripts/services.sh: Tansu) on this machine.
//! Producing the records is not timed; the query runs under `available_now` from the
//! earliest offsets until it has read them all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flumen_connectors::rskafka::client::ClientBuilder;
use flumen_connectors::rskafka::client::partition::{Compression, UnknownTopicHandling};
use flumen_connectors::rskafka::record::Record;
use flumen_engine::SystemClock;
use flumen_sql::FlumenSession;

use crate::nexmark::blackhole_registry;

pub async fn run(args: &[String]) -> Result<()> {
    let records = crate::flag(args, "--records", 2_000_000)?;
    let partitions = crate::flag(args, "--partitions", 2)? as i32;
    let max_per_batch = crate::flag(args, "--max-records-per-batch", 500_000)?;
    let broker = std::env::var("FLUMEN_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        ClientBuilder::new(vec![broker.clone()]).build(),
    )
    .await
    .with_context(|| format!("no Kafka broker at {broker}: run scripts/services.sh start"))??;
    let topic = format!(
        "bench-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    client
        .controller_client()?
        .create_topic(&topic, partitions, 1, 5_000)
        .await?;
    let produce_started = Instant::now();
    let mut value_bytes = 0usize;
    for p in 0..partitions {
        let pc = client
            .partition_client(&topic, p, UnknownTopicHandling::Retry)
            .await?;
        let mine = (p as usize..records).step_by(partitions as usize);
        let all: Vec<usize> = mine.collect();
        for chunk in all.chunks(5_000) {
            let batch: Vec<Record> = chunk
                .iter()
                .map(|i| {
                    let v = format!(
                        r#"{{"key":"k{:04}","user":{},"amount":{}.{:02},"note":"nexmark-like event {:06}"}}"#,
                        i % 1000,
                        (i * 7919) % 100_000,
                        i % 500,
                        i % 100,
                        i % 1_000_000
                    );
                    value_bytes += v.len();
                    Record {
                        key: None,
                        value: Some(v.into_bytes()),
                        headers: BTreeMap::new(),
                        timestamp: flumen_connectors::rskafka::chrono::Utc::now(),
                    }
                })
                .collect();
            pc.produce(batch, Compression::NoCompression).await?;
        }
    }
    println!(
        "kafka: produced {records} records ({} bytes per value on average) to {topic} ({partitions} partitions) in {:.1} s",
        value_bytes / records.max(1),
        produce_started.elapsed().as_secs_f64()
    );
    // The broker's own ceiling: every record fetched with the source's fetch size,
    // partitions in parallel, nothing decoded.
    let fetch_started = Instant::now();
    let mut fetched = 0usize;
    let mut values: Vec<Vec<u8>> = Vec::with_capacity(records);
    let fetches = (0..partitions).map(|p| {
        let client = &client;
        let topic = &topic;
        async move {
            let pc = client
                .partition_client(topic, p, UnknownTopicHandling::Error)
                .await?;
            let mut out = Vec::new();
            let mut offset = 0i64;
            loop {
                let (recs, high) = pc.fetch_records(offset, 1..16 * 1024 * 1024, 500).await?;
                for r in recs {
                    offset = r.offset + 1;
                    out.push(r.record.value.unwrap_or_default());
                }
                if offset >= high {
                    break;
                }
            }
            anyhow::Ok(out)
        }
    });
    for part in futures::future::try_join_all(fetches).await? {
        fetched += part.len();
        values.extend(part);
    }
    let fetch_rate = fetched as f64 / fetch_started.elapsed().as_secs_f64();
    println!("  broker fetch only (rskafka, no decoding): {fetch_rate:>12.0} records/s");
    // The engine's own share: the source's JSON decoder over the same values in memory.
    let schema = Arc::new(flumen_engine::datafusion::arrow::datatypes::Schema::new(
        vec![
            flumen_engine::datafusion::arrow::datatypes::Field::new(
                "key",
                flumen_engine::datafusion::arrow::datatypes::DataType::Utf8,
                true,
            ),
            flumen_engine::datafusion::arrow::datatypes::Field::new(
                "user",
                flumen_engine::datafusion::arrow::datatypes::DataType::Int64,
                true,
            ),
            flumen_engine::datafusion::arrow::datatypes::Field::new(
                "amount",
                flumen_engine::datafusion::arrow::datatypes::DataType::Float64,
                true,
            ),
            flumen_engine::datafusion::arrow::datatypes::Field::new(
                "note",
                flumen_engine::datafusion::arrow::datatypes::DataType::Utf8,
                true,
            ),
        ],
    ));
    let mut options = flumen_engine::registry::ConnectorOptions::new();
    options.insert("format".into(), "json".into());
    let decoder = flumen_connectors::format::Decoder::from_options("ev", schema, &options)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let lines: Vec<&str> = values
        .iter()
        .map(|v| std::str::from_utf8(v))
        .collect::<std::result::Result<_, _>>()?;
    let decode_started = Instant::now();
    let mut decoded = 0usize;
    for chunk in lines.chunks(250_000) {
        decoded += decoder
            .decode_keeping(chunk, |i| i.to_string())
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .batch
            .num_rows();
    }
    let decode_rate = decoded as f64 / decode_started.elapsed().as_secs_f64();
    println!("  JSON decoding only (one core, in memory): {decode_rate:>12.0} records/s");
    drop(lines);
    drop(values);
    let (registry, sink) = blackhole_registry();
    let mut session = FlumenSession::new(registry, Arc::new(SystemClock));
    session
        .execute_script(&format!(
            "SET trigger = 'available_now'; SET batch_interval = '100 ms';
             CREATE STREAM ev (key TEXT, user BIGINT, amount DOUBLE, note TEXT)
               WITH (connector = 'kafka', bootstrap_servers = '{broker}', topic = '{topic}',
                     starting_offsets = 'earliest', format = 'json', partitions = '{partitions}',
                     max_records_per_batch = '{max_per_batch}');
             CREATE SINK out WITH (connector = 'blackhole');"
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    session
        .execute("INSERT INTO out SELECT key, count(*) AS n FROM ev GROUP BY key")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    session
        .await_all()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let batches = session
        .queries()
        .next()
        .map(|q| q.ctx.recent_batches())
        .unwrap_or_default();
    let read: u64 = batches
        .iter()
        .flat_map(|b| b.input_rows.iter().map(|(_, n)| *n))
        .sum();
    if read != records as u64 {
        bail!("read {read} records, produced {records}");
    }
    let rate = records as f64 / secs;
    println!(
        "  kafka json count-per-key: {rate:>12.0} records/s ({:>10.0} per core), {} batches, {} rows out",
        rate / 2.0,
        batches.len(),
        sink.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "{{\"suite\":\"kafka\",\"records\":{records},\"partitions\":{partitions},\"records_per_s\":{rate:.0},\"records_per_s_per_core\":{:.0},\"broker_fetch_per_s\":{fetch_rate:.0},\"json_decode_per_s\":{decode_rate:.0}}}",
        rate / 2.0
    );
    Ok(())
}
