//! Queries on an Apache Ballista cluster: a scheduler and two executors started in
//! this process on 127.0.0.1 (`LocalCluster`, the same code `flumen scheduler` and
//! `flumen executor` run) give the rows they give in this process.

use std::sync::Arc;

use flumen::engine::ManualClock;
use flumen::engine::cluster::node::LocalCluster;
use flumen::sql::{FlumenSession, StatementResult};

async fn cluster() -> LocalCluster {
    LocalCluster::start(2, 2, flumen::sql::functions::udfs())
        .await
        .expect("an in-process cluster")
}

/// The `.slt` suite's streaming queries — word count, windows in append and update
/// mode, dedup, stream–stream joins, the window table functions, ksqlDB windows,
/// functions defined in SQL, regular outer joins' changelogs and Nexmark q0–q8 — over many small batches, each
/// batch's plans run as Ballista jobs: the rows are those the files expect, which
/// local runs produce.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_slt_suite_gives_the_same_rows_on_a_cluster() {
    let cluster = cluster().await;
    for name in [
        "wordcount",
        "windows",
        "dedup",
        "joins",
        "tvf",
        "ksql",
        "batch_time",
        "nexmark",
        "sql_functions",
        "regular_outer_joins",
        "aggregates_over_aggregates",
    ] {
        crate::sql_logic::run_slt_on(name, Some(cluster.url.to_string())).await;
    }
}

async fn rows(session: &mut FlumenSession, sql: &str) -> Vec<String> {
    match session.execute(sql).await.unwrap() {
        StatementResult::Rows { batches, .. } => crate::common::rows(&batches),
        other => panic!("{sql}: {other:?}"),
    }
}

/// Each batch says where it ran: `SHOW PROGRESS` names the cluster, its jobs, tasks
/// and executors; the progress record carries them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_on_a_cluster_says_where_it_ran() {
    let cluster = cluster().await;
    let clock = Arc::new(ManualClock::default());
    let mut session = FlumenSession::new(flumen::connectors::registry(), clock.clone());
    session
        .execute_script(&format!(
            "SET cluster = '{}';
             CREATE STREAM words (word TEXT) WITH (connector = 'memory');
             CREATE SINK counts WITH (connector = 'memory');
             INSERT INTO counts SELECT word, count(*) AS n FROM words GROUP BY word;
             INSERT INTO words VALUES ('a'), ('b'), ('a');
             ADVANCE 1 BATCHES;",
            cluster.url
        ))
        .await
        .unwrap();
    let counts = rows(&mut session, "SELECT word, n FROM counts ORDER BY word").await;
    assert_eq!(counts, vec!["a|2", "b|1"]);
    let progress = rows(&mut session, "SHOW PROGRESS").await;
    let ran_on = progress[0].rsplit('|').next().unwrap();
    assert!(
        ran_on.starts_with(&format!("{} (", cluster.url)) && ran_on.ends_with(", 2 executors)"),
        "{ran_on}"
    );
    let jobs: u64 = ran_on
        .split('(')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The aggregate's state partitions (its partial counts made here, where the
    // rows are); the output's plan, over the changes the driver holds, runs here.
    assert_eq!(jobs, 1, "{ran_on}");
    let q = session.queries().next().unwrap();
    let progress = q.ctx.recent_batches()[0].progress("counts");
    assert_eq!(progress["cluster"]["url"], cluster.url.to_string());
    assert_eq!(progress["cluster"]["jobs"], 1);
    assert_eq!(progress["cluster"]["executors"], 2);
    // The attempts the scheduler launched, as it reported them (a task may run several
    // partitions of a stage: Ballista gives it as many as its executor has free
    // slots), none retried.
    assert_eq!(progress["cluster"]["retries"], 0, "{progress}");
    assert!(
        progress["cluster"]["tasks"].as_u64().unwrap() >= 1,
        "{progress}"
    );
    assert!(
        ran_on.contains(" tasks, 0 retries, 2 executors"),
        "{ran_on}"
    );
    // EXPLAIN says where each operator's state goes.
    session
        .execute(
            "CREATE STREAM acts (user_id BIGINT, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'memory')",
        )
        .await
        .unwrap();
    let explain = rows(
        &mut session,
        "EXPLAIN SELECT word, count(*) FROM words GROUP BY word",
    )
    .await;
    let want = format!(
        "Cluster {}: each batch's plans run as Ballista jobs; state in {} partitions on the executors: RunningAggregate",
        cluster.url,
        flumen::engine::state::default_partitions()
    );
    assert!(explain.contains(&want), "{explain:?}");
    // Sessions per user live on the executors, partitioned by user; sessions with no
    // other key (one key for the whole stream) stay on the driver.
    let explain = rows(
        &mut session,
        "EXPLAIN SELECT user_id, count(*) FROM acts \
         GROUP BY user_id, session_window(ts, INTERVAL '5' SECOND)",
    )
    .await;
    assert!(
        explain
            .iter()
            .any(|l| l.contains("on the executors: SessionAggregate")),
        "{explain:?}"
    );
    let explain = rows(
        &mut session,
        "EXPLAIN SELECT count(*) FROM acts GROUP BY session_window(ts, INTERVAL '5' SECOND)",
    )
    .await;
    assert!(
        explain.iter().any(|l| l
            .contains("; state on the driver (input plans on the executors): SessionAggregate")),
        "{explain:?}"
    );
}

/// A query whose cluster is not there fails its batch naming the cluster, and is not
/// a silent local run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scheduler_fails_the_batch_naming_the_cluster() {
    // Nothing listens on port 1 (a free port found now could be taken by another
    // test's cluster before the batch runs).
    let port = 1;
    let clock = Arc::new(ManualClock::default());
    let mut session = FlumenSession::new(flumen::connectors::registry(), clock.clone());
    session
        .execute_script(&format!(
            "SET cluster = 'df://127.0.0.1:{port}';
             CREATE STREAM words (word TEXT) WITH (connector = 'memory');
             CREATE SINK out WITH (connector = 'memory');
             INSERT INTO out SELECT upper(word) AS w FROM words;
             INSERT INTO words VALUES ('a');"
        ))
        .await
        .unwrap();
    let e = session
        .execute("ADVANCE 1 BATCHES")
        .await
        .expect_err("no scheduler there")
        .to_string();
    assert!(
        e.contains(&format!(
            "cluster df://127.0.0.1:{port}: the scheduler or an executor cannot be reached"
        )),
        "{e}"
    );
}

/// `SET cluster` checks the URL when it is set.
#[tokio::test]
async fn a_bad_cluster_url_is_refused_when_set() {
    let mut session = FlumenSession::default();
    let e = session
        .execute("SET cluster = 'http://127.0.0.1:50050'")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cluster 'http://127.0.0.1:50050': not a df:// URL"),
        "{e}"
    );
    session.execute("SET cluster = 'local'").await.unwrap();
}

/// Rows a query's expression fails on follow their stream's `on_error` on a cluster as
/// here: set aside (into the dead letter) or named in the query's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_a_query_fails_on_are_set_aside_on_a_cluster() {
    let cluster = cluster().await;
    crate::connectors::files::row_errors_follow_on_error(Some(&cluster.url.to_string())).await;
}

/// A files sink's partition commit on a cluster: the executors read the stream, the
/// stream's watermark is kept on the driver, and the partition it passed gets its
/// `_SUCCESS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_is_committed_by_its_time_on_a_cluster() {
    let cluster = cluster().await;
    let (input, out) = (
        crate::common::temp_dir("cluster-commit-in"),
        crate::common::temp_dir("cluster-commit-out"),
    );
    std::fs::write(input.join("a.csv"), "1,2026-01-01T00:00:10\n").unwrap();
    let mut session = FlumenSession::new(
        flumen::connectors::registry(),
        Arc::new(ManualClock::default()),
    );
    session
        .execute_script(&format!(
            "SET cluster = '{}';
             CREATE STREAM bids (auction BIGINT, ts TIMESTAMP,
               WATERMARK FOR ts AS ts - INTERVAL '4' SECOND)
               WITH (connector = 'files', path = '{}', format = 'csv', include_existing = 'true');
             CREATE SINK by_day WITH (connector = 'files', path = '{}', format = 'csv',
               partition_by = 'dt', partition_commit_trigger = 'partition-time') AS
               SELECT auction, DATE_FORMAT(ts, 'yyyy-MM-dd') AS dt FROM bids;",
            cluster.url,
            input.display(),
            out.display()
        ))
        .await
        .unwrap();
    session.execute("ADVANCE 1 BATCHES").await.unwrap();
    let q = session.queries().next().unwrap();
    assert!(q.ctx.failure().is_none(), "{:?}", q.ctx.failure());
    let info = q.ctx.last_batches(1).pop().unwrap();
    assert!(info.cluster.is_some(), "the batch ran on the cluster");
    // Watermark 00:00:06 has passed the day's start: its partition is complete.
    assert!(out.join("dt=2026-01-01/_SUCCESS").is_file());
}

