//! The `files` sink: deterministic file names per (batch time, partition), a commit
//! log, a replayed batch rewriting the same bytes, Hive layout, Spark's text naming;
//! and the `files` source reading only what the log lists.

use std::path::Path;
use std::sync::Arc;

use flumen::engine::{Clock, ManualClock, Time};

use crate::common::{sql_error, sql_rows, strs, temp_dir};

fn session_at(t: Time) -> (flumen::sql::FlumenSession, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t));
    let s = flumen::sql::FlumenSession::new(
        flumen::connectors::registry(),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    (s, clock)
}

/// Names under `dir` (recursively), sorted, as `a/b`.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test]
async fn parquet_files_with_a_commit_log_and_a_replay_that_rewrites_the_same_bytes() {
    let out = temp_dir("files-sink-out");
    let checkpoint = temp_dir("files-sink-cp");
    let script = format!(
        "SET batch_interval = '1 second';
         SET checkpoint_location = '{}';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '5');
         CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet') AS
           SELECT value, value % 2 AS parity FROM r WHERE value < 12;",
        checkpoint.display(),
        out.display()
    );
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script).await.unwrap();
    s.execute("ADVANCE 3 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    // Batches at 1 s, 2 s, 3 s (values 0..5, 5..10, 10..12).
    assert_eq!(
        tree(&out),
        strs(&[
            "_flumen_log/0000000001000",
            "_flumen_log/0000000002000",
            "_flumen_log/0000000003000",
            "part-0000000001000-00000.parquet",
            "part-0000000002000-00000.parquet",
            "part-0000000003000-00000.parquet",
        ])
    );
    let last = out.join("part-0000000003000-00000.parquet");
    let before = std::fs::read(&last).unwrap();

    // Killed after the sink wrote batch 3 but before the engine's commit: the restart
    // runs it again with its recorded range and rewrites exactly the same file.
    let q = checkpoint.join("queries/pq/commits");
    let mut commits = tree(&q);
    std::fs::remove_file(q.join(commits.pop().unwrap())).unwrap();
    std::fs::remove_file(&last).unwrap();
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&script).await.unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    assert_eq!(std::fs::read(&last).unwrap(), before);
    // The batch at 4 s has no rows (values >= 12 are filtered): no file, no log entry.
    assert_eq!(tree(&out).len(), 6);

    // Every value once, read back by Flumen's files source.
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&format!(
        "SET trigger = 'available_now';
         CREATE STREAM back (value BIGINT, parity BIGINT) WITH (connector = 'files', path = '{}',
           format = 'parquet', include_existing = 'true');
         CREATE TABLE got AS SELECT count(*) AS n, count(DISTINCT value) AS d, sum(value) AS s FROM back;",
        out.display()
    ))
    .await
    .unwrap();
    let ctx = s.queries().next().unwrap().ctx.clone();
    ctx.await_termination().await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM got").await,
        strs(&["12|12|66"])
    );
    // And by pyarrow and DuckDB, through scripts/read_committed.py (the README's recipe).
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/read_committed.py");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .output()
            .expect("python3 (scripts/services.sh installs duckdb and pyarrow)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = out.display().to_string();
    assert_eq!(
        run(&[&dir, "SELECT count(*), sum(value) FROM output"]),
        "pyarrow: 12 rows in 3 committed files\nduckdb: 12 66\n"
    );
    let empty = temp_dir("files-sink-empty");
    assert_eq!(
        run(&[&empty.display().to_string()]),
        format!(
            "{}: no committed batch yet (no _flumen_log)\n",
            empty.display()
        )
    );
}

