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
/// mode, dedup, stream–stream joins, the window table functions, ksqlDB windows and
/// Nexmark q0–q8 — over many small batches, each batch's plans run as Ballista jobs:
/// the rows are those the files expect, which local runs produce.
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
    // The aggregate's input plan and the output's plan.
    assert_eq!(jobs, 2, "{ran_on}");
    let q = session.queries().next().unwrap();
    let progress = q.ctx.recent_batches()[0].progress("counts");
    assert_eq!(progress["cluster"]["url"], cluster.url.to_string());
    assert_eq!(progress["cluster"]["jobs"], 2);
    assert_eq!(progress["cluster"]["executors"], 2);
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

/// Starts `flumen <args>` with its stderr kept in `log`.
fn spawn(args: &[&str], log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(crate::cli::flumen())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
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

/// The real processes: `flumen scheduler`, two `flumen executor`s and a query with a
/// checkpoint and `restart = 'on-failure'` writing files. The scheduler is SIGKILLed
/// while the query runs: the batch fails naming the cluster, and once a scheduler is
/// back on the same address the query restarts from its checkpoint — every generated
/// value is written exactly once, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_recovers_from_its_checkpoint_when_the_scheduler_comes_back() {
    use flumen::engine::cluster::{ClusterUrl, node};
    let dir = crate::common::temp_dir("cluster-scheduler-back");
    let out = dir.join("out");
    let port = node::free_port("127.0.0.1").unwrap();
    let bind = format!("127.0.0.1:{port}");
    let url = ClusterUrl::parse(&format!("df://{bind}")).unwrap();
    let mut scheduler = spawn(&["scheduler", "--bind", &bind], &dir.join("scheduler.log"));
    let mut executors: Vec<_> = (0..2)
        .map(|i| {
            // An executor takes its port and the next.
            let p = node::free_port("127.0.0.1").unwrap();
            spawn(
                &[
                    "executor",
                    "--scheduler",
                    &bind,
                    "--bind",
                    &format!("127.0.0.1:{p}"),
                    "--slots",
                    "1",
                ],
                &dir.join(format!("executor-{i}.log")),
            )
        })
        .collect();
    for _ in 0..600 {
        if node::executor_count(&url).await.unwrap_or(0) == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(node::executor_count(&url).await.unwrap(), 2);
    let query_log = dir.join("query.log");
    let mut query = spawn(
        &[
            "--no-ui",
            "--cluster",
            &format!("df://{bind}"),
            "--checkpoint",
            dir.join("checkpoint").to_str().unwrap(),
            "--batch-interval",
            "200 ms",
            "-c",
            &format!(
                "SET restart = 'on-failure'; SET restart_delay = '1 s'; SET restart_attempts = '10';
                 CREATE STREAM t WITH (connector = 'rate', rows_per_second = '1000');
                 CREATE SINK o WITH (connector = 'files', path = '{}', format = 'csv') AS SELECT value FROM t;",
                out.display()
            ),
        ],
        &query_log,
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
