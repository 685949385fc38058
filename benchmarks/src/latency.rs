//! Latency at a fixed input rate: the real clock, batches every `--interval-ms`, a
//! generator producing `--rate` records per second (the rate source for the word count,
//! the `nexmark` connector for q5). A record arrives when the generator makes it due;
//! a batch at time T takes the records due in (T − interval, T], spread evenly, and
//! commits at T + total delay (scheduling delay + processing). So each record's latency
//! (arrival → its batch's commit) follows from the batch metrics; the first two
//! batches (start-up) are left out.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flumen_engine::SystemClock;
use flumen_sql::FlumenSession;

use crate::flag;

pub async fn run(args: &[String]) -> Result<()> {
    let rate = flag(args, "--rate", 50_000)?;
    let interval_ms = flag(args, "--interval-ms", 100)?;
    let seconds = flag(args, "--seconds", 10)?;
    let workload = crate::text_flag(args, "--workload").unwrap_or("wordcount");
    let (registry, _rows) = crate::nexmark::blackhole_registry();
    let mut session = FlumenSession::new(registry, Arc::new(SystemClock));
    let setup = match workload {
        // Lines of 10 words from 10,000, made from the rate source's value.
        "wordcount" => format!(
            "SET output_mode = 'update';
             CREATE STREAM r WITH (connector = 'rate', rows_per_second = '{rate}');
             CREATE STREAM lines AS SELECT concat_ws(' ', {}) AS line FROM r;
             INSERT INTO out SELECT word, count(*) AS n FROM
               (SELECT unnest(string_to_array(line, ' ')) AS word FROM lines) GROUP BY word;",
            (0..10)
                .map(|k| format!("concat('w', (value * {} + {k}) % 10000)", 7919 + k * 104_729))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "q5" => format!(
            "CREATE STREAM bid (auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
               channel TEXT NOT NULL, url TEXT NOT NULL, date_time TIMESTAMP NOT NULL, extra TEXT NOT NULL,
               WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', table = 'bid', event_rate = '{}');
             INSERT INTO out {};",
            // Bids are 46 of every 50 events: this many events give `rate` bids a second.
            rate * 50 / 46,
            crate::nexmark::QUERIES
                .iter()
                .find(|(n, _)| *n == "q5")
                .map(|(_, sql)| *sql)
                .context("q5")?
        ),
        other => bail!("unknown workload '{other}': wordcount or q5"),
    };
    session
        .execute_script(&format!(
            "SET batch_interval = '{interval_ms} ms';
             CREATE SINK out WITH (connector = 'blackhole');
             {setup}"
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
    let batches = session
        .queries()
        .next()
        .map(|q| q.ctx.recent_batches())
        .unwrap_or_default();
    session
        .stop_all()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let interval = interval_ms as f64;
    let mut latencies = Vec::new();
    let mut records = 0u64;
    for b in batches.iter().skip(2) {
        let n = b.num_input_rows();
        records += n;
        let delay = b.total_delay.as_secs_f64() * 1000.0;
        for k in 0..n {
            // Arrived at T − interval + (k + ½) · interval / n.
            latencies.push(delay + interval - (k as f64 + 0.5) * interval / n as f64);
        }
    }
    if latencies.is_empty() {
        bail!("no batch ran after start-up");
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let (p50, p99, max) = (at(0.50), at(0.99), *latencies.last().unwrap_or(&0.0));
    let seconds_run = batches.len().saturating_sub(2) as f64 * interval / 1000.0;
    println!(
        "latency: {workload} at {rate}/s, {interval_ms} ms batches, {} batches: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({:.0} records/s kept up)",
        batches.len().saturating_sub(2),
        records as f64 / seconds_run.max(f64::EPSILON)
    );
    println!(
        "{{\"suite\":\"latency\",\"workload\":\"{workload}\",\"rate\":{rate},\"interval_ms\":{interval_ms},\"p50_ms\":{p50:.1},\"p99_ms\":{p99:.1},\"max_ms\":{max:.1}}}"
    );
    Ok(())
}