#[tokio::test]
async fn the_files_source_reads_only_committed_files_and_layouts_and_naming() {
    // A json sink's folder, plus a file a killed writer left that the log never listed.
    let out = temp_dir("files-sink-json");
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&format!(
        "CREATE STREAM m (k TEXT, v BIGINT) WITH (connector = 'memory');
         CREATE SINK js WITH (connector = 'files', path = '{}', format = 'json') AS SELECT k, v FROM m;
         INSERT INTO m VALUES ('a', 1), ('b', 2);
         ADVANCE 1 BATCHES;",
        out.display()
    ))
    .await
    .unwrap();
    s.stop_all().await.unwrap();
    std::fs::write(
        out.join("part-0000000009000-00000.json"),
        "{\"k\":\"zombie\",\"v\":9}\n",
    )
    .unwrap();
    let (mut r, _) = session_at(Time::from_millis(0));
    r.execute_script(&format!(
        "SET trigger = 'available_now';
         CREATE STREAM back (k TEXT, v BIGINT) WITH (connector = 'files', path = '{}', format = 'json', include_existing = 'true');
         CREATE SINK seen WITH (connector = 'memory') AS SELECT k, v FROM back;",
        out.display()
    ))
    .await
    .unwrap();
    let ctx = r.queries().next().unwrap().ctx.clone();
    ctx.await_termination().await.unwrap();
    assert_eq!(
        sql_rows(&mut r, "SELECT * FROM seen ORDER BY k").await,
        strs(&["a|1", "b|2"])
    );

    // Hive layout, and Spark's saveAsTextFiles naming.
    let hive = temp_dir("files-sink-hive");
    let hive2 = temp_dir("files-sink-hive2");
    let text = temp_dir("files-sink-text");
    s.execute_script(&format!(
        "CREATE STREAM h (k TEXT, v BIGINT) WITH (connector = 'memory');
         CREATE SINK parts WITH (connector = 'files', path = '{}', format = 'csv', partition_by = 'k') AS SELECT k, v FROM h;
         CREATE SINK parts2 WITH (connector = 'files', path = '{}', format = 'csv', partition_by = 'k, odd') AS
           SELECT k, v % 2 = 1 AS odd, v FROM h;
         CREATE SINK lines WITH (connector = 'files', path = '{}', format = 'text', prefix = 'words', suffix = 'txt') AS
           SELECT concat(k, '=', v) FROM h;
         INSERT INTO h VALUES ('x', 1), ('y/z', 2), ('x', 3);
         ADVANCE 1 BATCHES;",
        hive.display(),
        hive2.display(),
        text.display()
    ))
    .await
    .unwrap();
    // Two columns: a folder level each, outermost first.
    let files = tree(&hive2);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files[1].starts_with("k=x/odd=true/part-"), "{files:?}");
    assert!(files[2].starts_with("k=y%2Fz/odd=false/part-"), "{files:?}");
    assert_eq!(
        std::fs::read_to_string(hive2.join(&files[1])).unwrap(),
        "v\n1\n3\n"
    );
    assert_eq!(
        std::fs::read_to_string(hive2.join(&files[2])).unwrap(),
        "v\n2\n"
    );
    let files = tree(&hive);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files[1].starts_with("k=x/part-"), "{files:?}");
    assert!(files[2].starts_with("k=y%2Fz/part-"), "{files:?}");
    let x = std::fs::read_to_string(hive.join(&files[1])).unwrap();
    assert_eq!(x, "v\n1\n3\n");
    let lines = tree(&text);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].starts_with("words-") && lines[1].ends_with(".txt"),
        "{lines:?}"
    );
    assert_eq!(
        std::fs::read_to_string(text.join(&lines[1])).unwrap(),
        "x=1\ny/z=2\nx=3\n"
    );

    // Errors name the sink and what to do.
    assert_eq!(
        sql_error(
            &mut s,
            "CREATE SINK bad WITH (connector = 'files', path = '/tmp', format = 'xml') AS SELECT k FROM h"
        )
        .await,
        "sink bad: unknown format 'xml' for connector 'files'; accepted: parquet, csv, json, text, arrow"
    );
    let err = sql_error(
        &mut s,
        &format!(
            "CREATE SINK bad2 WITH (connector = 'files', path = '{}', format = 'text') AS SELECT k, v FROM h",
            text.display()
        ),
    )
    .await;
    assert!(
        err.contains("sink bad2: format 'text' writes one column, the query gives 2 (k, v)"),
        "{err}"
    );
}