/// A `flumen` process a test started: killed when the test ends, failed or not, so a
/// failing test leaves no scheduler or executor behind.
struct Process(std::process::Child);

impl std::ops::Deref for Process {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `flumen <args>` with its stderr kept in `log`.
fn spawn(args: &[&str], log: &std::path::Path) -> Process {
    Process(
        flumen_command()
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Every value the files sink at `out` holds (CSV, one column, header).
fn values_written(out: &std::path::Path) -> Vec<i64> {
    let Ok(dir) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "csv"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i64>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("waited 60 s for {what}");
}

/// A real cluster in `dir`: `flumen scheduler` on a free port and two `flumen
/// executor`s of one slot, both registered. Its address (`host:port`) and processes.
/// A port for a `flumen` process a test starts (it and the next one free now),
/// below Linux's ephemeral range (32768 up): the in-process clusters of other tests
/// bind port 0, and the OS must not hand them the port of a scheduler a test killed
/// and is about to restart (its executors would register with theirs meanwhile).
fn process_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 500) as u16 * 20;
    for _ in 0..1000 {
        let port = 20_000 + (base + NEXT.fetch_add(2, Ordering::Relaxed) % 12_000) % 12_000;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
    panic!("no free port pair from 20000 to 32000 on 127.0.0.1");
}

/// The `flumen` binary, told where the S3 server of scripts/services.sh is (an
/// executor opens an `s3://` checkpoint's state partitions itself).
fn flumen_command() -> std::process::Command {
    let mut c = std::process::Command::new(crate::cli::flumen());
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    c
}

async fn start_cluster(dir: &std::path::Path) -> (String, Process, Vec<Process>) {
    let port = process_port();
    let bind = format!("127.0.0.1:{port}");
    let url = flumen::engine::cluster::ClusterUrl::parse(&format!("df://{bind}")).unwrap();
    let scheduler = spawn(&["scheduler", "--bind", &bind], &dir.join("scheduler.log"));
    let executors: Vec<_> = (0..2)
        .map(|i| spawn_executor(&bind, &dir.join(format!("executor-{i}.log"))))
        .collect();
    wait_for_executors(&url, 2).await;
    (bind, scheduler, executors)
}

/// `flumen -c sql` on the cluster at `bind`, with a checkpoint in `dir` and 200 ms
/// batches, its stderr in `dir/query.log`.
fn spawn_query(dir: &std::path::Path, bind: &str, sql: &str) -> Process {
    spawn(
        &[
            "--no-ui",
            "--cluster",
            &format!("df://{bind}"),
            "--checkpoint",
            dir.join("checkpoint").to_str().unwrap(),
            "--batch-interval",
            "200 ms",
            "-c",
            sql,
        ],
        &dir.join("query.log"),
    )
}

/// The real processes: `flumen scheduler`, two `flumen executor`s and a query with a
/// checkpoint and `restart = 'on-failure'` writing files. The scheduler is SIGKILLed
/// while the query runs: the batch fails naming the cluster, and once a scheduler is
/// back on the same address the query restarts from its checkpoint — every generated
/// value is written exactly once, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_recovers_from_its_checkpoint_when_the_scheduler_comes_back() {
    let dir = crate::common::temp_dir("cluster-scheduler-back");
    let out = dir.join("out");
    let (bind, mut scheduler, mut executors) = start_cluster(&dir).await;
    let query_log = dir.join("query.log");
    let mut query = spawn_query(
        &dir,
        &bind,
        &format!(
            "SET restart = 'on-failure'; SET restart_delay = '1 s'; SET restart_attempts = '10';
             CREATE STREAM t WITH (connector = 'rate', rows_per_second = '1000');
             CREATE SINK o WITH (connector = 'files', path = '{}', format = 'csv') AS SELECT value FROM t;",
            out.display()
        ),
    );
    wait_for("rows before the kill", || {
        values_written(&out).len() >= 1000
    })
    .await;
    scheduler.kill().unwrap();
    scheduler.wait().unwrap();
    let log = || std::fs::read_to_string(&query_log).unwrap_or_default();
    wait_for("the failure", || log().contains("restart 1 of 10")).await;
    assert!(
        log().contains(&format!(
            "cluster df://{bind}: the scheduler or an executor cannot be reached"
        )),
        "{}",
        log()
    );
    let before = values_written(&out).len();
    let mut scheduler = spawn(
        &["scheduler", "--bind", &bind],
        &dir.join("scheduler-2.log"),
    );
    wait_for("rows after the scheduler is back", || {
        values_written(&out).len() >= before + 2000
    })
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &query.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(query.wait().unwrap().code(), Some(0), "{}", log());
    for p in executors.iter_mut().chain([&mut scheduler]) {
        let _ = p.kill();
        let _ = p.wait();
    }
    let mut values = values_written(&out);
    values.sort_unstable();
    let n = values.len() as i64;
    values.dedup();
    assert_eq!(values.len() as i64, n, "values written twice");
    assert_eq!(
        (values[0], values[values.len() - 1]),
        (0, n - 1),
        "values lost"
    );
}

fn session_at(t: flumen::engine::Time) -> (FlumenSession, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t));
    let session = FlumenSession::new(flumen::connectors::registry(), clock.clone());
    (session, clock)
}

/// A running aggregate whose state lives in 3 state partitions, with a checkpoint.
fn counts_script(dir: &std::path::Path, cluster: Option<&str>, partitions: usize) -> String {
    format!(
        "{}SET batch_interval = '1 second';
         SET checkpoint_location = '{}';
         SET state_partitions = '{partitions}';
         SET output_mode = 'update';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
         CREATE SINK c WITH (connector = 'memory') AS
           SELECT value % 4 AS k, count(*) AS n, sum(value) AS s FROM r GROUP BY value % 4;",
        cluster
            .map(|u| format!("SET cluster = '{u}';\n"))
            .unwrap_or_default(),
        dir.display()
    )
}

/// The newest count and sum of each key the sink `c` received.
async fn latest(session: &mut FlumenSession) -> Vec<String> {
    rows(
        session,
        "SELECT k, max(n), max(s) FROM c GROUP BY k ORDER BY k",
    )
    .await
}

