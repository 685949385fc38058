//! The state benchmark: a running count over uniformly random keys (`SELECT k, count(*)
//! FROM s GROUP BY k`, update mode, into a blackhole), `--rows-per-batch` rows per
//! micro-batch, `--batches` batches, `--keys` distinct keys; pre-generated, so only the
//! query is timed. Reports each batch's processing time (the first and the last ones
//! are what tell whether a batch costs what it reads or what the state holds), the
//! process's peak RSS, the state's bytes spilled to disk, and, with `--checkpoint`, the
//! checkpoint bytes each batch wrote (deltas of the keys it touched, and the occasional
//! full snapshot) against the bytes of the keys it touched (`k` and the count: 16 bytes
//! a key). `--partitions N` and `--memory SIZE` set `state_partitions` and
//! `state_memory`.
//!
//! `--query join` runs an interval join instead: two streams `a` and `b` (half the rows
//! each, keys uniformly random over `--keys`, event times one second apart per batch),
//! `a.k = b.k AND a.ts BETWEEN b.ts - 1 day AND b.ts + 1 day`, so the state keeps every
//! row of the run: a batch costs its rows and their matches, or, if it reads the state,
//! ever more. Over the same two streams, `--query regular-join` is the join without a
//! time bound (`a.k = b.k`, update mode), `--query left-join` the regular left outer
//! join (a changelog: `a` rows without a match padded, retracted at their first
//! match) and `--query left-join-count` a `GROUP BY a.k % 1000` with `COUNT`s over
//! that left join (signed sums, a changelog of its groups).
//!
//! `--query histogram` runs an aggregate over the running count (`SELECT n, count(*)
//! FROM (SELECT k, count(*) AS n ...) GROUP BY n`): the counts' changes as a changelog
//! into a second running aggregate. `--query histogram-recomputed` adds a `STDDEV(n)`,
//! which cannot take a row back out, so the same query keeps the counts whole and
//! recomputes the histogram over them each batch (`Materialize`): the path the first
//! took before.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::SystemClock;
use flumen_sql::FlumenSession;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::nexmark::{Pregenerated, blackhole_registry};
use crate::{flag, text_flag};