#[tokio::test]
async fn the_commit_log_is_compacted_every_ten_entries_and_still_read_whole() {
    let out = temp_dir("files-sink-compact");
    let (mut s, clock) = session_at(Time::from_millis(0));
    let sink = format!(
        "SET batch_interval = '1 second';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '3');
         CREATE SINK pq WITH (connector = 'files', path = '{}', format = 'parquet') AS
           SELECT value FROM r;",
        out.display()
    );
    s.execute_script(&sink).await.unwrap();
    s.execute("ADVANCE 25 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    // Compacted at the 10th and 20th entry: the newest `.compact` and five entries.
    let log: Vec<String> = tree(&out)
        .into_iter()
        .filter(|f| f.starts_with("_flumen_log/"))
        .collect();
    assert_eq!(
        log,
        strs(&[
            "_flumen_log/0000000020000.compact",
            "_flumen_log/0000000021000",
            "_flumen_log/0000000022000",
            "_flumen_log/0000000023000",
            "_flumen_log/0000000024000",
            "_flumen_log/0000000025000",
        ])
    );
    let compact: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("_flumen_log/0000000020000.compact")).unwrap(),
    )
    .unwrap();
    assert_eq!(compact["files"].as_array().unwrap().len(), 20);

    // A new run counts the entries it finds: five more compacts at the 10th.
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&sink.replace("SELECT value", "SELECT value + 1000 AS value"))
        .await
        .unwrap();
    s.execute("ADVANCE 5 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    let log: Vec<String> = tree(&out)
        .into_iter()
        .filter(|f| f.starts_with("_flumen_log/"))
        .collect();
    assert_eq!(log, strs(&["_flumen_log/0000000030000.compact"]));

    // Flumen's files source reads every committed file once: 25 + 5 batches of 3 rows.
    let (mut r, _) = session_at(Time::from_millis(0));
    r.execute_script(&format!(
        "SET trigger = 'available_now';
         CREATE STREAM back (value BIGINT) WITH (connector = 'files', path = '{}',
           format = 'parquet', include_existing = 'true');
         CREATE TABLE got AS SELECT count(*) AS n, count(DISTINCT value) AS d FROM back;",
        out.display()
    ))
    .await
    .unwrap();
    let ctx = r.queries().next().unwrap().ctx.clone();
    ctx.await_termination().await.unwrap();
    assert_eq!(
        sql_rows(&mut r, "SELECT * FROM got").await,
        strs(&["90|90"])
    );
}

/// The `_SUCCESS` files under `dir`.
fn successes(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|p| p.ends_with("/_SUCCESS"))
        .collect()
}