/// On a cluster a running aggregate's groups live in state partitions on the
/// executors, versioned in files under the checkpoint: a query stopped after two
/// batches and started again — its executors' caches gone, so every partition is read
/// back from its files — gives the totals of one uninterrupted local run. A
/// checkpoint is never resumed under a different placement: local state on a
/// cluster, cluster state locally, another partition count — each a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_totals_resume_from_state_partitions_and_a_changed_placement_is_refused() {
    use flumen::engine::Time;
    let cluster = cluster().await;
    let url = cluster.url.to_string();
    // Uninterrupted, in this process: 4 batches, values 0..40.
    let local = crate::common::temp_dir("cluster-state-local");
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&counts_script(&local, None, 3))
        .await
        .unwrap();
    s.execute("ADVANCE 4 BATCHES").await.unwrap();
    let whole = latest(&mut s).await;
    s.stop_all().await.unwrap();
    assert_eq!(whole, ["0|10|180", "1|10|190", "2|10|200", "3|10|210"]);

    // On the cluster: 2 batches, stopped, the executors forget, 2 more.
    let dir = crate::common::temp_dir("cluster-state-resume");
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&counts_script(&dir, Some(&url), 3))
        .await
        .unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(
        latest(&mut s).await,
        ["0|5|40", "1|5|45", "2|5|50", "3|5|55"]
    );
    let explain = rows(&mut s, "SHOW PROGRESS").await;
    assert!(!explain.is_empty());
    s.stop_all().await.unwrap();
    flumen::engine::cluster::state::forget(&dir);
    let (mut s, clock) = session_at(flumen::engine::Clock::now(clock.as_ref()));
    s.execute_script(&counts_script(&dir, Some(&url), 3))
        .await
        .unwrap();
    s.execute("ADVANCE 2 BATCHES").await.unwrap();
    assert_eq!(latest(&mut s).await, whole);
    s.stop_all().await.unwrap();
    // The versions are files, one folder per state partition.
    let state = dir.join("queries/c/cluster-state/0");
    let mut parts: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    parts.sort();
    assert_eq!(parts, ["p0", "p1", "p2"]);

    // A state partition's files gone (a folder the executors do not share, or deleted):
    // the next batch fails naming the partition and the folder, never an empty state.
    std::fs::remove_dir_all(state.join("p1")).unwrap();
    flumen::engine::cluster::state::forget(&dir);
    let (mut s, _) = session_at(flumen::engine::Clock::now(clock.as_ref()));
    s.execute_script(&counts_script(&dir, Some(&url), 3))
        .await
        .unwrap();
    let e = s
        .execute("ADVANCE 1 BATCHES")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("state partition 1: no full snapshot at or before version")
            && e.contains(&format!("{}", state.join("p1").display()))
            && e.contains("must share this folder"),
        "{e}"
    );
    s.stop_all().await.unwrap();

    // The cluster's checkpoint run locally, or with other partitions; the local one
    // on the cluster.
    for (script, want) in [
        (
            counts_script(&dir, None, 3),
            "keeps its groups in state partitions on a cluster's executors",
        ),
        (
            counts_script(&dir, Some(&url), 5),
            "set state_partitions = 3",
        ),
        (
            counts_script(&local, Some(&url), 3),
            "holds its groups on the driver",
        ),
    ] {
        let (mut s, _) = session_at(flumen::engine::Clock::now(clock.as_ref()));
        let e = s.execute_script(&script).await.unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

/// Append-mode windows on a cluster resume too: stopped after four batches, their
/// executors' caches gone, the query emits each window once, as one uninterrupted
/// local run does (the windows emitted before the stop are not emitted again, the
/// open ones come back from the state files with the watermark from the checkpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_windows_resume_from_state_partitions() {
    use flumen::engine::Time;
    let cluster = cluster().await;
    let url = cluster.url.to_string();
    let script = |dir: &std::path::Path, cluster: Option<&str>| {
        format!(
            "{}SET batch_interval = '1 second';
             SET checkpoint_location = '{}';
             SET state_partitions = '3';
             SET output_mode = 'append';
             CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
             CREATE STREAM ev WITH (timestamp = 'timestamp', watermark_delay = '1 second') AS
               SELECT timestamp, value FROM r;
             CREATE SINK c WITH (connector = 'memory') AS
               SELECT window(timestamp, INTERVAL '2' SECOND)['start'] AS ws, value % 3 AS k,
                      count(*) AS n, sum(value) AS s
               FROM ev GROUP BY window(timestamp, INTERVAL '2' SECOND), value % 3;",
            cluster
                .map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default(),
            dir.display()
        )
    };
    let all = "SELECT ws, k, n, s FROM c ORDER BY ws, k";
    let local = crate::common::temp_dir("cluster-append-local");
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&script(&local, None)).await.unwrap();
    s.execute("ADVANCE 8 BATCHES").await.unwrap();
    let whole = rows(&mut s, all).await;
    s.stop_all().await.unwrap();
    // Events up to 7.9 s, watermark 6.9 s: windows [0, 2), [2, 4) and [4, 6) closed.
    assert_eq!(whole.len(), 9, "{whole:?}");

    let dir = crate::common::temp_dir("cluster-append-resume");
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script(&dir, Some(&url))).await.unwrap();
    s.execute("ADVANCE 4 BATCHES").await.unwrap();
    let mut got = rows(&mut s, all).await;
    assert!(!got.is_empty() && got.len() < whole.len(), "{got:?}");
    let b = s
        .queries()
        .next()
        .unwrap()
        .ctx
        .recent_batches()
        .last()
        .cloned();
    let b = b.unwrap();
    // The fold and the close jobs; the sink's plan over what the driver holds runs here.
    assert_eq!(
        (b.operators[0].rows, b.cluster.map(|c| c.jobs)),
        (0, Some(2))
    );
    s.stop_all().await.unwrap();
    flumen::engine::cluster::state::forget(&dir);
    let (mut s, _) = session_at(flumen::engine::Clock::now(clock.as_ref()));
    s.execute_script(&script(&dir, Some(&url))).await.unwrap();
    s.execute("ADVANCE 4 BATCHES").await.unwrap();
    got.extend(rows(&mut s, all).await);
    s.stop_all().await.unwrap();
    got.sort();
    assert_eq!(got, whole);
}

/// `state_ttl` never drops an append-mode window before the watermark closes it (its
/// only output) nor forgets its earlier rows, on the executors as locally: a window
/// with rows 3 batches apart, closed by the watermark a batch later, is emitted whole
/// with a time-to-live of 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_time_to_live_keeps_append_windows_until_they_close_on_a_cluster() {
    let cluster = cluster().await;
    let mut emitted = Vec::new();
    for url in [None, Some(cluster.url.to_string())] {
        let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
        s.execute_script(&format!(
            "{}SET output_mode = 'append'; SET state_ttl = '2 seconds';
             CREATE STREAM bids (auction BIGINT, ts TIMESTAMP,
               WATERMARK FOR ts AS ts - INTERVAL '4' SECOND) WITH (connector = 'memory');
             CREATE SINK c WITH (connector = 'memory') AS
               SELECT window(ts, INTERVAL '10' SECOND)['start'] AS ws, auction, count(*) AS n
               FROM bids GROUP BY window(ts, INTERVAL '10' SECOND), auction;
             INSERT INTO bids VALUES (1, '2026-01-01T00:00:01'), (1, '2026-01-01T00:00:02');
             ADVANCE 3 BATCHES;
             INSERT INTO bids VALUES (1, '2026-01-01T00:00:03');
             ADVANCE 1 BATCHES;
             INSERT INTO bids VALUES (2, '2026-01-01T00:00:15');
             ADVANCE 1 BATCHES;",
            url.as_ref()
                .map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default()
        ))
        .await
        .unwrap();
        emitted.push(rows(&mut s, "SELECT ws, auction, n FROM c ORDER BY ws, auction").await);
        s.stop_all().await.unwrap();
    }
    assert_eq!(emitted[0], ["2026-01-01T00:00:00|1|3"]);
    assert_eq!(emitted[1], emitted[0]);
}

/// Session windows keep each user's sessions in state partitions on the executors,
/// partitioned by user: batch by batch the same late rows, watermarks and emitted
/// sessions as a local run, in update, append and complete mode. Batch 3 brings a row
/// at 8 s for user 1, whose session [1 s, 8 s) the watermark (9 s) closed in batch 2:
/// locally that session left the state at the end of batch 2, so the row starts a new
/// one (merged with [10 s, 15 s)); on the executors it leaves before batch 3 folds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_windows_keep_their_sessions_on_the_executors() {
    let cluster = cluster().await;
    let batches = [
        "(1, '2026-01-01T00:00:01'), (2, '2026-01-01T00:00:02'), (1, '2026-01-01T00:00:03')",
        "(1, '2026-01-01T00:00:10')",
        // 4 s: its session [4 s, 9 s) ends at the watermark (9 s): late.
        "(2, '2026-01-01T00:00:04'), (1, '2026-01-01T00:00:08'), (1, '2026-01-01T00:00:12'), \
         (3, '2026-01-01T00:00:20')",
        "(3, '2026-01-01T00:00:22'), (4, '2026-01-01T00:00:40')",
    ];
    for mode in ["update", "append", "complete"] {
        let mut runs = Vec::new();
        for url in [None, Some(cluster.url.to_string())] {
            let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
            s.execute_script(&format!(
                "{}SET output_mode = '{mode}'; SET state_partitions = '3';
                 CREATE STREAM acts (user_id BIGINT, ts TIMESTAMP,
                   WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'memory');
                 CREATE SINK c WITH (connector = 'memory') AS
                   SELECT user_id, session_window(ts, INTERVAL '5' SECOND)['start'] AS s,
                          session_window(ts, INTERVAL '5' SECOND)['end'] AS e, count(*) AS n
                   FROM acts GROUP BY user_id, session_window(ts, INTERVAL '5' SECOND);",
                url.as_ref()
                    .map(|u| format!("SET cluster = '{u}';\n"))
                    .unwrap_or_default()
            ))
            .await
            .unwrap();
            let mut seen = Vec::new();
            for rows_in in batches {
                s.execute(&format!("INSERT INTO acts VALUES {rows_in}"))
                    .await
                    .unwrap();
                s.execute("ADVANCE 1 BATCHES").await.unwrap();
                let q = s.queries().next().unwrap();
                let b = q.ctx.recent_batches().last().cloned().unwrap();
                if url.is_some() {
                    // No session on the driver; append mode's second job emits what the
                    // watermark closed (it moves every batch here).
                    assert_eq!(b.operators[0].rows, 0, "{mode}");
                    let jobs = b.cluster.as_ref().map(|c| c.jobs);
                    assert_eq!(jobs, Some(if mode == "append" { 2 } else { 1 }), "{mode}");
                }
                let emitted = rows(
                    &mut s,
                    "SELECT user_id, s, e, n FROM c ORDER BY user_id, s, n",
                )
                .await
                .join(" ");
                seen.push(format!(
                    "late {} watermark {:?} emitted {emitted}",
                    b.late_rows, b.watermark
                ));
            }
            s.stop_all().await.unwrap();
            runs.push(seen);
        }
        assert_eq!(runs[0], runs[1], "{mode}");
        assert!(runs[0][2].starts_with("late 1 "), "{:?}", runs[0]);
        if mode == "append" {
            // Each closed session once, final: the row at 8 s did not reopen [1, 8).
            assert!(
                runs[0][3].ends_with(
                    "emitted 1|2026-01-01T00:00:01|2026-01-01T00:00:08|2 \
                     1|2026-01-01T00:00:08|2026-01-01T00:00:17|3 \
                     2|2026-01-01T00:00:02|2026-01-01T00:00:07|1 \
                     3|2026-01-01T00:00:20|2026-01-01T00:00:27|2"
                ),
                "{:?}",
                runs[0]
            );
        }
    }
}