pub async fn run(args: &[String]) -> Result<()> {
    let keys = flag(args, "--keys", 1_000_000)? as i64;
    let rows_per_batch = flag(args, "--rows-per-batch", 1_000_000)?;
    let batches = flag(args, "--batches", 20)?;
    let checkpoint = text_flag(args, "--checkpoint");
    let partitions = text_flag(args, "--partitions");
    let memory = text_flag(args, "--memory");
    let query = text_flag(args, "--query").unwrap_or("count");
    let join = match query {
        "count" | "histogram" | "histogram-recomputed" => false,
        "join" | "regular-join" | "left-join" | "left-join-count" => true,
        other => {
            return Err(anyhow!(
                "--query {other}: count, histogram, histogram-recomputed, join, regular-join, \
                 left-join or left-join-count"
            ));
        }
    };
    let mut rng = SmallRng::seed_from_u64(42);
    // 8,192-row batches, `rows_per_batch / 8192` of them per micro-batch (per side for
    // the join, each side half the rows).
    let chunk = 8_192;
    let per_batch = if join {
        (rows_per_batch / 2).div_ceil(chunk).max(1)
    } else {
        rows_per_batch.div_ceil(chunk).max(1)
    };
    let mut generate = |with_time: bool| -> Vec<RecordBatch> {
        let mut fields = vec![Field::new("k", DataType::Int64, false)];
        if with_time {
            fields.push(Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
        }
        let schema = Arc::new(Schema::new(fields));
        (0..per_batch * batches)
            .map(|i| {
                let k: Int64Array = (0..chunk)
                    .map(|_| Some(rng.random_range(0..keys)))
                    .collect();
                let mut columns: Vec<datafusion::arrow::array::ArrayRef> = vec![Arc::new(k)];
                if with_time {
                    let second = 1_767_225_600_000 + (i / per_batch) as i64 * 1000;
                    let ts: TimestampMillisecondArray = (0..chunk)
                        .map(|_| Some(second + rng.random_range(0..1000)))
                        .collect();
                    columns.push(Arc::new(ts));
                }
                RecordBatch::try_new(Arc::clone(&schema), columns).expect("a batch")
            })
            .collect()
    };
    let (mut registry, _rows) = blackhole_registry();
    let sides: &[&str] = if join {
        &["pregenerated_a", "pregenerated_b"]
    } else {
        &["pregenerated"]
    };
    for name in sides {
        registry.register_source(
            name,
            Arc::new(Pregenerated {
                batches: Arc::new(generate(join)),
                per_batch,
            }),
        );
    }
    let mut session = FlumenSession::new(registry, Arc::new(SystemClock));
    let mut script = String::from(
        "SET trigger = 'available_now'; SET batch_interval = '100 ms'; SET output_mode = 'update';",
    );
    if let Some(n) = partitions {
        script.push_str(&format!("SET state_partitions = '{n}';"));
    }
    if let Some(m) = memory {
        script.push_str(&format!("SET state_memory = '{m}';"));
    }
    // `--set name=value`: any session setting (`SET name = 'value'`), for experiments.
    if let Some(set) = text_flag(args, "--set") {
        let Some((name, value)) = set.split_once('=') else {
            return Err(anyhow!("--set {set}: give name=value"));
        };
        script.push_str(&format!("SET {name} = '{value}';"));
    }
    if let Some(dir) = checkpoint {
        std::fs::create_dir_all(dir)?;
        script.push_str(&format!("SET checkpoint_location = '{dir}';"));
    }
    let sides = "CREATE STREAM a (k BIGINT NOT NULL, ts TIMESTAMP NOT NULL) WITH (connector = 'pregenerated_a');
         CREATE STREAM b (k BIGINT NOT NULL, ts TIMESTAMP NOT NULL) WITH (connector = 'pregenerated_b');
         CREATE SINK out WITH (connector = 'blackhole');";
    let regular = match query {
        "regular-join" => {
            Some("INSERT INTO out SELECT a.k, a.ts AS ats, b.ts AS bts FROM a JOIN b ON a.k = b.k;")
        }
        "left-join" => Some(
            "INSERT INTO out SELECT a.k, a.ts AS ats, b.ts AS bts FROM a LEFT JOIN b ON a.k = b.k;",
        ),
        "left-join-count" => Some(
            "INSERT INTO out SELECT a.k % 1000 AS g, count(*) AS n, count(b.ts) AS matched
               FROM a LEFT JOIN b ON a.k = b.k GROUP BY a.k % 1000;",
        ),
        _ => None,
    };
    if let Some(q) = regular {
        script.push_str(sides);
        script.push_str(q);
    } else {
        script.push_str(if join {
            "SET output_mode = 'append';
         CREATE STREAM a (k BIGINT NOT NULL, ts TIMESTAMP NOT NULL,
                          WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH (connector = 'pregenerated_a');
         CREATE STREAM b (k BIGINT NOT NULL, ts TIMESTAMP NOT NULL,
                          WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH (connector = 'pregenerated_b');
         CREATE SINK out WITH (connector = 'blackhole');
         INSERT INTO out SELECT a.k, a.ts AS ats, b.ts AS bts FROM a JOIN b
           ON a.k = b.k AND a.ts BETWEEN b.ts - INTERVAL '1' DAY AND b.ts + INTERVAL '1' DAY;"
        } else {
            match query {
                "histogram" => {
                    "CREATE STREAM s (k BIGINT NOT NULL) WITH (connector = 'pregenerated');
         CREATE SINK out WITH (connector = 'blackhole');
         INSERT INTO out SELECT n, count(*) AS keys
           FROM (SELECT k, count(*) AS n FROM s GROUP BY k) GROUP BY n;"
                }
                "histogram-recomputed" => {
                    "CREATE STREAM s (k BIGINT NOT NULL) WITH (connector = 'pregenerated');
         CREATE SINK out WITH (connector = 'blackhole');
         INSERT INTO out SELECT n, count(*) AS keys, stddev(n) AS spread
           FROM (SELECT k, count(*) AS n FROM s GROUP BY k) GROUP BY n;"
                }
                _ => {
                    "CREATE STREAM s (k BIGINT NOT NULL) WITH (connector = 'pregenerated');
         CREATE SINK out WITH (connector = 'blackhole');
         INSERT INTO out SELECT k, count(*) AS n FROM s GROUP BY k;"
                }
            }
        });
    }
    session
        .execute_script(&script)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    session.await_all().await.map_err(|e| anyhow!("{e}"))?;
    let q = session
        .queries()
        .next()
        .ok_or_else(|| anyhow!("no query"))?;
    let batches: Vec<_> = q
        .ctx
        .recent_batches()
        .into_iter()
        .filter(|b| b.num_input_rows() > 0)
        .collect();
    let times: Vec<f64> = batches
        .iter()
        .map(|b| b.processing_time.as_secs_f64() * 1000.0)
        .collect();
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return Err(anyhow!("no batch ran"));
    };
    let state_rows = q.metrics.snapshot().state_rows;
    let spilled = batches
        .iter()
        .filter_map(|b| b.operators.first().map(|o| o.spilled_bytes))
        .max()
        .unwrap_or(0);
    // Checkpoint bytes per batch against the bytes of the keys it touched (the rows it
    // emitted in update mode, 16 bytes each; the join: the rows it kept, 16 bytes each).
    let ratios: Vec<f64> = batches
        .iter()
        .filter_map(|b| {
            let written = b.operators.first()?.checkpoint_bytes as f64;
            let touched = if join {
                b.num_input_rows()
            } else {
                b.output_rows
            };
            (touched > 0).then(|| written / (touched as f64 * 16.0))
        })
        .collect();
    let mean_ratio = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    let max_ratio = ratios.iter().cloned().fold(0.0, f64::max);
    let checkpoint_bytes: u64 = batches
        .iter()
        .filter_map(|b| b.operators.first().map(|o| o.checkpoint_bytes))
        .sum();
    let peak = crate::memory::peak_rss_mib()?;
    let each: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    println!("batch ms: {}", each.join(" "));
    println!(
        "state{}: {keys} keys, {batches} batches of {rows_per_batch} rows: first batch {first:.0} ms, last {last:.0} ms ({:.2}x), {:.0} rows/s over all, peak RSS {peak:.0} MiB, {state_rows} state rows, {spilled} bytes spilled{}",
        if join {
            format!(" ({query})")
        } else {
            String::new()
        },
        last / first,
        (rows_per_batch * times.len()) as f64 / (times.iter().sum::<f64>() / 1000.0),
        if checkpoint.is_some() {
            format!(
                ", checkpoints {:.0} bytes/batch: {mean_ratio:.2}x the touched keys' bytes on average, {max_ratio:.2}x at most",
                checkpoint_bytes as f64 / times.len() as f64
            )
        } else {
            String::new()
        },
        batches = times.len(),
    );
    println!(
        "{{\"suite\":\"{}\",\"keys\":{keys},\"rows_per_batch\":{rows_per_batch},\"batches\":{},\"first_batch_ms\":{first:.1},\"last_batch_ms\":{last:.1},\"peak_rss_mib\":{peak:.0},\"state_rows\":{state_rows},\"spilled_bytes\":{spilled},\"checkpoint_bytes\":{checkpoint_bytes},\"checkpoint_ratio_mean\":{mean_ratio:.2},\"checkpoint_ratio_max\":{max_ratio:.2}}}",
        match query {
            "count" => "state".to_string(),
            "join" => "state-join".to_string(),
            other => format!("state-{other}"),
        },
        times.len()
    );
    Ok(())
}
