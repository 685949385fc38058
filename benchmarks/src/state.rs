//! The state benchmark: a running count over uniformly random keys (`SELECT k, count(*)
//! FROM s GROUP BY k`, update mode, into a blackhole), `--rows-per-batch` rows per
//! micro-batch, `--batches` batches, `--keys` distinct keys; pre-generated, so only the
//! query is timed. Reports each batch's processing time (the first and the last ones
//! are what tell whether a batch costs what it reads or what the state holds), the
//! process's peak RSS, and, with `--checkpoint`, the bytes of the newest state snapshot
//! (what each checkpoint of this operator writes today: all of its state).

use std::sync::Arc;

use anyhow::{Result, anyhow};
use datafusion::arrow::array::Int64Array;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
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
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    let mut rng = SmallRng::seed_from_u64(42);
    // 8,192-row batches, `rows_per_batch / 8192` of them per micro-batch.
    let chunk = 8_192;
    let data: Vec<RecordBatch> = (0..(rows_per_batch * batches).div_ceil(chunk))
        .map(|_| {
            let k: Int64Array = (0..chunk)
                .map(|_| Some(rng.random_range(0..keys)))
                .collect();
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(k)]).expect("a batch")
        })
        .collect();
    let (mut registry, _rows) = blackhole_registry();
    registry.register_source(
        "pregenerated",
        Arc::new(Pregenerated {
            batches: Arc::new(data),
            per_batch: rows_per_batch.div_ceil(chunk).max(1),
        }),
    );
    let mut session = FlumenSession::new(registry, Arc::new(SystemClock));
    let mut script = String::from(
        "SET trigger = 'available_now'; SET batch_interval = '100 ms'; SET output_mode = 'update';",
    );
    if let Some(dir) = checkpoint {
        std::fs::create_dir_all(dir)?;
        script.push_str(&format!("SET checkpoint_location = '{dir}';"));
    }
    script.push_str(
        "CREATE STREAM s (k BIGINT NOT NULL) WITH (connector = 'pregenerated');
         CREATE SINK out WITH (connector = 'blackhole');
         INSERT INTO out SELECT k, count(*) AS n FROM s GROUP BY k;",
    );
    session
        .execute_script(&script)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    session.await_all().await.map_err(|e| anyhow!("{e}"))?;
    let q = session
        .queries()
        .next()
        .ok_or_else(|| anyhow!("no query"))?;
    let times: Vec<f64> = q
        .ctx
        .recent_batches()
        .iter()
        .filter(|b| b.num_input_rows() > 0)
        .map(|b| b.processing_time.as_secs_f64() * 1000.0)
        .collect();
    let (Some(first), Some(last)) = (times.first(), times.last()) else {
        return Err(anyhow!("no batch ran"));
    };
    let state_rows = q.metrics.snapshot().state_rows;
    let snapshot_bytes = match checkpoint {
        Some(dir) => newest_snapshot_bytes(&format!("{dir}/queries/out/state"))?,
        None => 0,
    };
    let peak = crate::memory::peak_rss_mib()?;
    println!(
        "state: {keys} keys, {batches} batches of {rows_per_batch} rows: first batch {first:.0} ms, last {last:.0} ms ({:.2}x), {:.0} rows/s over all, peak RSS {peak:.0} MiB, {state_rows} state rows{}",
        last / first,
        (rows_per_batch * times.len()) as f64 / (times.iter().sum::<f64>() / 1000.0),
        if checkpoint.is_some() {
            format!(", newest state snapshot {snapshot_bytes} bytes")
        } else {
            String::new()
        }
    );
    println!(
        "{{\"suite\":\"state\",\"keys\":{keys},\"rows_per_batch\":{rows_per_batch},\"batches\":{},\"first_batch_ms\":{first:.1},\"last_batch_ms\":{last:.1},\"peak_rss_mib\":{peak:.0},\"state_rows\":{state_rows},\"snapshot_bytes\":{snapshot_bytes}}}",
        times.len()
    );
    Ok(())
}

/// The bytes of the newest snapshot under `dir` (`state/<batch id>/`).
fn newest_snapshot_bytes(dir: &str) -> Result<u64> {
    let newest = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .max_by_key(|e| e.file_name());
    let Some(newest) = newest else {
        return Ok(0);
    };
    let mut bytes = 0;
    for f in std::fs::read_dir(newest.path())? {
        bytes += f?.metadata()?.len();
    }
    Ok(bytes)
}
