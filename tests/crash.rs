//! Exactly-once acceptance: the real `flumen` binary, killed with SIGKILL at 20 moments
//! and restarted on the same checkpoint, then run once more to drain; its committed
//! output must equal one batch computation over all the input — no row lost, none
//! duplicated, the same values.
//!
//! The kill moments come from a fixed seed; whatever they are, the outcome must be the
//! same, which is what the assertions check.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use flumen::engine::datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::common::temp_dir;
use crate::connectors::kafka::{BROKER, client, create_topic, topic};

const KILLS: usize = 20;

/// Runs `script` under the binary `KILLS` times, each killed after a pseudo-random
/// 0.3–1.5 s, then once with `--trigger available-now` to the end.
fn run_with_kills(script: &Path, checkpoint: &Path, seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % 1200
    };
    for _ in 0..KILLS {
        let mut child = Command::new(crate::cli::flumen())
            .args(["--batch-interval", "200 ms", "--checkpoint"])
            .arg(checkpoint)
            .arg("-f")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 + next()));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let out = Command::new(crate::cli::flumen())
        .args([
            "--batch-interval",
            "200 ms",
            "--trigger",
            "available-now",
            "--checkpoint",
        ])
        .arg(checkpoint)
        .arg("-f")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the last run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The files the sink's commit log lists.
fn committed(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir.join("_flumen_log")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_str().unwrap().starts_with('.') {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        for f in v["files"].as_array().unwrap() {
            files.push(dir.join(f.as_str().unwrap()).display().to_string());
        }
    }
    files.sort();
    files.dedup(); // a .compact entry repeats the entries it folded in until it deletes them
    files
}

async fn query(dir: &Path, sql: &str) -> Vec<String> {
    let ctx = SessionContext::new();
    ctx.register_parquet_files("output", committed(dir)).await;
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    crate::common::rows(&batches)
}

trait RegisterFiles {
    async fn register_parquet_files(&self, name: &str, files: Vec<String>);
}

impl RegisterFiles for SessionContext {
    async fn register_parquet_files(&self, name: &str, files: Vec<String>) {
        let df = self
            .read_parquet(files, ParquetReadOptions::default())
            .await
            .unwrap();
        self.register_table(name, df.into_view()).unwrap();
    }
}

