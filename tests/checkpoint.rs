//! Checkpoints: a query restarted on the checkpoint an earlier run left goes on where
//! that run stopped — state restored, an uncommitted batch run again with its recorded
//! ranges — and a checkpoint of another query, or a damaged one, is refused.

use std::sync::Arc;

use flumen::engine::{Clock, ManualClock, Time};

use crate::common::{sql_error, sql_rows, strs, temp_dir};

/// A session on a manual clock at `t`, and the clock.
pub(crate) fn session_at(t: Time) -> (flumen::sql::FlumenSession, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t));
    let s = flumen::sql::FlumenSession::new(
        flumen::connectors::registry(),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    (s, clock)
}

fn script(dir: &std::path::Path, query: &str) -> String {
    format!(
        "SET batch_interval = '1 second';
         SET checkpoint_location = '{}';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
         CREATE TABLE totals AS {query};",
        dir.display()
    )
}

const TOTALS: &str = "SELECT count(*) AS n, sum(value) AS s FROM r";

#[tokio::test]
async fn a_running_aggregate_resumes_from_its_checkpoint() {
    let dir = temp_dir("checkpoint-rate");
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script(&dir, TOTALS)).await.unwrap();
    s.execute("ADVANCE 3 BATCHES").await.unwrap();
    // 10 rows a second, values 0..30.
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM totals").await,
        strs(&["30|435"])
    );
    // One running query per checkpoint.
    let (mut other, _) = session_at(clock.now());
    let err = other
        .execute_script(&script(&dir, TOTALS))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is in use by another running query"), "{err}");
    s.stop_all().await.unwrap();
    let q = dir.join("queries").join("totals");
    for sub in ["metadata", "offsets", "commits", "state"] {
        assert!(q.join(sub).exists(), "{} missing", q.join(sub).display());
    }

    // A new process: the count goes on from 30, values 30..50.
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&script(&dir, TOTALS)).await.unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM totals").await,
        strs(&["50|1225"])
    );
    s.stop_all().await.unwrap();
}