/// Append-mode session windows resume from their state partitions: a run stopped
/// after 4 batches and started again from the checkpoint with the executors' caches
/// gone (the sessions come back from the files) emits, with the first part, the
/// sessions a local run of 8 batches emits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_windows_resume_from_state_partitions() {
    use flumen::engine::Time;
    let cluster = cluster().await;
    let url = cluster.url.to_string();
    let script = |dir: &std::path::Path, cluster: Option<&str>| {
        format!(
            "{}SET batch_interval = '1 second';
             SET checkpoint_location = '{}';
             SET state_partitions = '3';
             SET output_mode = 'append';
             CREATE STREAM r WITH (connector = 'rate', rows_per_second = '10');
             CREATE STREAM ev WITH (timestamp = 'timestamp', watermark_delay = '1 second') AS
               SELECT timestamp, value FROM r WHERE value % 7 <> 3 AND value % 11 <> 5;
             CREATE SINK c WITH (connector = 'memory') AS
               SELECT value % 4 AS k, session_window(timestamp, INTERVAL '300' MILLISECOND)['start'] AS ss,
                      count(*) AS n, sum(value) AS s
               FROM ev GROUP BY value % 4, session_window(timestamp, INTERVAL '300' MILLISECOND);",
            cluster
                .map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default(),
            dir.display()
        )
    };
    let all = "SELECT k, ss, n, s FROM c ORDER BY k, ss";
    let local = crate::common::temp_dir("cluster-sessions-local");
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&script(&local, None)).await.unwrap();
    s.execute("ADVANCE 8 BATCHES").await.unwrap();
    let whole = rows(&mut s, all).await;
    s.stop_all().await.unwrap();
    assert!(whole.len() > 8, "{whole:?}");

    let dir = crate::common::temp_dir("cluster-sessions-resume");
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script(&dir, Some(&url))).await.unwrap();
    s.execute("ADVANCE 4 BATCHES").await.unwrap();
    let mut got = rows(&mut s, all).await;
    assert!(!got.is_empty() && got.len() < whole.len(), "{got:?}");
    s.stop_all().await.unwrap();
    flumen::engine::cluster::state::forget(&dir);
    let (mut s, _) = session_at(flumen::engine::Clock::now(clock.as_ref()));
    s.execute_script(&script(&dir, Some(&url))).await.unwrap();
    s.execute("ADVANCE 4 BATCHES").await.unwrap();
    got.extend(rows(&mut s, all).await);
    s.stop_all().await.unwrap();
    got.sort();
    let mut whole = whole;
    whole.sort();
    assert_eq!(got, whole);
}

/// Dedup keeps the keys it has seen in state partitions on the executors: `DISTINCT`
/// (every row many times a batch, from several partitions) and the first row of
/// each key by arrival, over rows the executors generate — the rows of a local run,
/// batch by batch; no key on the driver; the same after a restart from the
/// checkpoint with the executors' caches gone (the keys come back from the files).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_keeps_its_keys_on_the_executors_and_the_first_row_of_each() {
    use flumen::engine::Time;
    let cluster = cluster().await;
    let script = |dir: &std::path::Path, url: Option<&str>| {
        format!(
            "{}SET batch_interval = '1 second';
             SET checkpoint_location = '{}';
             SET state_partitions = '3';
             SET output_mode = 'append';
             CREATE STREAM r WITH (connector = 'rate', rows_per_second = '400');
             CREATE STREAM kv AS SELECT value % 500 AS k, value, _batch_time FROM r;
             CREATE SINK firsts WITH (connector = 'memory') AS
               SELECT k, value FROM
                 (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY _batch_time) AS rn FROM kv)
               WHERE rn = 1;
             CREATE SINK distinct_keys WITH (connector = 'memory') AS
               SELECT DISTINCT value % 11 AS m, value % 3 AS t FROM r;",
            url.map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default(),
            dir.display()
        )
    };
    // The first row of each key, the distinct rows.
    async fn seen(s: &mut FlumenSession) -> (Vec<String>, Vec<String>) {
        (
            rows(s, "SELECT k, value FROM firsts ORDER BY k, value").await,
            rows(s, "SELECT m, t FROM distinct_keys ORDER BY m, t").await,
        )
    }
    let local = crate::common::temp_dir("cluster-dedup-local");
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&script(&local, None)).await.unwrap();
    let mut want = Vec::new();
    for _ in 0..4 {
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        want.push(seen(&mut s).await);
    }
    s.stop_all().await.unwrap();
    // 400 values a batch, keys value % 500: a key's first row is value = key, seen
    // in the first two batches; later batches bring only keys seen.
    let (firsts, distinct) = &want[3];
    let mut expected: Vec<String> = (0..500).map(|k| format!("{k}|{k}")).collect();
    expected.sort();
    assert_eq!(firsts, &expected);
    assert_eq!(want[1].0, expected);
    assert_eq!(distinct.len(), 33);

    let dir = crate::common::temp_dir("cluster-dedup");
    let url = cluster.url.to_string();
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&script(&dir, Some(&url))).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        got.push(seen(&mut s).await);
        let q = s.queries().next().unwrap();
        let b = q.ctx.recent_batches().last().cloned().unwrap();
        assert!(b.operators.iter().all(|o| o.rows == 0), "{:?}", b.operators);
        assert!(b.cluster.is_some());
    }
    s.stop_all().await.unwrap();
    flumen::engine::cluster::state::forget(&dir);
    let (mut s, _) = session_at(flumen::engine::Clock::now(clock.as_ref()));
    s.execute_script(&script(&dir, Some(&url))).await.unwrap();
    for _ in 0..2 {
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        // The memory sinks start empty again: what the first run kept, then this.
        let (f, d) = seen(&mut s).await;
        let (f0, d0) = &got[1];
        let mut firsts: Vec<String> = f0.iter().cloned().chain(f).collect();
        let mut distinct: Vec<String> = d0.iter().cloned().chain(d).collect();
        firsts.sort();
        distinct.sort();
        got.push((firsts, distinct));
    }
    s.stop_all().await.unwrap();
    assert_eq!(got, want);
}

