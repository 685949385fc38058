//! Nexmark bids → `files` sink (Parquet): rows/s and MB/s, and the cost of
//! exactly-once — the same query with a checkpoint (offset log, commit log) and
//! without. The sink's own commit log (`_flumen_log`) is written in both.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use flumen_connectors::nexmark::Table;
use flumen_engine::SystemClock;
use flumen_sql::FlumenSession;

use crate::nexmark::Pregenerated;

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| {
                    let m = e.metadata().ok();
                    match m {
                        Some(m) if m.is_dir() => dir_bytes(&e.path()),
                        Some(m) => m.len(),
                        None => 0,
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// One run: seconds, bytes written, batches.
async fn once(
    bids: &Arc<Vec<flumen_engine::datafusion::arrow::record_batch::RecordBatch>>,
    micro_batches: usize,
    checkpoint: bool,
) -> Result<(f64, u64, usize)> {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let base = std::env::temp_dir().join(format!(
        "flumen-bench-sink-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let out = base.join("out");
    let cp = base.join("checkpoint");
    let _ = std::fs::remove_dir_all(&base);
    let mut registry = flumen_connectors::registry();
    registry.register_source(
        "pregenerated",
        Arc::new(Pregenerated {
            batches: Arc::clone(bids),
            per_batch: bids.len().div_ceil(micro_batches).max(1),
        }),
    );
    let mut session = FlumenSession::new(registry, Arc::new(SystemClock));
    let checkpoint_line = if checkpoint {
        format!("SET checkpoint_location = '{}';", cp.display())
    } else {
        String::new()
    };
    session
        .execute_script(&format!(
            "SET trigger = 'available_now'; SET batch_interval = '1 second'; {checkpoint_line}
             CREATE STREAM bid (auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
               channel TEXT NOT NULL, url TEXT NOT NULL, date_time TIMESTAMP NOT NULL, extra TEXT NOT NULL)
               WITH (connector = 'pregenerated');
             CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet');",
            out.display()
        ))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let started = Instant::now();
    session
        .execute("INSERT INTO pq SELECT * FROM bid")
        .await
        .map_err(|e| anyhow!("{e}"))?;
    session.await_all().await.map_err(|e| anyhow!("{e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let batches = session
        .queries()
        .next()
        .map(|q| q.ctx.recent_batches().len())
        .unwrap_or(0);
    if checkpoint && !cp.join("queries/pq/commits").exists() {
        bail!("the checkpointed run wrote no commit log");
    }
    let bytes = dir_bytes(&out);
    let _ = std::fs::remove_dir_all(&base);
    Ok((secs, bytes, batches))
}

pub async fn run(args: &[String]) -> Result<()> {
    let events = crate::flag(args, "--events", 5_000_000)?;
    let per_batch = crate::flag(args, "--events-per-batch", 1_000_000)?;
    let runs = crate::flag(args, "--runs", 3)?;
    let bids = Arc::new(crate::nexmark::generate(Table::Bid, events, 8192));
    let rows: usize = bids.iter().map(|b| b.num_rows()).sum();
    let micro_batches = events.div_ceil(per_batch).max(1);
    println!(
        "parquet-sink: {rows} bids ({events} events), {micro_batches} micro-batches, {runs} runs each, alternating"
    );
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut bytes = 0;
    for _ in 0..runs {
        let (s, b, _) = once(&bids, micro_batches, false).await?;
        off.push(s);
        bytes = b;
        let (s, _, _) = once(&bids, micro_batches, true).await?;
        on.push(s);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut off), median(&mut on));
    for (label, secs) in [("without checkpoint", off), ("with checkpoint   ", on)] {
        println!(
            "  {label}: {:>11.0} rows/s ({:>10.0} per core), {:>6.1} MB/s of Parquet",
            rows as f64 / secs,
            rows as f64 / secs / 2.0,
            bytes as f64 / secs / 1e6
        );
    }
    let cost = (on - off) / off * 100.0;
    println!("  exactly-once cost (checkpoint on vs off, medians): {cost:.1} %");
    println!(
        "{{\"suite\":\"parquet-sink\",\"rows\":{rows},\"rows_per_s\":{:.0},\"rows_per_s_checkpointed\":{:.0},\"mb_per_s\":{:.1},\"exactly_once_cost_pct\":{cost:.1}}}",
        rows as f64 / off,
        rows as f64 / on,
        bytes as f64 / off / 1e6
    );
    Ok(())
}