#[tokio::test]
async fn a_batch_planned_but_not_committed_runs_again_with_its_ranges() {
    let dir = temp_dir("checkpoint-replay");
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script(&dir, TOTALS)).await.unwrap();
    s.execute("ADVANCE 3 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    // As if killed after the offset log entry of the third batch and before its
    // commit: no commit, no snapshot for it.
    let q = dir.join("queries").join("totals");
    let newest = |sub: &str| {
        let mut names: Vec<_> = std::fs::read_dir(q.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
            .collect();
        names.sort();
        names.pop().unwrap()
    };
    std::fs::remove_file(newest("commits")).unwrap();
    std::fs::remove_dir_all(newest("state")).unwrap();

    // Much later: the third batch's 10 rows are read again (from its recorded
    // range, not a new one), once; then the query goes on.
    let (mut s, _) = session_at(clock.now().plus(std::time::Duration::from_secs(60)));
    s.execute_script(&script(&dir, TOTALS)).await.unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    let rows = sql_rows(&mut s, "SELECT * FROM totals").await;
    // Every row the rate source owes at 64 s, each once: rows 20..30 of the replayed
    // batch (missing, the count would be 630; twice, 650), then the catch-up batch.
    let n: u64 = 640;
    let sum: u64 = (0..n).sum();
    assert_eq!(rows, vec![format!("{n}|{sum}")]);
    s.stop_all().await.unwrap();
}

#[tokio::test]
async fn another_query_or_a_damaged_checkpoint_is_refused() {
    let dir = temp_dir("checkpoint-refused");
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script(&dir, TOTALS)).await.unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();

    let (mut s, _) = session_at(clock.now());
    s.execute_script(
        &script(&dir, "SELECT count(*) AS n FROM r")
            .replace("CREATE TABLE totals AS SELECT count(*) AS n FROM r;", ""),
    )
    .await
    .unwrap();
    let err = sql_error(&mut s, "CREATE TABLE totals AS SELECT count(*) AS n FROM r").await;
    assert!(err.contains("belongs to a different query"), "{err}");
    assert!(
        err.contains("output 0 write_to(totals) (n Int64, s Int64)"),
        "{err}"
    );
    assert!(err.contains("output 0 write_to(totals) (n Int64)"), "{err}");

    // A truncated offset log entry is reported, not used.
    let q = dir.join("queries").join("totals");
    let mut entries: Vec<_> = std::fs::read_dir(q.join("offsets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let last = entries.pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let err = sql_error(&mut s, TOTALS_TABLE).await;
    assert!(
        err.contains(&format!("{} is corrupt (truncated", last.display())),
        "{err}"
    );

    // A source whose data is gone after a restart cannot resume.
    let dir = temp_dir("checkpoint-queue");
    let (mut s, clock) = session_at(Time::from_millis(0));
    let queue = format!(
        "SET batch_interval = '1 second';
         SET checkpoint_location = '{}';
         CREATE STREAM m (v BIGINT) WITH (connector = 'memory');
         CREATE SINK out WITH (connector = 'memory') AS SELECT v FROM m;",
        dir.display()
    );
    s.execute_script(&queue).await.unwrap();
    s.execute("INSERT INTO m VALUES (1)").await.unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    let (mut s, _) = session_at(clock.now());
    let err = s.execute_script(&queue).await.unwrap_err().to_string();
    assert!(
        err.contains("stream m: its data cannot be read again after a restart"),
        "{err}"
    );
}

const TOTALS_TABLE: &str = "CREATE TABLE totals AS SELECT count(*) AS n, sum(value) AS s FROM r";

/// Hopping windows in append mode keep one group table per open window across
/// batches; a restart puts those tables back from the snapshot.
fn hops(dir: &std::path::Path) -> String {
    format!(
        "SET batch_interval = '1 second';
         SET checkpoint_location = '{}';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
         CREATE SINK closed WITH (connector = 'memory') AS
           SELECT window(_batch_time, INTERVAL '3' SECOND, INTERVAL '1' SECOND)['start'] AS ws,
                  value % 3 AS k, count(*) AS n, sum(value) AS s FROM r
           GROUP BY window(_batch_time, INTERVAL '3' SECOND, INTERVAL '1' SECOND), value % 3
           EMIT FINAL;",
        dir.display()
    )
}

#[tokio::test]
async fn open_hopping_windows_survive_a_restart() {
    async fn rows(s: &mut flumen::sql::FlumenSession) -> Vec<String> {
        sql_rows(s, "SELECT * FROM closed ORDER BY ws, k").await
    }
    // Uninterrupted: 7 batches.
    let dir = temp_dir("checkpoint-hop-whole");
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&hops(&dir)).await.unwrap();
    s.execute("ADVANCE 7 BATCHES").await.unwrap();
    let whole = rows(&mut s).await;
    s.stop_all().await.unwrap();
    // Emitted once closed: the windows ending at 1..=7 s, three keys each. The first
    // two hold batch 1 only (values 0..10), the one ending at 7 s batches 5..=7.
    assert_eq!(whole.len(), 7 * 3, "{whole:?}");
    assert_eq!(whole[0], "1969-12-31T23:59:58|0|4|18", "{whole:?}");
    assert_eq!(whole[20], "1970-01-01T00:00:04|2|10|545", "{whole:?}");

    // The same, stopped after 4 batches with windows still open, then resumed.
    let dir = temp_dir("checkpoint-hop-split");
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&hops(&dir)).await.unwrap();
    s.execute("ADVANCE 4 BATCHES").await.unwrap();
    let mut split = rows(&mut s).await;
    assert_eq!(split.len(), 4 * 3, "{split:?}");
    s.stop_all().await.unwrap();
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&hops(&dir)).await.unwrap();
    s.execute("ADVANCE 3 BATCHES").await.unwrap();
    split.extend(rows(&mut s).await);
    s.stop_all().await.unwrap();
    assert_eq!(split, whole);
}