/// With the checkpoint on an object store (the S3 server), the state partitions'
/// versions are objects under it, which every executor opens itself: a running count
/// over files read by the executors, run to the end of its input, then — on a new
/// scheduler and new executors, their caches empty — again over more files, gives
/// exact totals, the groups read back from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_partitions_live_in_an_s3_checkpoint() {
    let dir = crate::common::temp_dir("cluster-s3-state");
    let (input, out) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let bucket = format!("flumen-cluster-state-{}", std::process::id());
    crate::connectors::files::create_bucket(&bucket).await;
    let checkpoint = format!("s3://{bucket}/app");
    let mut want = std::collections::BTreeMap::<String, u64>::new();
    let add_files = |want: &mut std::collections::BTreeMap<String, u64>, from: usize, to: usize| {
        for f in from..to {
            let mut text = String::new();
            for i in 0..300 {
                let k = format!("k{:02}", (f * 7 + i) % 40);
                text.push_str(&k);
                text.push('\n');
                *want.entry(k).or_default() += 1;
            }
            std::fs::write(input.join(format!("f{f:02}.csv")), text).unwrap();
        }
    };
    let sql = format!(
        "SET output_mode = 'update'; SET state_partitions = '3';
         CREATE STREAM t (k TEXT) WITH (connector = 'files', path = '{}', format = 'csv',
           include_existing = 'true', max_files_per_batch = '2');
         CREATE SINK o WITH (connector = 'files', path = '{}', format = 'parquet') AS
           SELECT k, count(*) AS n FROM t GROUP BY k;",
        input.display(),
        out.display()
    );
    let totals = || async {
        crate::crash::query(&out, "SELECT k, max(n) FROM output GROUP BY k ORDER BY k").await
    };
    for (run, files) in [(0, (0, 6)), (1, (6, 10))] {
        add_files(&mut want, files.0, files.1);
        let logs = dir.join(format!("run{run}"));
        std::fs::create_dir_all(&logs).unwrap();
        let (bind, _scheduler, _executors) = start_cluster(&logs).await;
        let (sql, checkpoint) = (sql.clone(), checkpoint.clone());
        let done = tokio::task::spawn_blocking(move || {
            flumen_command()
                .args([
                    "--no-ui",
                    "--cluster",
                    &format!("df://{bind}"),
                    "--checkpoint",
                ])
                .args([
                    &checkpoint,
                    "--batch-interval",
                    "200 ms",
                    "--trigger",
                    "available-now",
                ])
                .args(["-c", &sql])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        let expected: Vec<String> = want.iter().map(|(k, n)| format!("{k}|{n}")).collect();
        assert_eq!(totals().await, expected, "run {run}");
    }
    // The versions are objects: one folder per state partition under the checkpoint.
    use futures::TryStreamExt;
    let store = crate::connectors::files::moto_location(&checkpoint);
    let listed: Vec<String> = store
        .store
        .list(Some(&store.prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    for p in 0..3 {
        assert!(
            listed
                .iter()
                .any(|o| o.contains(&format!("/cluster-state/0/p{p}/")) && o.ends_with(".arrow")),
            "{listed:?}"
        );
    }
}

/// A stream join keeps both sides' rows in state partitions on the executors, by
/// the key it equates: the same matches, late rows and watermarks as a local run
/// batch by batch (rows of a side older than its watermark dropped and counted, rows
/// the other side's watermark passed evicted), none of them on the driver; and
/// stopped, its executors' caches gone, it resumes from the rows in the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_joins_keep_both_sides_on_the_executors() {
    use flumen::engine::Time;
    let cluster = cluster().await;
    let url = cluster.url.to_string();
    let script = |dir: &std::path::Path, url: Option<&str>| {
        format!(
            "{}SET state_partitions = '3'; SET checkpoint_location = '{}';
             CREATE STREAM impressions (ad_id BIGINT, imp_time TIMESTAMP,
               WATERMARK FOR imp_time AS imp_time - INTERVAL '2' SECOND)
               WITH (connector = 'files', path = '{imps}', format = 'csv', max_files_per_batch = '1');
             CREATE STREAM clicks (click_ad BIGINT, click_time TIMESTAMP,
               WATERMARK FOR click_time AS click_time - INTERVAL '3' SECOND)
               WITH (connector = 'files', path = '{clicks}', format = 'csv', max_files_per_batch = '1');
             CREATE SINK m WITH (connector = 'memory') AS
               SELECT i.ad_id, i.imp_time, c.click_time FROM impressions i JOIN clicks c
               ON i.ad_id = c.click_ad AND c.click_time BETWEEN i.imp_time AND i.imp_time + INTERVAL '10' SECOND;",
            url.map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default(),
            dir.join("checkpoint").display(),
            imps = dir.join("imps").display(),
            clicks = dir.join("clicks").display(),
        )
    };
    // One CSV file a batch on each side.
    let csv = |rows: &str| -> String {
        rows.split("), (")
            .map(|r| {
                r.trim_matches(|c| c == '(' || c == ')')
                    .replace(", ", ",")
                    .replace('\'', "")
            })
            .map(|r| format!("{r}\n"))
            .collect()
    };
    let batches = [
        (
            "(1, '2026-01-01T00:00:01'), (2, '2026-01-01T00:00:02'), (3, '2026-01-01T00:00:03')",
            "(1, '2026-01-01T00:00:04'), (9, '2026-01-01T00:00:04')",
        ),
        (
            "(4, '2026-01-01T00:00:12'), (1, '2026-01-01T00:00:13')",
            "(2, '2026-01-01T00:00:09'), (3, '2026-01-01T00:00:15'), (4, '2026-01-01T00:00:14')",
        ),
        (
            // 2 s: older than the impressions' watermark (11 s): late.
            "(5, '2026-01-01T00:00:02'), (5, '2026-01-01T00:00:20')",
            "(1, '2026-01-01T00:00:20'), (5, '2026-01-01T00:00:21'), (4, '2026-01-01T00:00:22')",
        ),
        (
            "(6, '2026-01-01T00:00:30')",
            // 10 s: older than the clicks' watermark (18 s): late.
            "(4, '2026-01-01T00:00:10'), (6, '2026-01-01T00:00:31'), (1, '2026-01-01T00:00:23')",
        ),
    ];
    let mut runs = Vec::new();
    for url in [None, Some(url.as_str())] {
        let dir = crate::common::temp_dir("cluster-join");
        std::fs::create_dir_all(dir.join("imps")).unwrap();
        std::fs::create_dir_all(dir.join("clicks")).unwrap();
        let (mut s, clock) = session_at(Time::from_millis(0));
        s.execute_script(&script(&dir, url)).await.unwrap();
        let mut seen = Vec::new();
        for (i, (imps, clicks)) in batches.iter().enumerate() {
            if i == 2 && url.is_some() {
                // Stopped and started again, the executors' caches gone.
                s.stop_all().await.unwrap();
                flumen::engine::cluster::state::forget(&dir);
                let (again, _) = session_at(flumen::engine::Clock::now(clock.as_ref()));
                s = again;
                s.execute_script(&script(&dir, url)).await.unwrap();
            }
            std::fs::write(dir.join(format!("imps/f{i}.csv")), csv(imps)).unwrap();
            std::fs::write(dir.join(format!("clicks/f{i}.csv")), csv(clicks)).unwrap();
            s.execute("ADVANCE 1 BATCHES").await.unwrap();
            let q = s.queries().next().unwrap();
            let b = q.ctx.recent_batches().last().cloned().unwrap();
            if url.is_some() {
                assert_eq!(b.operators[0].rows, 0, "batch {i}");
            }
            let mut got = rows(&mut s, "SELECT ad_id, imp_time, click_time FROM m").await;
            got.sort();
            seen.push(format!(
                "late {} watermark {:?} matches {}",
                b.late_rows,
                b.watermark,
                got.join(" ")
            ));
        }
        s.stop_all().await.unwrap();
        runs.push(seen);
    }
    // The cluster's sink restarted empty at batch 2: compare what each batch added.
    let added = |run: &Vec<String>| -> Vec<String> {
        run.iter()
            .map(|l| l.split(" matches ").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(added(&runs[0]), added(&runs[1]));
    let matches = |l: &String| -> Vec<String> {
        l.split(" matches ")
            .nth(1)
            .unwrap_or("")
            .split(' ')
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect()
    };
    let mut local: Vec<String> = matches(&runs[0][3]);
    let mut cluster: Vec<String> = matches(&runs[1][1]);
    cluster.extend(matches(&runs[1][3]));
    local.sort();
    cluster.sort();
    assert_eq!(cluster, local);
    assert!(local.len() >= 5, "{local:?}");
    assert!(runs[0][2].starts_with("late 1 "), "{:?}", runs[0]);
    assert!(runs[0][3].starts_with("late 1 "), "{:?}", runs[0]);
}

/// A top-N keeps each key's first N rows in state partitions on the executors: the
/// rows whose rank changed each batch (update mode) and every kept row (complete
/// mode) are those of a local run, batch by batch, and none is on the driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn top_n_keeps_its_rows_on_the_executors() {
    let cluster = cluster().await;
    let batches = [
        "('a', 5), ('a', 3), ('b', 1), ('c', 7)",
        "('a', 9), ('b', 2), ('b', 8), ('c', 1)",
        "('a', 4), ('c', 10), ('d', 6), ('b', 8)",
    ];
    for mode in ["update", "complete"] {
        let mut runs = Vec::new();
        for url in [None, Some(cluster.url.to_string())] {
            let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
            s.execute_script(&format!(
                "{}SET output_mode = '{mode}'; SET state_partitions = '3';
                 CREATE STREAM s (k TEXT, v BIGINT) WITH (connector = 'memory');
                 CREATE SINK top WITH (connector = 'memory') AS
                   SELECT k, v, rn FROM (SELECT k, v, ROW_NUMBER() OVER
                     (PARTITION BY k ORDER BY v DESC) AS rn FROM s) WHERE rn <= 2;",
                url.as_ref()
                    .map(|u| format!("SET cluster = '{u}';\n"))
                    .unwrap_or_default()
            ))
            .await
            .unwrap();
            let mut seen = Vec::new();
            for rows_in in batches {
                s.execute(&format!("INSERT INTO s VALUES {rows_in}"))
                    .await
                    .unwrap();
                s.execute("ADVANCE 1 BATCHES").await.unwrap();
                let q = s.queries().next().unwrap();
                let b = q.ctx.recent_batches().last().cloned().unwrap();
                if url.is_some() {
                    assert_eq!(b.operators[0].rows, 0, "{mode}");
                } else {
                    assert!(b.operators[0].rows > 0, "{mode}");
                }
                let mut got = rows(&mut s, "SELECT k, v, rn FROM top").await;
                got.sort();
                seen.push(got.join(" "));
            }
            s.stop_all().await.unwrap();
            runs.push(seen);
        }
        assert_eq!(runs[0], runs[1], "{mode}");
        assert!(runs[0][2].contains("c|10|1"), "{mode}: {:?}", runs[0]);
    }
}

/// A running count over 1,000,000 keys on the cluster: the groups are spread over the
/// executors' state partitions and none is on the driver — its operator holds no
/// rows and no bytes, batch after batch, as the keys grow — and the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_keys_live_in_the_executors_state_partitions_not_on_the_driver() {
    let cluster = cluster().await;
    let dir = crate::common::temp_dir("cluster-million-keys");
    let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
    s.execute_script(&format!(
        "SET cluster = '{}';
         SET checkpoint_location = '{}';
         SET state_partitions = '4';
         SET output_mode = 'update';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '250000');
         CREATE SINK c WITH (connector = 'memory') AS
           SELECT value % 1000000 AS k, count(*) AS n FROM r GROUP BY value % 1000000;",
        cluster.url,
        dir.display()
    ))
    .await
    .unwrap();
    for batch in 1..=5 {
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        let q = s.queries().next().unwrap();
        let info = q.ctx.recent_batches().last().cloned().unwrap();
        let op = &info.operators[0];
        assert_eq!(
            (op.rows, op.memory_bytes),
            (0, 0),
            "batch {batch}: the driver holds state"
        );
        let keys = (batch * 250_000).min(1_000_000);
        let (partitions, rows) = flumen::engine::cluster::state::cached(&dir);
        assert_eq!(
            (partitions, rows),
            (4, keys),
            "batch {batch}: the executors' state partitions"
        );
    }
    // 1,250,000 values: keys 0..250,000 counted twice, the others once.
    assert_eq!(
        rows(&mut s, "SELECT n, count(*) FROM (SELECT k, max(n) AS n FROM c GROUP BY k) GROUP BY n ORDER BY n").await,
        ["1|750000", "2|250000"]
    );
}

/// An executor started as a process on free ports (it takes a port and the next). A
/// port found free can be taken by another test before the executor binds it: one that
/// exits at once is started again on other ports.
fn spawn_executor(scheduler: &str, log: &std::path::Path) -> Process {
    for _ in 0..10 {
        let port = process_port();
        let mut child = spawn(
            &[
                "executor",
                "--scheduler",
                scheduler,
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--slots",
                "1",
            ],
            log,
        );
        let mut exited = false;
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
        }
        if !exited {
            return child;
        }
    }
    panic!(
        "no executor would start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The real processes: `flumen scheduler`, two `flumen executor`s, and two queries
/// with a checkpoint reading CSV files, keeping a running count per key in state
/// partitions on the executors, one writing its changes as Parquet (by the tasks), the
/// other upserting them into PostgreSQL (by the driver). One executor is SIGKILLed five
/// times while the queries run (a new one started each time): the tasks it ran are
/// retried elsewhere, or a batch fails and its query restarts from its checkpoint, and
/// the committed output — the Parquet files through the sink's commit log, the
/// PostgreSQL table — holds exactly the right count for every key: no batch lost, none
/// counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_counts_stay_exact_while_executors_are_killed() {
    let dir = crate::common::temp_dir("cluster-executor-kills");
    let input = dir.join("in");
    let out = dir.join("out");
    std::fs::create_dir_all(&input).unwrap();
    let (files, lines, keys) = (60, 500, 200);
    let mut want = std::collections::BTreeMap::<String, u64>::new();
    let mut texts = Vec::new();
    for f in 0..files {
        let mut text = String::new();
        for i in 0..lines {
            let k = format!("k{:03}", (f * 31 + i * 7) % keys);
            text.push_str(&k);
            text.push('\n');
            *want.entry(k).or_default() += 1;
        }
        texts.push(text);
    }
    // Files arrive in waves, each written under a hidden name and renamed: the query
    // has input left whenever an executor is killed, and a third of it arrives only
    // after the last kill — read by the executors started in place of the killed.
    let mut written = 0;
    let mut write_up_to = |n: usize| {
        while written < n.min(files) {
            let hidden = input.join(format!(".f{written:03}.csv"));
            std::fs::write(&hidden, &texts[written]).unwrap();
            std::fs::rename(&hidden, input.join(format!("f{written:03}.csv"))).unwrap();
            written += 1;
        }
    };
    write_up_to(12);
    let (bind, mut scheduler, mut executors) = start_cluster(&dir).await;
    let table = format!(
        "cluster_counts_{}_{}",
        bind.rsplit(':').next().unwrap(),
        std::process::id()
    );
    let query_log = dir.join("query.log");
    let mut query = spawn_query(
        &dir,
        &bind,
            &format!(
                "SET restart = 'on-failure'; SET restart_delay = '200 ms'; SET restart_attempts = '100';
                 SET output_mode = 'update'; SET state_partitions = '4';
                 CREATE STREAM t (k TEXT) WITH (connector = 'files', path = '{}', format = 'csv',
                   include_existing = 'true', max_files_per_batch = '1');
                 CREATE SINK o WITH (connector = 'files', path = '{}', format = 'parquet') AS
                   SELECT k, count(*) AS n FROM t GROUP BY k;
                 CREATE SINK p WITH (connector = 'postgres', url = '{}', table = '{table}',
                   mode = 'upsert', key = 'k') AS
                   SELECT k, count(*) AS n FROM t GROUP BY k;",
                input.display(),
                out.display(),
                crate::connectors::kafka::POSTGRES,
            ),
    );
    let log = || std::fs::read_to_string(&query_log).unwrap_or_default();
    // Batches committed, by the times in their files' names (`part-<ms>-<p>`): the
    // log is compacted, its entries are not a count.
    let batches = || {
        if !out.join("_flumen_log").exists() {
            return 0;
        }
        let mut times: Vec<String> = crate::crash::committed(&out)
            .iter()
            .filter_map(|f| f.rsplit('/').next()?.split('-').nth(1).map(String::from))
            .collect();
        times.sort();
        times.dedup();
        times.len()
    };
    let total = (files * lines) as u64;
    let counted = || async {
        let rows = crate::crash::query(
            &out,
            "SELECT CAST(sum(n) AS BIGINT) FROM (SELECT k, max(n) AS n FROM output GROUP BY k)",
        )
        .await;
        rows[0].parse::<u64>().unwrap_or(0)
    };
    for kill in 0..5 {
        wait_for("batches before a kill", || batches() >= 3 + kill * 6).await;
        let victim = kill % 2;
        executors[victim].kill().unwrap();
        executors[victim].wait().unwrap();
        executors[victim] = spawn_executor(
            &bind,
            &dir.join(format!("executor-{victim}-{}.log", kill + 1)),
        );
        write_up_to(12 + 6 * (kill + 1));
    }
    write_up_to(files);
    let in_postgres = || async {
        crate::crash::pg_rows(&format!(
            "SELECT CAST(coalesce(sum(n), 0) AS BIGINT) FROM {table}"
        ))
        .await[0]
            .parse::<u64>()
            .unwrap_or(0)
    };
    for _ in 0..1200 {
        if batches() > 0 && counted().await == total && in_postgres().await == total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &query.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(query.wait().unwrap().code(), Some(0), "{}", log());
    for p in executors.iter_mut().chain([&mut scheduler]) {
        let _ = p.kill();
        let _ = p.wait();
    }
    let got = crate::crash::query(
        &out,
        "SELECT k, CAST(max(n) AS BIGINT) FROM output GROUP BY k ORDER BY k",
    )
    .await;
    let want: Vec<String> = want.iter().map(|(k, n)| format!("{k}|{n}")).collect();
    assert_eq!(got, want, "{}", log());
    // The PostgreSQL sink (written by the driver, a transaction per batch and
    // partition with its commit record): the same counts.
    let upserted = crate::crash::pg_rows(&format!(
        "SELECT CAST(substr(k, 2) AS BIGINT), n FROM {table} ORDER BY k"
    ))
    .await;
    let want_pg: Vec<String> = want
        .iter()
        .map(|l| {
            l.trim_start_matches('k')
                .trim_start_matches('0')
                .to_string()
        })
        .map(|l| {
            if l.starts_with('|') {
                format!("0{l}")
            } else {
                l
            }
        })
        .collect();
    assert_eq!(upserted, want_pg, "{}", log());
    // No batch's changes written twice: a key's count appears once per batch.
    let dup =
        crate::crash::query(&out, "SELECT count(*) - count(DISTINCT (k, n)) FROM output").await;
    assert_eq!(dup, ["0"]);
}

async fn wait_for_executors(url: &flumen::engine::cluster::ClusterUrl, n: usize) {
    for _ in 0..600 {
        if flumen::engine::cluster::node::executor_count(url)
            .await
            .unwrap_or(0)
            == n
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("waited 60 s for {n} executors");
}

/// Generators are read by the executors: a batch of a `rate` and a `nexmark` stream
/// travels as event ranges (SHOW PROGRESS and the progress record say which streams
/// the executors read), its rows are counted all the same, and the results are the
/// rows this process computes. A query that fails on a generated row still names the
/// row: the batch is read here to find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generators_are_read_by_the_executors() {
    let cluster = cluster().await;
    let script = |url: Option<&str>| {
        format!(
            "{}CREATE STREAM r WITH (connector = 'rate', rows_per_second = '50000');
             CREATE STREAM bid WITH (connector = 'nexmark', table = 'bid', event_rate = '20000');
             CREATE SINK a WITH (connector = 'memory') AS
               SELECT value % 7 AS k, count(*) AS n, sum(value) AS s FROM r GROUP BY value % 7;
             CREATE SINK b WITH (connector = 'memory') AS
               SELECT auction % 5 AS k, count(*) AS n, max(price) AS p FROM bid GROUP BY auction % 5;",
            url.map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default()
        )
    };
    let mut got = Vec::new();
    for url in [None, Some(cluster.url.to_string())] {
        let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
        s.execute_script(&script(url.as_deref())).await.unwrap();
        s.execute("ADVANCE 3 BATCHES").await.unwrap();
        let mut rows_of = Vec::new();
        for sink in ["a", "b"] {
            rows_of.push(
                rows(
                    &mut s,
                    &format!("SELECT k, max(n), max(s) FROM (SELECT k, n, {} AS s FROM {sink}) GROUP BY k ORDER BY k", if sink == "a" { "s" } else { "p" }),
                )
                .await,
            );
        }
        let q = s.queries().next().unwrap();
        let batch = q.ctx.recent_batches().last().cloned().unwrap();
        let progress = batch.progress("a");
        assert_eq!(progress["sources"][0]["numInputRows"], 50_000, "{progress}");
        if url.is_some() {
            assert_eq!(
                progress["cluster"]["readByExecutors"],
                serde_json::json!(["r"]),
                "{progress}"
            );
            let shown = rows(&mut s, "SHOW PROGRESS").await;
            assert!(
                shown.iter().any(|l| l.ends_with("; read there: r)")),
                "{shown:?}"
            );
        }
        s.stop_all().await.unwrap();
        got.push(rows_of);
    }
    assert_eq!(got[0], got[1]);
    assert_eq!(got[0][0].len(), 7);
    // Files: the executors read the batch's files, and count their rows.
    let dir = crate::common::temp_dir("cluster-files-scan");
    std::fs::write(dir.join("a.csv"), "1,x\n2,y\n3,x\n").unwrap();
    std::fs::write(dir.join("b.csv"), "4,y\n5,x\n").unwrap();
    let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
    s.execute_script(&format!(
        "SET cluster = '{}';
         CREATE STREAM f (v BIGINT, k TEXT) WITH (connector = 'files', path = '{}',
           format = 'csv', include_existing = 'true');
         CREATE SINK o WITH (connector = 'memory') AS SELECT k, sum(v) AS s FROM f GROUP BY k;",
        cluster.url,
        dir.display()
    ))
    .await
    .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    assert_eq!(
        rows(&mut s, "SELECT k, max(s) FROM o GROUP BY k ORDER BY k").await,
        ["x|9", "y|6"]
    );
    let shown = rows(&mut s, "SHOW PROGRESS").await;
    assert!(shown[0].ends_with("; read there: f)"), "{shown:?}");
    let q = s.queries().next().unwrap();
    let progress = q.ctx.recent_batches()[0].progress("o");
    assert_eq!(progress["sources"][0]["numInputRows"], 5, "{progress}");
    assert_eq!(
        progress["cluster"]["uncountedSources"],
        serde_json::json!([]),
        "{progress}"
    );
    s.stop_all().await.unwrap();
    // A generated row the query fails on is found and named.
    let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
    s.execute_script(&format!(
        "SET cluster = '{}';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '20000');
         CREATE SINK o WITH (connector = 'memory') AS SELECT 10 / (value - 12345) AS q FROM r;",
        cluster.url
    ))
    .await
    .unwrap();
    let e = s
        .execute("ADVANCE 1 BATCHES")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stream r: the query failed on row 12345 of batch"),
        "{e}"
    );
}

/// A task that fails with an I/O error (a retryable failure for Ballista) runs again,
/// and the batch's report counts it: the rows are all there once, and the batch that
/// needed the retry says `1` retry — the scheduler's account of the job's attempts,
/// which Ballista does not give its client.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_task_is_counted_in_its_batch() {
    use flumen::datafusion::arrow::array::AsArray;
    use flumen::datafusion::arrow::datatypes::{DataType, Int64Type};
    use flumen::datafusion::error::DataFusionError;
    use flumen::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    use flumen::datafusion::prelude::{SessionContext, col};
    use std::sync::atomic::{AtomicBool, Ordering};
    // Fails the first time any task calls it, on whichever executor runs that task.
    static FAILED: AtomicBool = AtomicBool::new(false);
    let fail_once = create_udf(
        "fail_once",
        vec![DataType::Int64],
        DataType::Int64,
        Volatility::Volatile,
        Arc::new(|args: &[ColumnarValue]| {
            if !FAILED.swap(true, Ordering::SeqCst) {
                return Err(DataFusionError::IoError(std::io::Error::other(
                    "the disk hiccuped",
                )));
            }
            Ok(args[0].clone())
        }),
    );
    let mut functions = flumen::sql::functions::udfs();
    functions.push(Arc::new(fail_once.clone()));
    let cluster = LocalCluster::start(2, 1, functions).await.unwrap();
    let session = SessionContext::new();
    session.register_udf(fail_once.clone());
    let ctx = flumen::engine::StreamingContext::builder(std::time::Duration::from_secs(1))
        .with_session(session)
        .with_clock(Arc::new(ManualClock::default()))
        .with_cluster(cluster.url.to_string())
        .build()
        .unwrap();
    let r = ctx
        .source(Arc::new(flumen::connectors::rate::RateSource::new(
            "r", 1000, None,
        )))
        .unwrap();
    let out = r
        .transform(|df| Ok(df.select(vec![fail_once.call(vec![col("value")]).alias("v")])?))
        .unwrap();
    let sink = flumen::engine::sink::MemorySink::new("o");
    out.write_to(sink.clone()).unwrap();
    ctx.start().await.unwrap();
    ctx.advance_batches(2).await.unwrap();
    ctx.stop(true).await.unwrap();
    assert!(FAILED.load(Ordering::SeqCst));
    let mut values: Vec<i64> = sink
        .all()
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    values.sort();
    assert_eq!(values, (0..2000).collect::<Vec<i64>>());
    let retries: Vec<Option<u64>> = ctx
        .recent_batches()
        .iter()
        .map(|b| b.cluster.as_ref().unwrap().retries)
        .collect();
    assert_eq!(retries, [Some(1), Some(0)]);
}