/// Flink's partition commit (q10's sink): a partition folder gets its `_SUCCESS` once
/// the watermark — here a stateless query's, from its stream's declared one — passes
/// its time plus the delay; a restarted sink finds the partitions still to commit in
/// its commit log; the end of finite input commits every one.
#[tokio::test]
async fn partitions_are_committed_once_the_watermark_passes_their_time() {
    let out = temp_dir("files-sink-partition-commit");
    let sink = |stream: &str| {
        format!(
            "CREATE SINK by_minute WITH (connector = 'files', path = '{}', format = 'csv',
               partition_by = 'dt, hm', partition_commit_trigger = 'partition-time',
               partition_commit_delay = '1 min', partition_time_pattern = '$dt $hm:00') AS
             SELECT auction, ts, DATE_FORMAT(ts, 'yyyy-MM-dd') AS dt, DATE_FORMAT(ts, 'HH:mm') AS hm
             FROM {stream};",
            out.display()
        )
    };
    let script = format!(
        "SET batch_interval = '1 second';
         CREATE STREAM bids (auction BIGINT, ts TIMESTAMP,
           WATERMARK FOR ts AS ts - INTERVAL '4' SECOND) WITH (connector = 'memory');
         {}",
        sink("bids")
    );
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script).await.unwrap();
    // Watermark 00:01:26: 00:00 (+ 1 min) is committed, 00:01 is not.
    s.execute("INSERT INTO bids VALUES (1, '2026-01-01T00:00:10'), (2, '2026-01-01T00:01:30')")
        .await
        .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        successes(&out),
        strs(&["dt=2026-01-01/hm=00%3A00/_SUCCESS"])
    );
    // Watermark 00:03:01 passes 00:01 + 1 min.
    s.execute("INSERT INTO bids VALUES (3, '2026-01-01T00:03:05')")
        .await
        .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        successes(&out),
        strs(&[
            "dt=2026-01-01/hm=00%3A00/_SUCCESS",
            "dt=2026-01-01/hm=00%3A01/_SUCCESS"
        ])
    );
    s.stop_all().await.unwrap();

    // Restarted: 00:03 is found pending in the commit log; watermark 00:04:06 passes it.
    let (mut s, clock) = session_at(clock.now());
    s.execute_script(&script).await.unwrap();
    s.execute("INSERT INTO bids VALUES (4, '2026-01-01T00:04:10')")
        .await
        .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(successes(&out).len(), 3, "{:?}", tree(&out));
    assert!(successes(&out).contains(&"dt=2026-01-01/hm=00%3A03/_SUCCESS".to_string()));
    s.stop_all().await.unwrap();

    // Finite input (available-now over files, the watermark declared on a derived
    // stream as the benchmarks' DDL does): its end passes every partition's time.
    let input = temp_dir("files-sink-partition-commit-in");
    std::fs::write(
        input.join("a.csv"),
        "auction,ts\n5,1767226200000\n6,1767226230000\n",
    )
    .unwrap();
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&format!(
        "SET trigger = 'available_now';
         CREATE STREAM more_csv (auction BIGINT, ts BIGINT)
           WITH (connector = 'files', path = '{}', format = 'csv', header = 'true');
         CREATE STREAM more WITH (timestamp = 'ts', watermark_delay = '4 seconds') AS
           SELECT auction, to_timestamp_millis(ts) AS ts FROM more_csv;
         {}",
        input.display(),
        sink("more")
    ))
    .await
    .unwrap();
    let ctx = s.queries().next().unwrap().ctx.clone();
    ctx.await_termination().await.unwrap();
    assert_eq!(
        successes(&out),
        strs(&[
            "dt=2026-01-01/hm=00%3A00/_SUCCESS",
            "dt=2026-01-01/hm=00%3A01/_SUCCESS",
            "dt=2026-01-01/hm=00%3A03/_SUCCESS",
            "dt=2026-01-01/hm=00%3A04/_SUCCESS",
            "dt=2026-01-01/hm=00%3A10/_SUCCESS",
        ])
    );
    // Every row was written, each in its partition.
    let rows: usize = tree(&out)
        .iter()
        .filter(|p| p.ends_with(".csv"))
        .map(|p| {
            std::fs::read_to_string(out.join(p))
                .unwrap()
                .lines()
                .count()
                - 1
        })
        .sum();
    assert_eq!(rows, 6);

    // A row behind the watermark is not dropped by a stateless query: it is written
    // into its partition even when that one was committed already (as in Flink).
    let (mut s, _) = session_at(clock.now().plus(std::time::Duration::from_secs(10)));
    s.execute_script(&script).await.unwrap();
    s.execute("INSERT INTO bids VALUES (7, '2026-01-01T00:00:30')")
        .await
        .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    let first_minute: Vec<String> = tree(&out)
        .into_iter()
        .filter(|p| p.starts_with("dt=2026-01-01/hm=00%3A00/"))
        .collect();
    assert_eq!(first_minute.len(), 3, "{first_minute:?}");
    assert!(first_minute.contains(&"dt=2026-01-01/hm=00%3A00/_SUCCESS".to_string()));

    // A query with no watermark would never commit: refused, naming what is missing.
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute("CREATE STREAM plain (auction BIGINT, ts TIMESTAMP) WITH (connector = 'memory')")
        .await
        .unwrap();
    let err = sql_error(&mut s, &sink("plain")).await;
    assert!(
        err.contains(
            "sink 'by_minute' commits each partition once the watermark passes its time, and \
             the query reads no stream with a watermark (plain)"
        ),
        "{err}"
    );
}