/// Runs `sinks` (statements creating memory sinks over the rate streams `r1`, 10 rows/s,
/// and `r2`, 5 rows/s, each with an event time `et` and a 1 s watermark) for 6 batches
/// in one go, and again stopped after 3 and resumed from the checkpoint; returns the
/// rows `select` reads after each (the split run's two halves concatenated).
async fn whole_and_split(name: &str, sinks: &str, select: &str) -> (Vec<String>, Vec<String>) {
    let script = |dir: &std::path::Path| {
        format!(
            "SET batch_interval = '1 second';
             SET checkpoint_location = '{}';
             CREATE STREAM r1 WITH (connector = 'rate', rows_per_second = '10');
             CREATE STREAM r2 WITH (connector = 'rate', rows_per_second = '5');
             CREATE STREAM a WITH (timestamp = 'et', watermark_delay = '1 second') AS
               SELECT value AS v, timestamp AS et FROM r1;
             CREATE STREAM b WITH (timestamp = 'et', watermark_delay = '1 second') AS
               SELECT value AS v, timestamp AS et FROM r2;
             {sinks}",
            dir.display()
        )
    };
    let dir = temp_dir(&format!("{name}-whole"));
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&script(&dir)).await.unwrap();
    s.execute("ADVANCE 6 BATCHES").await.unwrap();
    let whole = sql_rows(&mut s, select).await;
    s.stop_all().await.unwrap();

    let dir = temp_dir(&format!("{name}-split"));
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script(&dir)).await.unwrap();
    s.execute("ADVANCE 3 BATCHES").await.unwrap();
    let mut split = sql_rows(&mut s, select).await;
    s.stop_all().await.unwrap();
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&script(&dir)).await.unwrap();
    s.execute("ADVANCE 3 BATCHES").await.unwrap();
    split.extend(sql_rows(&mut s, select).await);
    s.stop_all().await.unwrap();
    (whole, split)
}

#[tokio::test]
async fn a_stream_join_keeps_its_buffered_rows_across_a_restart() {
    // a's row 2j + 10 comes 1 s after b's row j: the match needs b's row kept in the
    // join's state, across the restart for the rows around it.
    let (whole, mut split) = whole_and_split(
        "checkpoint-join",
        "CREATE SINK matched WITH (connector = 'memory') AS
           SELECT b.v AS j, a.v AS i FROM a JOIN b
           ON a.v = b.v * 2 + 10 AND a.et BETWEEN b.et AND b.et + INTERVAL '2' SECOND;",
        "SELECT j, i FROM matched",
    )
    .await;
    // Values up to 59 on a: j = 0..=24, each once.
    let expected: Vec<String> = (0..25).map(|j| format!("{j}|{}", 2 * j + 10)).collect();
    let numeric = |rows: &mut Vec<String>| {
        rows.sort_by_key(|r| r.split('|').next().unwrap().parse::<i64>().unwrap())
    };
    let mut whole = whole;
    numeric(&mut whole);
    numeric(&mut split);
    assert_eq!(whole, expected);
    assert_eq!(split, expected);
}

#[tokio::test]
async fn an_outer_join_remembers_which_rows_matched_across_a_restart() {
    // As above, as a full outer join: a row that matched before the restart and leaves
    // the state after it must not come out again with nulls (forgotten matches would),
    // and rows that never matched come out once, either way.
    let (mut whole, mut split) = whole_and_split(
        "checkpoint-outer-join",
        "SET output_mode = 'append';
         CREATE SINK joined WITH (connector = 'memory') AS
           SELECT b.v AS j, a.v AS i FROM a FULL OUTER JOIN b
           ON a.v = b.v * 2 + 10 AND a.et BETWEEN b.et AND b.et + INTERVAL '2' SECOND;",
        "SELECT coalesce(CAST(j AS TEXT), '-'), coalesce(CAST(i AS TEXT), '-') FROM joined",
    )
    .await;
    whole.sort();
    split.sort();
    let matched: Vec<String> = (0..25).map(|j| format!("{j}|{}", 2 * j + 10)).collect();
    for m in &matched {
        assert!(whole.contains(m), "{m} missing: {whole:?}");
    }
    // a's rows that no b row matches (odd, or below 10), once the b side's watermark
    // has passed them: padded with nulls, each once.
    let unmatched_a = whole.iter().filter(|r| r.starts_with("-|")).count();
    assert!(unmatched_a > 20, "{whole:?}");
    let mut seen = std::collections::HashSet::new();
    assert!(
        whole.iter().all(|r| seen.insert(r)),
        "a row twice: {whole:?}"
    );
    assert_eq!(split, whole);
}