/// A `files` sink on a cluster is written by the tasks — each its own
/// `part-<batch ms>-<partition>` file, Hive folders with `partition_by` — and the
/// driver commits the batch once every task has written: the committed files hold the
/// rows a local run writes, and SHOW PROGRESS says the sink was written there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_files_sink_is_written_by_the_tasks() {
    let cluster = cluster().await;
    let mut outputs = Vec::new();
    for url in [None, Some(cluster.url.to_string())] {
        let out = crate::common::temp_dir("cluster-files-sink");
        let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
        s.execute_script(&format!(
            "{}CREATE STREAM r WITH (connector = 'rate', rows_per_second = '30000');
             CREATE SINK o WITH (connector = 'files', path = '{}', format = 'parquet',
               partition_by = 'k') AS SELECT value % 3 AS k, value FROM r WHERE value % 5 <> 0;",
            url.as_ref()
                .map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default(),
            out.display()
        ))
        .await
        .unwrap();
        s.execute("ADVANCE 2 BATCHES").await.unwrap();
        if url.is_some() {
            let shown = rows(&mut s, "SHOW PROGRESS").await;
            assert!(
                shown[0].ends_with("; read there: r; written there: o)"),
                "{shown:?}"
            );
        }
        s.stop_all().await.unwrap();
        let mut files: Vec<String> = crate::crash::committed(&out)
            .iter()
            .map(|f| {
                f.strip_prefix(&format!("{}/", out.display()))
                    .unwrap()
                    .to_string()
            })
            .collect();
        files.sort();
        assert!(
            files
                .iter()
                .all(|f| f.starts_with("k=") && f.contains("/part-")),
            "{files:?}"
        );
        let counts = crate::crash::query(
            &out,
            "SELECT count(*), CAST(sum(value) AS BIGINT) FROM output",
        )
        .await;
        outputs.push(counts);
    }
    // Two batches of 30,000 values, those divisible by 5 left out.
    assert_eq!(outputs[0], ["48000|1440000000"]);
    assert_eq!(outputs[0], outputs[1]);
}

