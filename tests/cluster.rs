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

async fn rows(session: &mut FlumenSession, sql: &str) -> Vec<Vec<String>> {
    match session.execute(sql).await.unwrap() {
        StatementResult::Rows { batches, .. } => {
            let mut out = Vec::new();
            for b in &batches {
                for r in 0..b.num_rows() {
                    out.push(
                        (0..b.num_columns())
                            .map(|c| {
                                flumen::datafusion::arrow::util::display::array_value_to_string(
                                    b.column(c),
                                    r,
                                )
                                .unwrap()
                            })
                            .collect(),
                    );
                }
            }
            out
        }
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
    assert_eq!(counts, vec![vec!["a", "2"], vec!["b", "1"]]);
    let progress = rows(&mut session, "SHOW PROGRESS").await;
    let ran_on = progress[0].last().unwrap();
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