#[tokio::test]
async fn a_window_top_n_keeps_its_open_windows_across_a_restart() {
    // Each 2 s window's two smallest values: a window open at the restart must still
    // hold the rows it had before (forgotten, it would rank only later rows), and a
    // window emitted before the restart must not come out again.
    let (mut whole, mut split) = whole_and_split(
        "checkpoint-window-top-n",
        "SET output_mode = 'append';
         CREATE SINK smallest WITH (connector = 'memory') AS
           SELECT v, rn, window_start FROM (
             SELECT v, window_start, window_end,
               ROW_NUMBER() OVER (PARTITION BY window_start, window_end ORDER BY v) AS rn
             FROM TABLE(TUMBLE(TABLE a, DESCRIPTOR(et), INTERVAL '2' SECOND)))
           WHERE rn <= 2;",
        "SELECT CAST(v AS TEXT), CAST(rn AS TEXT) FROM smallest",
    )
    .await;
    whole.sort();
    split.sort();
    // Windows [0, 2) and [2, 4) closed (the watermark reached 4 s): values 0, 1 and
    // 20, 21 at 10 rows a second.
    assert_eq!(whole, strs(&["0|1", "1|2", "20|1", "21|2"]), "{whole:?}");
    assert_eq!(split, whole);
}

#[tokio::test]
async fn distinct_rows_and_first_rows_per_key_are_remembered_across_a_restart() {
    // v * 7 % 45 repeats after 45 values (batches 5 and 6 repeat batches 1 and 2):
    // forgotten state would emit them again.
    let (whole, mut split) = whole_and_split(
        "checkpoint-distinct",
        "CREATE SINK d WITH (connector = 'memory') AS SELECT DISTINCT v * 7 % 45 AS d FROM a;
         CREATE STREAM ak AS SELECT v % 45 AS k, v FROM a;
         CREATE SINK firsts WITH (connector = 'memory') AS
           SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v) AS rn FROM ak)
           WHERE rn = 1;",
        "SELECT 'd', d, NULL FROM d UNION ALL SELECT 'first', k, v FROM firsts",
    )
    .await;
    let mut whole = whole;
    whole.sort();
    split.sort();
    assert_eq!(whole.len(), 45 + 45, "{whole:?}");
    assert_eq!(split, whole);
}

#[tokio::test]
async fn with_a_checkpoint_interval_state_is_rebuilt_from_the_sources_since_the_last_snapshot() {
    let dir = temp_dir("checkpoint-interval");
    let script = script(&dir, TOTALS).replace(
        "SET batch_interval = '1 second';",
        "SET batch_interval = '1 second'; SET checkpoint_interval = '3';",
    );
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script).await.unwrap();
    s.execute("ADVANCE 5 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    // Batches 0..=4 committed; state snapshotted after batches 0 and 3, the older
    // snapshot purged.
    let q = dir.join("queries").join("totals");
    let names = |sub: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(q.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("state"), strs(&["00000000000000000003"]));
    assert_eq!(names("commits").len(), 5);

    // The restart restores batch 3's state and reads batch 4's rows again (without
    // writing its output twice), then goes on: 70 rows, values 0..70.
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&script).await.unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM totals").await,
        strs(&["70|2415"])
    );
    s.stop_all().await.unwrap();
}

#[tokio::test]
async fn a_checkpoint_in_an_in_process_object_store() {
    let location = format!("memory://checkpoints-{}/app", std::process::id());
    let script = |query: &str| {
        format!(
            "SET batch_interval = '1 second';
             SET checkpoint_location = '{location}';
             CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
             CREATE TABLE totals AS {query};"
        )
    };
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script(TOTALS)).await.unwrap();
    s.execute("ADVANCE 3 BATCHES").await.unwrap();
    // The lease keeps a second query out while this one runs.
    let (mut other, _) = session_at(clock.now());
    let err = other
        .execute_script(&script(TOTALS))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "checkpoint {location}/queries/totals is in use by another running query (pid {}",
            std::process::id()
        )),
        "{err}"
    );
    s.stop_all().await.unwrap();
    // Stopped gracefully, it gave the lease up: a new run resumes.
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&script(TOTALS)).await.unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(
        sql_rows(&mut s, "SELECT * FROM totals").await,
        strs(&["50|1225"])
    );
    s.stop_all().await.unwrap();
}

