//! Peak memory of Nexmark q5 as the stream grows: events generated batch by batch by
//! the `nexmark` connector (nothing pre-generated), batches driven by the manual clock
//! as fast as they run, the process's peak RSS (`VmHWM`) read at the end. Run once per
//! stream length: if closed windows' state is evicted, the peak stays flat.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use flumen_engine::ManualClock;
use flumen_sql::FlumenSession;

use crate::flag;

/// The process's peak resident set size in MiB.
pub(crate) fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

pub async fn run(args: &[String]) -> Result<()> {
    let events = flag(args, "--events", 10_000_000)?;
    let rate = flag(args, "--event-rate", 100_000)?;
    let batches = events.div_ceil(rate);
    let (registry, rows) = crate::nexmark::blackhole_registry();
    let clock = Arc::new(ManualClock::default());
    let mut session = FlumenSession::new(registry, clock);
    let q5 = crate::nexmark::QUERIES
        .iter()
        .find(|(n, _)| *n == "q5")
        .map(|(_, sql)| *sql)
        .context("q5")?;
    session
        .execute_script(&format!(
            "SET batch_interval = '1 second';
             CREATE STREAM bid (auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
               channel TEXT NOT NULL, url TEXT NOT NULL, date_time TIMESTAMP NOT NULL, extra TEXT NOT NULL,
               WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'nexmark', table = 'bid', event_rate = '{rate}', events = '{events}');
             CREATE SINK out WITH (connector = 'blackhole');
             INSERT INTO out {q5};"
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    let mut state_rows = Vec::new();
    for _ in 0..batches {
        session
            .execute("ADVANCE 1 BATCHES")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(q) = session.queries().next()
            && let Some(b) = q.ctx.last_batches(1).pop()
        {
            state_rows.push(b.state_rows);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let peak = peak_rss_mib()?;
    let max_state = state_rows.iter().max().copied().unwrap_or(0);
    println!(
        "memory: q5 over {events} events ({batches} batches of {rate}): peak RSS {peak:.0} MiB, \
         state at most {max_state} rows, {} rows out, {:.0} events/s",
        rows.load(std::sync::atomic::Ordering::Relaxed),
        events as f64 / secs
    );
    println!(
        "{{\"suite\":\"memory\",\"query\":\"q5\",\"events\":{events},\"peak_rss_mib\":{peak:.0},\"max_state_rows\":{max_state}}}"
    );
    session
        .stop_all()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