fn write_script(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("query.sql");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_to_parquet_survives_20_kills() {
    let work = temp_dir("crash-rate");
    let out = work.join("out");
    let script = write_script(
        &work,
        &format!(
            "CREATE STREAM r WITH (connector = 'rate', rows_per_second = '1000', rows = '20000');
             CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet') AS
               SELECT value, value % 10 AS digit FROM r;",
            out.display()
        ),
    );
    let (script2, cp) = (script.clone(), work.join("checkpoint"));
    tokio::task::spawn_blocking(move || run_with_kills(&script2, &cp, 7))
        .await
        .unwrap();
    assert_eq!(
        query(
            &out,
            "SELECT count(*), count(DISTINCT value), min(value), max(value), sum(digit) FROM output"
        )
        .await,
        vec!["20000|20000|0|19999|90000".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_windowed_aggregate_to_parquet_survives_20_kills() {
    let c = client().await;
    let t = topic("crash");
    create_topic(&c, &t, 2).await;
    // 12,000 events, 5 keys, 10 ms apart in event time: 120 s, twelve 10 s windows;
    // then one event far ahead whose watermark closes them all.
    const N: i64 = 12_000;
    const BASE: i64 = 1_700_000_000_000;
    for p in 0..2i64 {
        let values: Vec<String> = (0..N)
            .filter(|i| i % 2 == p)
            .map(|i| format!(r#"{{"k":"k{}","ts":{}}}"#, i % 5, BASE + i * 10))
            .chain((p == 0).then(|| format!(r#"{{"k":"flush","ts":{}}}"#, BASE + 10_000_000)))
            .collect();
        for chunk in values.chunks(2_000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            crate::connectors::kafka::produce(&c, &t, p as i32, &refs).await;
        }
    }
    let work = temp_dir("crash-kafka");
    let out = work.join("out");
    let script = write_script(
        &work,
        &format!(
            "SET output_mode = 'append';
             CREATE STREAM ev (k TEXT, ts BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{BROKER}',
               topic = '{t}', starting_offsets = 'earliest', format = 'json', max_rate_per_partition = '400');
             CREATE STREAM timed WITH (timestamp = 'et', watermark_delay = '1 second') AS
               SELECT k, to_timestamp_millis(ts) AS et FROM ev;
             CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet') AS
               SELECT window_start, k, count(*) AS n
               FROM TUMBLE(timed, et, INTERVAL '10' SECOND) GROUP BY window_start, window_end, k;",
            out.display()
        ),
    );
    let (script2, cp) = (script.clone(), work.join("checkpoint"));
    tokio::task::spawn_blocking(move || run_with_kills(&script2, &cp, 11))
        .await
        .unwrap();
    // One row per (window, key), each once: 12 windows x 5 keys, 200 events each.
    assert_eq!(
        query(
            &out,
            "SELECT count(*), count(DISTINCT (window_start, k)), min(n), max(n), sum(n) FROM output"
        )
        .await,
        vec!["60|60|200|200|12000".to_string()]
    );
}

/// `SELECT ...` against the test PostgreSQL, rows rendered `a|b`.
pub(crate) async fn pg_rows(sql: &str) -> Vec<String> {
    use flumen::connectors::tokio_postgres;
    let (c, conn) =
        tokio_postgres::connect(crate::connectors::kafka::POSTGRES, tokio_postgres::NoTls)
            .await
            .expect("no PostgreSQL on 127.0.0.1:5432: run scripts/services.sh start");
    tokio::spawn(conn);
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, i64>(i).to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// `SELECT ...` against the test MariaDB, rows rendered `a|b`.
async fn mysql_rows(sql: &str) -> Vec<String> {
    use flumen::connectors::mysql_async::prelude::Queryable;
    let mut c = flumen::connectors::mysql_async::Conn::from_url(crate::connectors::kafka::MYSQL)
        .await
        .expect("no MariaDB on 127.0.0.1:3306: run scripts/services.sh start");
    let rows: Vec<flumen::connectors::mysql_async::Row> = c.query(sql).await.unwrap();
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<i64, _>(i).unwrap().to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_to_postgres_append_and_running_aggregate_upsert_survive_20_kills() {
    database_sinks_survive_kills("postgres", crate::connectors::kafka::POSTGRES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_to_mariadb_append_and_running_aggregate_upsert_survive_20_kills() {
    database_sinks_survive_kills("mysql", crate::connectors::kafka::MYSQL).await;
}

async fn database_sinks_survive_kills(connector: &str, url: &str) {
    let work = temp_dir("crash-pg");
    let suffix = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let (rows, totals) = (
        format!("crash_rows_{suffix}"),
        format!("crash_totals_{suffix}"),
    );
    let script = write_script(
        &work,
        &format!(
            "CREATE STREAM r WITH (connector = 'rate', rows_per_second = '1000', rows = '20000');
             CREATE SINK raw WITH (connector = '{connector}', url = '{url}', table = '{rows}') AS
               SELECT value FROM r;
             SET output_mode = 'update';
             CREATE SINK agg WITH (connector = '{connector}', url = '{url}', table = '{totals}',
                                   mode = 'upsert', key = 'k') AS
               SELECT value % 5 AS k, count(*) AS n, sum(value) AS s FROM r GROUP BY value % 5;"
        ),
    );
    let (script2, cp) = (script.clone(), work.join("checkpoint"));
    tokio::task::spawn_blocking(move || run_with_kills(&script2, &cp, 23))
        .await
        .unwrap();
    let select = async |sql: String| {
        if connector == "postgres" {
            pg_rows(&sql).await
        } else {
            mysql_rows(&sql).await
        }
    };
    // Every row once (a replayed batch found its commit record and wrote nothing).
    assert_eq!(
        select(format!(
            "SELECT count(*), count(DISTINCT value), min(value), max(value) FROM {rows}"
        ))
        .await,
        vec!["20000|20000|0|19999".to_string()]
    );
    // The running totals, as one batch query over all 20,000 values gives them.
    let expected: Vec<String> = (0..5i64)
        .map(|k| {
            let s: i64 = (0..20_000i64).filter(|v| v % 5 == k).sum();
            format!("{k}|4000|{s}")
        })
        .collect();
    assert_eq!(
        select(format!("SELECT k, n, s FROM {totals} ORDER BY k")).await,
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_running_aggregate_to_postgres_survives_20_kills() {
    let c = client().await;
    let t = topic("crash-pg");
    create_topic(&c, &t, 2).await;
    const N: i64 = 12_000;
    for p in 0..2i64 {
        let values: Vec<String> = (0..N)
            .filter(|i| i % 2 == p)
            .map(|i| format!(r#"{{"k":{},"amount":{i}}}"#, i % 5))
            .collect();
        for chunk in values.chunks(2_000) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            crate::connectors::kafka::produce(&c, &t, p as i32, &refs).await;
        }
    }
    let work = temp_dir("crash-kafka-pg");
    let table = format!("crash_kafka_{}", t.replace('-', "_"));
    let url = crate::connectors::kafka::POSTGRES;
    let script = write_script(
        &work,
        &format!(
            "SET output_mode = 'update';
             SET checkpoint_interval = '5';
             CREATE STREAM ev (k BIGINT, amount BIGINT) WITH (connector = 'kafka',
               bootstrap_servers = '{BROKER}', topic = '{t}', starting_offsets = 'earliest',
               format = 'json', max_rate_per_partition = '400');
             CREATE SINK totals WITH (connector = 'postgres', url = '{url}', table = '{table}',
                                      mode = 'upsert', key = 'k') AS
               SELECT k, count(*) AS n, sum(amount) AS s FROM ev GROUP BY k;"
        ),
    );
    let (script2, cp) = (script.clone(), work.join("checkpoint"));
    tokio::task::spawn_blocking(move || run_with_kills(&script2, &cp, 31))
        .await
        .unwrap();
    // The running totals as one batch query over all 12,000 records gives them. State
    // is snapshotted every 5 batches, so each restart rebuilds up to 4 batches of it
    // from Kafka again: re-applied twice, or missed, a batch would change the totals.
    let expected: Vec<String> = (0..5i64)
        .map(|k| {
            let s: i64 = (0..N).filter(|i| i % 5 == k).sum();
            format!("{k}|{}|{s}", N / 5)
        })
        .collect();
    assert_eq!(
        pg_rows(&format!("SELECT k, n, s FROM {table} ORDER BY k")).await,
        expected
    );
}

/// Lines a socket source has logged in its write-ahead log: the committed mark or the
/// end of the newest block file, whichever is further.
fn logged_lines(wal: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(wal) else {
        return 0;
    };
    let mut logged = std::fs::read_to_string(wal.join("committed"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(first) = name.strip_suffix(".block")
            && let (Ok(first), Ok(text)) = (first.parse::<u64>(), std::fs::read_to_string(e.path()))
        {
            logged = logged.max(first + text.lines().count() as u64);
        }
    }
    logged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_with_wal_to_parquet_survives_20_kills() {
    use std::io::Write;
    // A plain TCP text server: each run of `flumen` connects once and gets the next
    // burst of 500 numbered lines. A socket cannot replay, so the harness kills only
    // once the burst is in the write-ahead log (what "received" means for a reliable
    // receiver), at a random moment while the batches that read it run and commit.
    const BURST: u64 = 500;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (send_burst, bursts) = std::sync::mpsc::channel::<u64>();
    let server = std::thread::spawn(move || {
        let mut open = Vec::new();
        while let Ok(b) = bursts.recv() {
            let (mut conn, _) = listener.accept().unwrap();
            let lines: String = (b * BURST..(b + 1) * BURST)
                .map(|i| format!("{{\"id\":{i},\"v\":{}}}\n", i % 7))
                .collect();
            conn.write_all(lines.as_bytes()).unwrap();
            open.push(conn); // kept open until the server ends
        }
    });
    let work = temp_dir("crash-socket");
    let out = work.join("out");
    let checkpoint = work.join("checkpoint");
    let wal = checkpoint.join("sources").join("lines").join("wal");
    let script = write_script(
        &work,
        &format!(
            "CREATE STREAM lines (id BIGINT, v BIGINT) WITH (connector = 'socket',
               host = '127.0.0.1', port = '{port}', format = 'json', wal = 'true',
               block_interval = '50 ms');
             CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet') AS
               SELECT id, v FROM lines;",
            out.display()
        ),
    );
    let cp = checkpoint.clone();
    tokio::task::spawn_blocking(move || {
        let mut state = 41u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % 600
        };
        for b in 0..KILLS as u64 {
            let mut child = Command::new(crate::cli::flumen())
                .args(["--batch-interval", "200 ms", "--checkpoint"])
                .arg(&cp)
                .arg("-f")
                .arg(&script)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            send_burst.send(b).unwrap();
            let started = std::time::Instant::now();
            while logged_lines(&wal) < (b + 1) * BURST {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "burst {b} never reached the write-ahead log in {}",
                    wal.display()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(next()));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
        // The last run replays what the log holds uncommitted, then stops (the server
        // is gone by then: a reconnecting receiver must not hold it up).
        drop(send_burst);
        let last = Command::new(crate::cli::flumen())
            .args([
                "--batch-interval",
                "200 ms",
                "--trigger",
                "available-now",
                "--checkpoint",
            ])
            .arg(&cp)
            .arg("-f")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            last.status.success(),
            "the last run failed: {}",
            String::from_utf8_lossy(&last.stderr)
        );
    })
    .await
    .unwrap();
    server.join().unwrap();
    let n = KILLS as u64 * BURST;
    let v_sum: u64 = (0..n).map(|i| i % 7).sum();
    assert_eq!(
        query(
            &out,
            "SELECT count(*), count(DISTINCT id), min(id), max(id), sum(v) FROM output"
        )
        .await,
        vec![format!("{n}|{n}|0|{}|{v_sum}", n - 1)]
    );
}