/// Kafka on a cluster, as Spark's KafkaRDD: each task reads one topic partition's
/// offset range of the batch from the broker itself; the rows (metadata columns too)
/// are those a local run reads, and a record the query cannot decode fails the batch
/// naming its partition and offset (`on_error = 'fail'`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_partitions_are_read_by_the_executors() {
    use crate::connectors::kafka::{client, create_topic, produce, topic};
    let cluster = cluster().await;
    let c = client().await;
    let t = topic("cluster-people");
    create_topic(&c, &t, 2).await;
    produce(
        &c,
        &t,
        0,
        &[r#"{"id": 1, "name": "ann"}"#, r#"{"id": 2, "name": "bo"}"#],
    )
    .await;
    produce(&c, &t, 1, &[r#"{"id": 3, "name": "cy"}"#]).await;
    let script = |url: Option<&str>| {
        format!(
            "{}CREATE STREAM people (id BIGINT NOT NULL, name TEXT, _partition INT, _offset BIGINT)
               WITH (connector = 'kafka', bootstrap_servers = '{}', topic = '{t}',
                     starting_offsets = 'earliest', format = 'json');
             CREATE SINK out WITH (connector = 'memory') AS
               SELECT id, upper(name) AS name, _partition, _offset FROM people;",
            url.map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default(),
            crate::connectors::kafka::BROKER
        )
    };
    let mut got = Vec::new();
    for url in [None, Some(cluster.url.to_string())] {
        let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
        s.execute_script(&script(url.as_deref())).await.unwrap();
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        if url.is_some() {
            let shown = rows(&mut s, "SHOW PROGRESS").await;
            assert!(shown[0].ends_with("; read there: people)"), "{shown:?}");
        }
        // The records the tasks read, counted as the driver counts them locally.
        let q = s.queries().next().unwrap();
        let progress = q.ctx.recent_batches()[0].progress("out");
        assert_eq!(progress["sources"][0]["numInputRows"], 3, "{progress}");
        got.push(rows(&mut s, "SELECT * FROM out ORDER BY id").await);
        s.stop_all().await.unwrap();
    }
    assert_eq!(got[0], ["1|ANN|0|0", "2|BO|0|1", "3|CY|1|0"]);
    assert_eq!(got[0], got[1]);
    // A record that is not JSON fails the batch, named.
    produce(&c, &t, 1, &["not json"]).await;
    let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
    s.execute_script(&script(Some(&cluster.url.to_string())))
        .await
        .unwrap();
    let e = s
        .execute("ADVANCE 1 BATCHES")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("{t}/1@1")), "{e}");
}

