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

/// The files the sink's commit log lists: its entries are `<13 digits>` and
/// `<13 digits>.compact` (a process killed while writing one leaves the object
/// store's staging file, `<name>#<n>`, which the sink ignores too).
///
/// Read while the sink runs, an entry listed may be gone before it is read (folded
/// into a `.compact` entry, which then deletes it): the log is listed again.
pub(crate) fn committed(dir: &Path) -> Vec<String> {
    'listing: loop {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir.join("_flumen_log")).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap();
            let stem = name.strip_suffix(".compact").unwrap_or(name);
            if stem.len() != 13 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let bytes = match std::fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue 'listing,
                Err(e) => panic!("{}: {e}", p.display()),
            };
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            for f in v["files"].as_array().unwrap() {
                files.push(dir.join(f.as_str().unwrap()).display().to_string());
            }
        }
        files.sort();
        files.dedup(); // a .compact entry repeats the entries it folded in until it deletes them
        return files;
    }
}

pub(crate) async fn query(dir: &Path, sql: &str) -> Vec<String> {
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

/// The keyed state store under SIGKILL: a running count and sum over 1,000,000 keys
/// (each key twice), 4 state partitions, incremental checkpoints (deltas, then a full
/// snapshot once they outgrow the state), update mode into Parquet. Each key's final
/// row must hold exactly its two values: a batch lost or applied twice on restore
/// would show as a count of 1 or 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_aggregate_over_a_million_keys_survives_20_kills() {
    const KEYS: i64 = 1_000_000;
    let work = temp_dir("crash-state");
    let out = work.join("out");
    let script = write_script(
        &work,
        &format!(
            "SET output_mode = 'update';
             SET state_partitions = '4';
             CREATE STREAM r WITH (connector = 'rate', rows_per_second = '200000', rows = '{}');
             CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet') AS
               SELECT value % {KEYS} AS k, count(*) AS n, sum(value) AS s FROM r
               GROUP BY value % {KEYS};",
            2 * KEYS,
            out.display()
        ),
    );
    let (script2, cp) = (script.clone(), work.join("checkpoint"));
    tokio::task::spawn_blocking(move || run_with_kills(&script2, &cp, 41))
        .await
        .unwrap();
    // Each key's newest row (count and sum only grow): n = 2, s = k + (k + KEYS).
    assert_eq!(
        query(
            &out,
            &format!(
                "SELECT count(*), sum(CASE WHEN n = 2 AND s = 2 * k + {KEYS} THEN 1 ELSE 0 END)
                 FROM (SELECT k, max(n) AS n, max(s) AS s FROM output GROUP BY k)"
            )
        )
        .await,
        vec![format!("{KEYS}|{KEYS}")]
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

/// A suffix for table names no other run uses.
fn unique_suffix() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

/// `SELECT ...` against the test database of `connector` (`postgres` or `mysql`).
async fn db_rows(connector: &str, sql: &str) -> Vec<String> {
    if connector == "postgres" {
        pg_rows(sql).await
    } else {
        mysql_rows(sql).await
    }
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
    let suffix = unique_suffix();
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
    let select = async |sql: String| db_rows(connector, &sql).await;
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

/// A regular left join whose right side lags (b's value * 2 climbs at 800/s, a's
/// value at 1,000/s): most even rows of `a` are written padded with nulls first and
/// retracted when their match arrives. Through 20 kills, each table ends as the
/// join of all the input: no padded row left behind, none retracted twice; and an
/// aggregate over the join (its groups upserted, each old row retracted) as that
/// aggregate over all the input; so does an aggregate over an aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_outer_join_into_postgres_survives_20_kills() {
    regular_outer_join_survives_kills("postgres", crate::connectors::kafka::POSTGRES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regular_outer_join_into_mariadb_survives_20_kills() {
    regular_outer_join_survives_kills("mysql", crate::connectors::kafka::MYSQL).await;
}

async fn regular_outer_join_survives_kills(connector: &str, url: &str) {
    let work = temp_dir("crash-outer");
    let suffix = unique_suffix();
    let (rows, keyed, counts, hist) = (
        format!("outer_rows_{suffix}"),
        format!("outer_keyed_{suffix}"),
        format!("outer_counts_{suffix}"),
        format!("outer_hist_{suffix}"),
    );
    let join = "SELECT a.value AS k, b.value AS m FROM a LEFT JOIN b ON a.value = b.value * 2";
    let script = write_script(
        &work,
        &format!(
            "CREATE STREAM a WITH (connector = 'rate', rows_per_second = '1000', rows = '2000');
             CREATE STREAM b WITH (connector = 'rate', rows_per_second = '400', rows = '1000');
             CREATE SINK joined WITH (connector = '{connector}', url = '{url}', table = '{rows}') AS {join};
             CREATE SINK keyed WITH (connector = '{connector}', url = '{url}', table = '{keyed}',
                                     mode = 'upsert', key = 'k') AS {join};
             CREATE SINK counts WITH (connector = '{connector}', url = '{url}', table = '{counts}',
                                      mode = 'upsert', key = 'k') AS
               SELECT a.value % 10 AS k, count(*) AS n, count(b.value) AS matched,
                      max(b.value) AS top, min(a.value) FILTER (WHERE b.value IS NULL) AS lonely,
                      count(DISTINCT b.value) AS partners
               FROM a LEFT JOIN b ON a.value = b.value * 2 GROUP BY a.value % 10;
             CREATE SINK hist WITH (connector = '{connector}', url = '{url}', table = '{hist}',
                                    mode = 'upsert', key = 'n') AS
               SELECT n, count(*) AS members, max(k) AS top FROM
                 (SELECT value % 10 AS k, count(*) AS n FROM a GROUP BY value % 10) GROUP BY n;"
        ),
    );
    let (script2, cp) = (script.clone(), work.join("checkpoint"));
    tokio::task::spawn_blocking(move || run_with_kills(&script2, &cp, 31))
        .await
        .unwrap();
    // a LEFT JOIN b over all the rows: even k matches m = k / 2, odd k none.
    let expected: Vec<String> = (0..2000i64)
        .map(|k| format!("{k}|{}", if k % 2 == 0 { k / 2 } else { -1 }))
        .collect();
    let select = async |sql: String| db_rows(connector, &sql).await;
    for table in [&rows, &keyed] {
        let got = select(format!(
            "SELECT k, COALESCE(m, -1) FROM {table} ORDER BY k, m"
        ))
        .await;
        assert_eq!(got.len(), expected.len(), "{table}: {got:?}");
        assert_eq!(got, expected, "{table}");
    }
    // The aggregate over the join (its groups' changes applied as -D old, +I new):
    // 200 rows per k, the even ones all matched — so their padded rows, the lowest
    // unmatched value among them, were all retracted — the odd ones none.
    let expected: Vec<String> = (0..10i64)
        .map(|k| match k % 2 {
            0 => format!("{k}|200|200|{}|-1|200", (1990 + k) / 2),
            _ => format!("{k}|200|0|-1|{k}|0"),
        })
        .collect();
    assert_eq!(
        select(format!(
            "SELECT k, n, matched, COALESCE(top, -1), COALESCE(lonely, -1), partners
             FROM {counts} ORDER BY k"
        ))
        .await,
        expected
    );
    // An aggregate over an aggregate (a histogram of the counts): every group it had
    // on the way left again, retracted; the ten keys end with 200 rows each.
    assert_eq!(
        select(format!("SELECT n, members, top FROM {hist} ORDER BY n")).await,
        vec!["200|10|9".to_string()]
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
    let mut logged = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("committed") && !name.ends_with(".tmp") {
            if let Some(n) = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                logged = logged.max(n);
            }
            continue;
        }
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
    let out2 = work.join("out2");
    let checkpoint = work.join("checkpoint");
    let wal = checkpoint.join("sources").join("lines").join("wal");
    let script = write_script(
        &work,
        &format!(
            "CREATE STREAM lines (id BIGINT, v BIGINT) WITH (connector = 'socket',
               host = '127.0.0.1', port = '{port}', format = 'json', wal = 'true',
               block_interval = '50 ms');
             CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet') AS
               SELECT id, v FROM lines;
             CREATE SINK pq2 WITH (connector = 'files', path = '{}', format = 'parquet') AS
               SELECT id, v FROM lines;",
            out.display(),
            out2.display()
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
    // Both sinks read the one receiver (one connection per run): each gets every line.
    for dir in [&out, &out2] {
        assert_eq!(
            query(
                dir,
                "SELECT count(*), count(DISTINCT id), min(id), max(id), sum(v) FROM output"
            )
            .await,
            vec![format!("{n}|{n}|0|{}|{v_sum}", n - 1)],
            "{}",
            dir.display()
        );
    }
}

/// Sends SIGTERM (a graceful stop) and waits for the process to end.
fn terminate(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("flumen did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes file `i` of the live input: three numbered lines, written elsewhere and
/// renamed in; its modification time is set to one of a few instants (files share
/// them, as files written within the same millisecond do), and every 7th file gets an
/// older time than files already there (a file moved in from elsewhere).
fn write_input_file(dir: &Path, staging: &Path, i: u64) {
    let tmp = staging.join(format!("f{i:05}.txt"));
    let body: String = (0..3).map(|j| format!("{}\n", i * 3 + j)).collect();
    std::fs::write(&tmp, body).unwrap();
    let base = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mtime = if i % 7 == 3 {
        base
    } else {
        base + Duration::from_millis(i / 15)
    };
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, dir.join(format!("f{i:05}.txt"))).unwrap();
}

/// The files source across 25 restarts — graceful (SIGTERM) and SIGKILL, alternating —
/// while files arrive: every file that arrived after the query first started is read
/// exactly once, whatever the modification times (ties, older ones), with
/// `include_existing` false and true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_arriving_live_survive_25_restarts() {
    for include_existing in [false, true] {
        let work = temp_dir("crash-files");
        let (input, staging, out) = (work.join("in"), work.join("staging"), work.join("out"));
        std::fs::create_dir_all(&input).unwrap();
        std::fs::create_dir_all(&staging).unwrap();
        // Five files there before the query's first start.
        const BEFORE: u64 = 5;
        const LIVE: u64 = 300;
        for i in 0..BEFORE {
            write_input_file(&input, &staging, i);
        }
        let script = write_script(
            &work,
            &format!(
                "CREATE STREAM lines (line TEXT) WITH (connector = 'files', path = '{}',
                   include_existing = '{include_existing}', max_files_per_batch = '7');
                 CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet') AS
                   SELECT CAST(line AS BIGINT) AS n FROM lines;",
                input.display(),
                out.display()
            ),
        );
        let checkpoint = work.join("checkpoint");
        let seen_log = checkpoint
            .join("queries")
            .join("pq")
            .join("sources")
            .join("lines");
        let (input2, staging2, cp) = (input.clone(), staging.clone(), checkpoint.clone());
        tokio::task::spawn_blocking(move || {
            let mut state = 97u64;
            let mut next = || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) % 1200
            };
            let mut writer = None;
            for run in 0..25u64 {
                let mut child = Command::new(crate::cli::flumen())
                    .args(["--batch-interval", "200 ms", "--checkpoint"])
                    .arg(&cp)
                    .arg("-f")
                    .arg(&script)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                if run == 0 {
                    // The live files start once the query has decided what existed.
                    let started = std::time::Instant::now();
                    while !seen_log.join("existing").exists() {
                        assert!(
                            started.elapsed() < Duration::from_secs(60),
                            "no seen-files log"
                        );
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let (input, staging) = (input2.clone(), staging2.clone());
                    writer = Some(std::thread::spawn(move || {
                        for i in BEFORE..BEFORE + LIVE {
                            write_input_file(&input, &staging, i);
                            std::thread::sleep(Duration::from_millis(60));
                        }
                    }));
                }
                std::thread::sleep(Duration::from_millis(300 + next()));
                if run % 2 == 0 {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                } else {
                    terminate(&mut child);
                }
            }
            writer.unwrap().join().unwrap();
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
        let first = if include_existing { 0 } else { BEFORE };
        let n = (BEFORE + LIVE - first) * 3;
        let sum: u64 = (first * 3..(BEFORE + LIVE) * 3).sum();
        assert_eq!(
            query(
                &out,
                "SELECT count(*), count(DISTINCT n), min(n), max(n), sum(n) FROM output"
            )
            .await,
            vec![format!(
                "{n}|{n}|{}|{}|{sum}",
                first * 3,
                (BEFORE + LIVE) * 3 - 1
            )],
            "include_existing = {include_existing}"
        );
    }
}

/// Two unrelated pipelines with the same sink name, each with its own checkpoint,
/// writing two tables of one PostgreSQL database at the same batch times, both killed
/// 20 times: each table gets every row exactly once (their commit records are keyed by
/// the pipeline and the table, so neither skips the other's batches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_with_one_sink_name_in_one_database_survive_20_kills() {
    let url = crate::connectors::kafka::POSTGRES;
    let suffix = unique_suffix();
    let mut runs = Vec::new();
    for (k, rows) in [("a", 6000u64), ("b", 6500)] {
        let work = temp_dir(&format!("crash-two-{k}"));
        let table = format!("two_{k}_{suffix}");
        let script = write_script(
            &work,
            &format!(
                "CREATE STREAM r WITH (connector = 'rate', rows_per_second = '1000', rows = '{rows}');
                 CREATE SINK o WITH (connector = 'postgres', url = '{url}', table = '{table}') AS
                   SELECT value FROM r;"
            ),
        );
        let cp = work.join("checkpoint");
        runs.push((
            table,
            rows,
            tokio::task::spawn_blocking(move || run_with_kills(&script, &cp, 5 + rows)),
        ));
    }
    for (table, rows, run) in runs {
        run.await.unwrap();
        assert_eq!(
            pg_rows(&format!(
                "SELECT count(*), count(DISTINCT value), min(value), max(value) FROM {table}"
            ))
            .await,
            vec![format!("{rows}|{rows}|0|{}", rows - 1)],
            "{table}"
        );
    }
}