/// The real binary with its checkpoint on a real S3-compatible server (moto, from
/// scripts/services.sh), configured the usual way (`AWS_*` variables): stopped
/// gracefully, killed, refused while a killed run's lease stands, resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_on_s3_survives_a_stop_and_a_kill() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let bucket = format!("flumen-ckpt-{}", std::process::id());
    crate::connectors::files::create_bucket(&bucket).await;
    let table = format!("ckpt_s3_{}", std::process::id());
    let work = temp_dir("checkpoint-s3");
    let script = work.join("q.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE STREAM r WITH (connector = 'rate', rows_per_second = '1000', rows = '6000');
             SET output_mode = 'update';
             CREATE SINK totals WITH (connector = 'postgres', url = '{}', table = '{table}',
                                      mode = 'upsert', key = 'k') AS
               SELECT value % 3 AS k, count(*) AS n, sum(value) AS s FROM r GROUP BY value % 3;",
            crate::connectors::kafka::POSTGRES
        ),
    )
    .unwrap();
    let checkpoint = format!("s3://{bucket}/app");
    let flumen = {
        let (checkpoint, script) = (checkpoint.clone(), script.clone());
        move |extra: &[&str]| {
            let mut c = Command::new(crate::cli::flumen());
            c.args(["--batch-interval", "200 ms", "--checkpoint", &checkpoint])
                .args(extra)
                .arg("-f")
                .arg(&script)
                .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_REGION", "us-east-1")
                .stdout(Stdio::null());
            c
        }
    };
    let again = flumen.clone();
    let run = tokio::task::spawn_blocking(move || {
        // Stopped gracefully after a while: the lease is given up.
        let mut child = flumen(&[]).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        assert!(child.wait().unwrap().success());
        // Killed: its lease stands, and the next run is refused, saying how to go on.
        let mut child = flumen(&[]).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        // Still running: the graceful stop had given the lease up.
        assert!(child.try_wait().unwrap().is_none(), "the second run exited");
        child.kill().unwrap();
        child.wait().unwrap();
        let refused = flumen(&["--trigger", "available-now"]).output().unwrap();
        assert!(!refused.status.success());
        String::from_utf8_lossy(&refused.stderr).to_string()
    });
    let refused = run.await.unwrap();
    let lock = format!("{checkpoint}/queries/totals/lock");
    assert!(
        refused.contains("is in use by another running query (pid") && refused.contains(&lock),
        "{refused}"
    );
    // The operator deletes the dead run's lease; the query resumes and drains.
    let location = crate::connectors::files::moto_location(&checkpoint);
    use flumen::connectors::object_store::ObjectStoreExt;
    location
        .store
        .delete(&location.child("queries/totals/lock"))
        .await
        .unwrap();
    let last = tokio::task::spawn_blocking(move || {
        again(&["--trigger", "available-now"]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    // Every value once in the totals, as one query over 0..6000 gives them.
    let expected: Vec<String> = (0..3i64)
        .map(|k| {
            let s: i64 = (0..6000i64).filter(|v| v % 3 == k).sum();
            format!("{k}|2000|{s}")
        })
        .collect();
    assert_eq!(
        crate::crash::pg_rows(&format!("SELECT k, n, s FROM {table} ORDER BY k")).await,
        expected
    );
    // The checkpoint's files are on the S3 server.
    use futures::TryStreamExt;
    let names: Vec<String> = location
        .store
        .list(Some(&location.child("queries/totals")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    for part in ["/metadata", "/offsets/", "/commits/", "/state/"] {
        assert!(
            names.iter().any(|n| n.contains(part)),
            "{part} in {names:?}"
        );
    }
}

/// A checkpoint is resumed only by the query that wrote it: a changed group key
/// (also through a SQL function's body), aggregate, filter before the state, or source
/// option that changes what is read is refused with what differs; options that change
/// only how fast it is read are not.
#[tokio::test]
async fn a_changed_query_or_source_is_refused_naming_what_differs() {
    let base = "CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
                CREATE TABLE t AS SELECT value % 3 AS k, sum(value) AS s FROM r GROUP BY value % 3;";
    let files = |path: &str| {
        format!(
            "CREATE STREAM f (line TEXT) WITH (connector = 'files', path = '{path}');
             CREATE TABLE t AS SELECT line, count(*) AS n FROM f GROUP BY line;"
        )
    };
    let by_function = "CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
                CREATE TABLE t AS SELECT g(value) AS k, sum(value) AS s FROM r GROUP BY g(value);";
    let (a, b) = (temp_dir("changed-files-a"), temp_dir("changed-files-b"));
    let cases: Vec<(String, String, &str)> = vec![
        (
            base.into(),
            base.replace("value % 3", "value % 5"),
            "r.value % Int64(5)",
        ),
        (
            base.into(),
            base.replace("sum(value)", "max(value)"),
            "max(r.value)",
        ),
        (
            base.into(),
            base.replace("FROM r GROUP BY", "FROM r WHERE value > 2 GROUP BY"),
            "r.value > Int64(2)",
        ),
        (
            base.into(),
            base.replace("rows_per_second = '10'", "rows_per_second = '20'"),
            "rate 20 per second",
        ),
        (
            files(&a.display().to_string()),
            files(&b.display().to_string()),
            "changed-files-b",
        ),
        // The same text calling a function whose body changed (`CREATE FUNCTION`).
        (
            format!("CREATE FUNCTION g(v BIGINT) RETURNS BIGINT RETURN v % 3; {by_function}"),
            format!("CREATE FUNCTION g(v BIGINT) RETURNS BIGINT RETURN v % 5; {by_function}"),
            "Int64(5)",
        ),
    ];
    for (first, second, differs) in cases {
        let dir = temp_dir("checkpoint-changed");
        let with_dir = |q: &str| {
            format!(
                "SET batch_interval = '1 second'; SET checkpoint_location = '{}'; {q}",
                dir.display()
            )
        };
        let (mut s, clock) = session_at(Time::from_millis(0));
        s.execute_script(&with_dir(&first)).await.unwrap();
        s.execute("ADVANCE 2 BATCHES").await.unwrap();
        s.stop_all().await.unwrap();
        let (mut s, _) = session_at(clock.now());
        let err = s
            .execute_script(&with_dir(&second))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("belongs to a different query") && err.contains(differs),
            "{second}\n{err}"
        );
        // The same query goes on.
        let (mut s, _) = session_at(clock.now());
        s.execute_script(&with_dir(&first)).await.unwrap();
        s.stop_all().await.unwrap();
    }
    // Safe to change: rate limits, back pressure.
    let dir = temp_dir("checkpoint-safe");
    let script = |extra: &str| {
        format!(
            "SET batch_interval = '1 second'; SET checkpoint_location = '{}';
             CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10'{extra});
             CREATE TABLE t AS SELECT count(*) AS n FROM r;",
            dir.display()
        )
    };
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script("")).await.unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&script(
        ", max_records_per_batch = '5', backpressure = 'true'",
    ))
    .await
    .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(sql_rows(&mut s, "SELECT * FROM t").await, strs(&["25"]));
    s.stop_all().await.unwrap();
}

/// A query restarted from its checkpoint on a manual clock that is behind the
/// checkpoint's last batch: ADVANCE over batch times the checkpoint already holds
/// returns (those batches will never run again) instead of waiting forever, and the
/// batches after them run as usual.
#[tokio::test]
async fn advance_on_a_clock_behind_the_checkpoint_returns() {
    let dir = temp_dir("checkpoint-clock-behind");
    let script = format!(
        "SET batch_interval = '1 second';
         SET checkpoint_location = '{}';
         SET output_mode = 'update';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
         CREATE SINK c WITH (connector = 'memory') AS SELECT count(*) AS n FROM r;",
        dir.display()
    );
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&script).await.unwrap();
    s.execute("ADVANCE 4 BATCHES").await.unwrap();
    s.stop_all().await.unwrap();
    // Started again at 1 s: batches 2..=4 s are in the checkpoint.
    let (mut s, _) = session_at(Time::from_millis(1000));
    s.execute_script(&script).await.unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        s.execute("ADVANCE 3 BATCHES"),
    )
    .await
    .expect("ADVANCE waited for batches the checkpoint already holds")
    .unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(sql_rows(&mut s, "SELECT max(n) FROM c").await, ["60"]);
}