/// A running count written to files is one job a batch on a cluster: the state tasks'
/// changes go straight to the tasks that write them (the sink's plan fused with the
/// aggregate's), never through the driver, and the committed files hold what a local
/// run writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_count_into_files_is_one_job_a_batch() {
    let cluster = cluster().await;
    let mut outputs = Vec::new();
    for url in [None, Some(cluster.url.to_string())] {
        let out = crate::common::temp_dir("cluster-fused");
        let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
        s.execute_script(&format!(
            "{}SET output_mode = 'update'; SET state_partitions = '3';
             CREATE STREAM r WITH (connector = 'rate', rows_per_second = '20000');
             CREATE SINK o WITH (connector = 'files', path = '{}', format = 'parquet') AS
               SELECT value % 1000 AS k, count(*) AS n, sum(value) AS s FROM r
               WHERE value % 7 <> 3 GROUP BY value % 1000;",
            url.as_ref()
                .map(|u| format!("SET cluster = '{u}';\n"))
                .unwrap_or_default(),
            out.display()
        ))
        .await
        .unwrap();
        s.execute("ADVANCE 3 BATCHES").await.unwrap();
        if url.is_some() {
            let shown = rows(&mut s, "SHOW PROGRESS").await;
            assert!(shown.iter().all(|l| l.contains(" (1 jobs, ")), "{shown:?}");
        }
        s.stop_all().await.unwrap();
        outputs.push(
            crate::crash::query(
                &out,
                "SELECT count(*), CAST(sum(n) AS BIGINT), CAST(sum(s) AS BIGINT) FROM
                   (SELECT k, max(n) AS n, max(s) AS s FROM output GROUP BY k)",
            )
            .await,
        );
    }
    assert_eq!(outputs[0], outputs[1]);
    // 60,000 values, those with value % 7 = 3 left out, over 1,000 keys.
    assert_eq!(
        outputs[0][0].split('|').take(2).collect::<Vec<_>>(),
        ["1000", "51429"]
    );
}

/// Windowed aggregates keep their groups in state partitions on the executors: the
/// tasks drop the rows of windows the watermark closed (counted as late) and evict
/// those windows; in update mode the driver advances the watermark from the groups
/// they emit, in append mode from each task's summary, then a second job emits the
/// windows the new watermark closed. The same rows, late counts and watermarks as a
/// local run, batch by batch, and no group on the driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windowed_counts_keep_their_groups_on_the_executors() {
    let cluster = cluster().await;
    let batches = [
        "(1, '2026-01-01T00:00:01'), (1, '2026-01-01T00:00:05'), (2, '2026-01-01T00:00:12')",
        "(2, '2026-01-01T00:00:15')",
        // 3 s: its window [0, 10) ended before the watermark (11 s): late.
        "(1, '2026-01-01T00:00:03'), (3, '2026-01-01T00:00:25')",
        // 13 s: [10, 20) ended before the watermark (21 s): late.
        "(3, '2026-01-01T00:00:26'), (2, '2026-01-01T00:00:13'), (4, '2026-01-01T00:00:40')",
    ];
    for mode in ["update", "append"] {
        let mut runs = Vec::new();
        for url in [None, Some(cluster.url.to_string())] {
            let (mut s, _) = session_at(flumen::engine::Time::from_millis(0));
            s.execute_script(&format!(
                "{}SET output_mode = '{mode}'; SET state_partitions = '3';
             CREATE STREAM bids (auction BIGINT, ts TIMESTAMP,
               WATERMARK FOR ts AS ts - INTERVAL '4' SECOND) WITH (connector = 'memory');
             CREATE SINK c WITH (connector = 'memory') AS
               SELECT window(ts, INTERVAL '10' SECOND)['start'] AS ws, auction, count(*) AS n
               FROM bids GROUP BY window(ts, INTERVAL '10' SECOND), auction;",
                url.as_ref()
                    .map(|u| format!("SET cluster = '{u}';\n"))
                    .unwrap_or_default()
            ))
            .await
            .unwrap();
            let mut seen = Vec::new();
            for rows_in in batches {
                s.execute(&format!("INSERT INTO bids VALUES {rows_in}"))
                    .await
                    .unwrap();
                s.execute("ADVANCE 1 BATCHES").await.unwrap();
                let q = s.queries().next().unwrap();
                let b = q.ctx.recent_batches().last().cloned().unwrap();
                assert_eq!(
                    b.operators[0].rows,
                    if url.is_some() {
                        0
                    } else {
                        b.operators[0].rows
                    }
                );
                if url.is_some() {
                    // Update mode: the tasks' job (the sink's plan runs here, over rows
                    // the driver holds). Append mode: a second job emits once the
                    // watermark moved (every batch here).
                    let jobs = b.cluster.as_ref().map(|c| c.jobs);
                    assert_eq!(jobs, Some(if mode == "append" { 2 } else { 1 }), "{mode}");
                }
                let emitted = rows(&mut s, "SELECT ws, auction, n FROM c ORDER BY ws, auction")
                    .await
                    .join(" ");
                seen.push(format!(
                    "late {} watermark {:?} emitted {emitted}",
                    b.late_rows, b.watermark
                ));
            }
            seen.extend(
                rows(
                    &mut s,
                    "SELECT ws, auction, n FROM c ORDER BY ws, auction, n",
                )
                .await,
            );
            s.stop_all().await.unwrap();
            runs.push(seen);
        }
        assert_eq!(runs[0], runs[1], "{mode}");
        assert!(runs[0][2].starts_with("late 1 "), "{:?}", runs[0]);
        assert!(runs[0][3].starts_with("late 1 "), "{:?}", runs[0]);
        if mode == "append" {
            // [0, 10) closes when the watermark passes 10 s (batch 2: 15 - 4 = 11 s),
            // [10, 20) and [20, 30) at batch 4 (40 - 4 = 36 s): each once, final.
            assert!(!runs[0][0].contains("emitted 2026"), "{:?}", runs[0]);
            assert_eq!(
                &runs[0][4..],
                [
                    "2026-01-01T00:00:00|1|2",
                    "2026-01-01T00:00:10|2|2",
                    "2026-01-01T00:00:20|3|2"
                ],
                "{:?}",
                runs[0]
            );
        }
    }
}
