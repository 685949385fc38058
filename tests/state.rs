//! Keyed state that scales (`state_partitions`, `state_memory`, `state_ttl`): a
//! running aggregate, a `DISTINCT`, hopping and session windows and a top-N streamed
//! through 1, 2 and 7 partitions, one of them with a budget that forces spilling, end with the rows
//! one DataFusion batch query over all the input gives; so does an interval join that
//! drops its state as early as the watermarks allow, and a keyed join restarted
//! every two batches under other partition counts with its rows spilled; a checkpoint
//! restarts under another partition count; the state is visible per operator.

use flumen::engine::{Clock, Time};

use crate::checkpoint::session_at;
use flumen::sql::FlumenSession;

use crate::common::{sql_rows, sql_session, temp_dir};

const KEYS: i64 = 1_000_000;
const BATCHES: i64 = 8;
const ROWS: i64 = 400_000;

/// Input rows `from..to`: keys spread over `0..KEYS` (each about three times over
/// all batches), a two-column key (`k`, `g`), values 0..1000.
fn input_rows(from: i64, to: i64) -> String {
    format!(
        "SELECT k, 'g' || CAST(k % 3 AS TEXT) AS g, v FROM (
           SELECT (value * 7919 + value / {ROWS}) % {KEYS} AS k,
                  (value * 31 + value / {ROWS}) % 1000 AS v
           FROM range({from}, {to}))"
    )
}

const QUERY: &str = "SELECT k, g, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi
                     FROM s GROUP BY k, g";

/// The same by the one `BIGINT` key (the store's own index for such keys).
const BY_K: &str = "SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi
                    FROM s GROUP BY k";

/// The last row emitted for each key, as count/sum/min/max only grow or shrink one
/// way: the streamed query's final state.
fn final_rows(sink: &str) -> String {
    format!(
        "SELECT k, g, max(n) AS n, max(s) AS s, min(lo) AS lo, max(hi) AS hi FROM {sink} GROUP BY k, g"
    )
}

/// How many rows one query gives and the other does not, both ways, counted as
/// multisets: `"0"` when the two give the same rows.
async fn rows_differ(s: &mut FlumenSession, got: &str, want: &str) -> String {
    let both = format!(
        "SELECT count(*) FROM ((SELECT * FROM ({got}) EXCEPT ALL SELECT * FROM ({want}))
                               UNION ALL (SELECT * FROM ({want}) EXCEPT ALL SELECT * FROM ({got})))"
    );
    sql_rows(s, &both).await.remove(0)
}

fn assert_none_failed(s: &FlumenSession) {
    for q in s.queries() {
        assert!(q.ctx.failure().is_none(), "query {} failed", q.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_aggregate_over_a_million_keys_in_1_2_and_7_partitions_and_spilled_equals_the_batch_query()
 {
    let mut s = sql_session();
    s.execute_script(
        "SET output_mode = 'update';
         CREATE STREAM s (k BIGINT, g TEXT, v BIGINT) WITH (connector = 'memory');",
    )
    .await
    .unwrap();
    let configs = [("p1", 1, "1 GB"), ("p2", 2, "1 GB"), ("p7", 7, "8 MB")];
    for (sink, partitions, memory) in configs {
        s.execute_script(&format!(
            "SET state_partitions = '{partitions}'; SET state_memory = '{memory}';
             CREATE SINK {sink} WITH (connector = 'memory') AS {QUERY};
             CREATE SINK k{sink} WITH (connector = 'memory') AS {BY_K};
             CREATE SINK d{sink} WITH (connector = 'memory') AS SELECT DISTINCT k, g FROM s;"
        ))
        .await
        .unwrap();
    }
    for b in 0..BATCHES {
        s.execute(&format!(
            "INSERT INTO s {}",
            input_rows(b * ROWS, (b + 1) * ROWS)
        ))
        .await
        .unwrap();
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
    }
    assert_none_failed(&s);
    let batch = format!(
        "SELECT k, g, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi
         FROM ({}) GROUP BY k, g",
        input_rows(0, BATCHES * ROWS)
    );
    let groups = sql_rows(&mut s, &format!("SELECT count(*) FROM ({batch})")).await;
    assert!(
        groups[0].parse::<i64>().unwrap() > 900_000,
        "most keys seen: {groups:?}"
    );
    let by_k = format!(
        "SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi
         FROM ({}) GROUP BY k",
        input_rows(0, BATCHES * ROWS)
    );
    for (sink, partitions, _) in configs {
        let differ = rows_differ(&mut s, &final_rows(sink), &batch).await;
        assert_eq!(differ, "0", "{partitions} partitions: rows differ");
        let last_by_k = format!(
            "SELECT k, max(n) AS n, max(s) AS s, min(lo) AS lo, max(hi) AS hi FROM k{sink} GROUP BY k"
        );
        let differ = rows_differ(&mut s, &last_by_k, &by_k).await;
        assert_eq!(differ, "0", "{partitions} partitions: rows by k differ");
        let count = sql_rows(
            &mut s,
            &format!("SELECT count(*) FROM ({})", final_rows(sink)),
        )
        .await;
        assert_eq!(count, groups, "{partitions} partitions: groups");
        // DISTINCT (the Dedup operator on the same store): every key once.
        let distinct = sql_rows(
            &mut s,
            &format!("SELECT count(*), count(DISTINCT k) FROM d{sink}"),
        )
        .await;
        assert_eq!(
            distinct,
            [format!("{}|{}", groups[0], groups[0])],
            "{partitions} partitions: DISTINCT"
        );
    }
    // The spilled one went to disk, and says so per operator.
    let p7 = s.queries().find(|q| q.target == "p7").unwrap();
    let last = p7.ctx.last_batches(1).pop().unwrap();
    let op = &last.operators[0];
    assert_eq!(op.name, "RunningAggregate");
    assert!(op.spilled_bytes > 0, "{op:?}");
    assert_eq!(op.rows, groups[0].parse::<u64>().unwrap());
    s.stop_all().await.unwrap();
}

fn checkpointed(dir: &std::path::Path, partitions: usize) -> String {
    format!(
        "SET batch_interval = '1 second';
         SET output_mode = 'update';
         SET checkpoint_location = '{}';
         SET state_partitions = '{partitions}';
         CREATE STREAM r WITH (connector = 'rate', rows_per_second = '1000');
         CREATE TABLE totals AS SELECT value % 7000 AS k, count(*) AS n, sum(value) AS s
           FROM r GROUP BY value % 7000;",
        dir.display()
    )
}

/// The totals a batch query over `0..n` gives: key count, summed counts and sums.
fn expected(n: i64) -> Vec<String> {
    vec![format!("{}|{n}|{}", n.min(7000), (0..n).sum::<i64>())]
}

const SUMMARY: &str = "SELECT count(*), sum(n), sum(s) FROM totals";

#[tokio::test]
async fn a_checkpoint_of_2_partitions_restarts_in_5_and_deltas_follow_the_keys_touched() {
    let dir = temp_dir("state-repartition");
    let (mut s, clock) = session_at(Time::from_millis(0));
    s.execute_script(&checkpointed(&dir, 2)).await.unwrap();
    s.execute("ADVANCE 6 BATCHES").await.unwrap();
    assert_eq!(sql_rows(&mut s, SUMMARY).await, expected(6000));
    let q = s.queries().next().unwrap();
    // Each batch touches 1,000 new keys: the state grows to 6,000 rows while each
    // checkpoint after the first writes a delta of the 1,000 rows touched — the first
    // (a full snapshot of 1,000 rows) is as big as the last.
    let batches = q.ctx.recent_batches();
    let written: Vec<u64> = batches
        .iter()
        .map(|b| b.operators[0].checkpoint_bytes)
        .collect();
    assert_eq!(batches.last().unwrap().operators[0].rows, 6000);
    assert!(written.iter().all(|b| *b > 0), "{written:?}");
    assert!(written[5] < 2 * written[0], "{written:?}");
    // SHOW PROGRESS names the operator and its state.
    let progress = sql_rows(&mut s, "SHOW PROGRESS totals").await;
    assert!(
        progress
            .last()
            .unwrap()
            .contains("RunningAggregate: 6000 rows"),
        "{progress:?}"
    );
    s.stop_all().await.unwrap();

    // Restarted with 5 partitions: the state is re-partitioned, the totals go on.
    let (mut s, _) = session_at(clock.now());
    s.execute_script(&checkpointed(&dir, 5)).await.unwrap();
    s.execute("ADVANCE 3 BATCHES").await.unwrap();
    assert_eq!(sql_rows(&mut s, SUMMARY).await, expected(9000));
    let explain = s.queries().next().unwrap().explain.join("\n");
    assert!(
        explain.contains("hash-partitioned by key, 5 partitions"),
        "{explain}"
    );
    s.stop_all().await.unwrap();
}

const SESSION_KEYS: i64 = 1_000_000;
const SESSION_ROWS: i64 = 250_000;

/// Session input rows `from..to`: keys spread over `0..SESSION_KEYS`, each row's
/// event time in `[b s, b s + 3 s)` for its batch `b` (out of order, so sessions
/// of a key merge across batches, never late under a 5 s watermark delay).
fn session_rows(from: i64, to: i64) -> String {
    format!(
        "SELECT (value * 7919 + (value * value) % 997) % {SESSION_KEYS} AS k,
                to_timestamp_millis(1767225600000 + (value / {SESSION_ROWS}) * 1000 + (value * 37) % 3000) AS ts,
                value % 100 AS v
         FROM range({from}, {to})"
    )
}

/// `query` over a stream `e` of [`session_rows`] (watermark 5 s behind), one sink per
/// config (name, output mode, state partitions, state memory), fed 12 batches; the
/// session and the batch query's text of all the input.
async fn event_queries(
    query: &str,
    configs: &[(&str, &str, usize, &str)],
) -> (FlumenSession, String) {
    const BATCHES: i64 = 12;
    let mut s = sql_session();
    s.execute_script(
        "CREATE STREAM e (k BIGINT, ts TIMESTAMP, v BIGINT,
                          WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (connector = 'memory');",
    )
    .await
    .unwrap();
    for (sink, mode, partitions, memory) in configs {
        s.execute_script(&format!(
            "SET output_mode = '{mode}'; SET state_partitions = '{partitions}';
             SET state_memory = '{memory}';
             CREATE SINK {sink} WITH (connector = 'memory') AS {query};"
        ))
        .await
        .unwrap();
    }
    for b in 0..BATCHES {
        s.execute(&format!(
            "INSERT INTO e {}",
            session_rows(b * SESSION_ROWS, (b + 1) * SESSION_ROWS)
        ))
        .await
        .unwrap();
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
    }
    assert_none_failed(&s);
    (s, session_rows(0, BATCHES * SESSION_ROWS))
}

/// Sessions (2 s gap) as one batch query over `rows` finds them: a row more than 2 s
/// after its key's previous one starts a new session.
fn batch_sessions(rows: &str) -> String {
    format!(
        "SELECT k, CAST(min(ts) AS TIMESTAMP) AS st,
                CAST(max(ts) + INTERVAL '2' SECOND AS TIMESTAMP) AS en, count(*) AS n, sum(v) AS s
         FROM (SELECT k, ts, v, SUM(new) OVER (PARTITION BY k ORDER BY ts) AS sid
               FROM (SELECT k, ts, v,
                       CASE WHEN ts - LAG(ts) OVER (PARTITION BY k ORDER BY ts) <= INTERVAL '2' SECOND
                            THEN 0 ELSE 1 END AS new
                     FROM ({rows})))
         GROUP BY k, sid"
    )
}

/// Session windows over 1,000,000 keys (3,000,000 out-of-order rows in 12 batches) in 1, 2
/// and 7 partitions, the 7 spilled: append mode emits each session the watermark
/// closed exactly once, as the batch query over all the input has it; complete mode's
/// last batch is every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_in_1_2_and_7_partitions_and_spilled_equal_the_batch_query() {
    let query =
        "SELECT k, CAST(session_window(ts, INTERVAL '2' SECOND)['start'] AS TIMESTAMP) AS st,
                        CAST(session_window(ts, INTERVAL '2' SECOND)['end'] AS TIMESTAMP) AS en,
                        count(*) AS n, sum(v) AS s
                 FROM e GROUP BY k, session_window(ts, INTERVAL '2' SECOND)";
    let configs = [
        ("a1", "append", 1, "1 GB"),
        ("a2", "append", 2, "1 GB"),
        ("a7", "append", 7, "1 MB"),
        ("c7", "complete", 7, "1 MB"),
        ("u7", "update", 7, "1 MB"),
    ];
    let (mut s, all) = event_queries(query, &configs).await;
    let every = batch_sessions(&all);
    // The watermark after the last batch: the latest event time less 5 s.
    let closed = format!(
        "SELECT * FROM ({every}) WHERE en <= (SELECT CAST(max(ts) - INTERVAL '5' SECOND AS TIMESTAMP) FROM ({all}))"
    );
    let n_closed = sql_rows(&mut s, &format!("SELECT count(*) FROM ({closed})")).await;
    let n_every = sql_rows(&mut s, &format!("SELECT count(*) FROM ({every})")).await;
    let (n_closed, n_every): (i64, i64) =
        (n_closed[0].parse().unwrap(), n_every[0].parse().unwrap());
    assert!(
        n_closed > 100_000 && n_every > n_closed,
        "{n_closed} closed of {n_every}"
    );
    for (sink, ..) in &configs[..3] {
        let d = rows_differ(&mut s, &format!("SELECT * FROM {sink}"), &closed).await;
        assert_eq!(d, "0", "{sink}: closed sessions differ");
    }
    // A memory sink in complete mode holds the last batch's result.
    let d = rows_differ(&mut s, "SELECT * FROM c7", &every).await;
    assert_eq!(d, "0", "complete mode: sessions differ");
    // Update mode's changelog, applied (what it added less what it retracted): every
    // session, each once with its last values; sessions grew across batches.
    let applied = "SELECT k, st, en, n, s FROM u7 WHERE _op = '+I'
                   EXCEPT ALL SELECT k, st, en, n, s FROM u7 WHERE _op = '-D'";
    let d = rows_differ(&mut s, applied, &every).await;
    assert_eq!(d, "0", "update mode: the applied changelog differs");
    let retracted = sql_rows(&mut s, "SELECT count(*) FROM u7 WHERE _op = '-D'").await;
    assert_ne!(retracted[0], "0", "no session grew across batches");
    let a7 = s.queries().find(|q| q.target == "a7").unwrap();
    let op = &a7.ctx.last_batches(1).pop().unwrap().operators[0];
    assert_eq!(op.name, "SessionAggregate");
    assert!(op.spilled_bytes > 0, "{op:?}");
    s.stop_all().await.unwrap();
}

/// Hopping windows (4 s every 2 s) over the session test's 1,000,000 keys in 1, 2 and 7
/// partitions, the 7 spilled: append mode (`EMIT FINAL`) emits each window the
/// watermark closed exactly once, as the batch query over all the input has it, and
/// update mode's last value of every window is the batch query's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_in_1_2_and_7_partitions_and_spilled_equal_the_batch_query() {
    let query = "SELECT k, CAST(window(ts, INTERVAL '4' SECOND, INTERVAL '2' SECOND)['start'] AS TIMESTAMP) AS ws,
                        count(*) AS n, sum(v) AS s
                 FROM e GROUP BY k, window(ts, INTERVAL '4' SECOND, INTERVAL '2' SECOND)";
    let configs = [
        ("a1", "append", 1, "1 GB"),
        ("a2", "append", 2, "1 GB"),
        ("a7", "append", 7, "1 MB"),
        ("u7", "update", 7, "1 MB"),
    ];
    let (mut s, all) = event_queries(query, &configs).await;
    // Each row is in the window starting at its 2 s bin and in the one before.
    let every = format!(
        "SELECT k, ws, count(*) AS n, sum(v) AS s FROM (
           SELECT k, v, CAST(date_bin(INTERVAL '2 seconds', ts) AS TIMESTAMP) AS ws FROM ({all})
           UNION ALL
           SELECT k, v, CAST(date_bin(INTERVAL '2 seconds', ts) - INTERVAL '2' SECOND AS TIMESTAMP) FROM ({all}))
         GROUP BY k, ws"
    );
    let closed = format!(
        "SELECT * FROM ({every}) WHERE ws + INTERVAL '4' SECOND <= (SELECT CAST(max(ts) - INTERVAL '5' SECOND AS TIMESTAMP) FROM ({all}))"
    );
    let n_closed = sql_rows(&mut s, &format!("SELECT count(*) FROM ({closed})")).await;
    let n_every = sql_rows(&mut s, &format!("SELECT count(*) FROM ({every})")).await;
    let (n_closed, n_every): (i64, i64) =
        (n_closed[0].parse().unwrap(), n_every[0].parse().unwrap());
    assert!(
        n_closed > 400_000 && n_every > n_closed,
        "{n_closed} closed of {n_every}"
    );
    for (sink, ..) in &configs[..3] {
        let d = rows_differ(&mut s, &format!("SELECT * FROM {sink}"), &closed).await;
        assert_eq!(d, "0", "{sink}: closed windows differ");
    }
    let last = "SELECT k, ws, max(n) AS n, max(s) AS s FROM u7 GROUP BY k, ws";
    let d = rows_differ(&mut s, last, &every).await;
    assert_eq!(d, "0", "update mode: windows differ");
    for sink in ["a7", "u7"] {
        let q = s.queries().find(|q| q.target == sink).unwrap();
        let op = &q.ctx.last_batches(1).pop().unwrap().operators[0];
        assert_eq!(op.name, "WindowAggregate");
        assert!(op.spilled_bytes > 0, "{sink}: {op:?}");
    }
    s.stop_all().await.unwrap();
}

const JOIN_KEYS: i64 = 1_000_000;
const JOIN_ROWS: i64 = 100_000;

/// One side's rows `from..to` of the join test: keys over `0..JOIN_KEYS`, times in
/// `[b s, b s + 3 s)` for batch `b`: never late under a 3 s delay, and rows the
/// watermark lets go are only just out of reach of later rows (a state dropped too
/// early loses matches); `salt` makes the two sides differ.
fn join_rows(from: i64, to: i64, salt: i64) -> String {
    format!(
        "SELECT (value * 7919 + {salt} * (value % 13)) % {JOIN_KEYS} AS k,
                to_timestamp_millis(1767225600000 + (value / {JOIN_ROWS}) * 1000 + (value * (37 + {salt})) % 3000) AS ts,
                value AS v
         FROM range({from}, {to})"
    )
}

/// An interval join of two streams over 1,000,000 keys (1,000,000 rows a side in 10
/// batches), keyed in 1, 2 and 7 partitions (the 7 spilled) and on an expression of
/// the key (unkeyed), its state dropped as soon as the watermarks allow: every match
/// one batch query over all the input finds, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_join_dropping_its_state_early_equals_the_batch_join() {
    let mut s = sql_session();
    s.execute_script(
        "CREATE STREAM a (k BIGINT, ts TIMESTAMP, v BIGINT,
                          WATERMARK FOR ts AS ts - INTERVAL '3' SECOND) WITH (connector = 'memory');
         CREATE STREAM b (k BIGINT, ts TIMESTAMP, v BIGINT,
                          WATERMARK FOR ts AS ts - INTERVAL '3' SECOND) WITH (connector = 'memory');
         SET output_mode = 'append';",
    )
    .await
    .unwrap();
    let join = |on: &str| {
        format!(
            "SELECT a.k AS k, CAST(a.ts AS TIMESTAMP) AS ats, CAST(b.ts AS TIMESTAMP) AS bts, a.v AS av, b.v AS bv
             FROM a JOIN b ON {on}
               AND a.ts BETWEEN b.ts - INTERVAL '2' SECOND AND b.ts + INTERVAL '2' SECOND"
        )
    };
    // Keyed by `k` in 1, 2 and 7 partitions (the 7 spilled), and unkeyed (no plain
    // column equality: every kept row read each batch).
    let configs = [
        ("j1", "a.k = b.k", 1, "1 GB"),
        ("j2", "a.k = b.k", 2, "1 GB"),
        ("j7", "a.k = b.k", 7, "256 KB"),
        ("jx", "a.k + 0 = b.k", 2, "1 GB"),
    ];
    for (sink, on, partitions, memory) in configs {
        s.execute_script(&format!(
            "SET state_partitions = '{partitions}'; SET state_memory = '{memory}';
             CREATE SINK {sink} WITH (connector = 'memory') AS {};",
            join(on)
        ))
        .await
        .unwrap();
    }
    const BATCHES: i64 = 10;
    for i in 0..BATCHES {
        let (from, to) = (i * JOIN_ROWS, (i + 1) * JOIN_ROWS);
        s.execute(&format!("INSERT INTO a {}", join_rows(from, to, 1)))
            .await
            .unwrap();
        s.execute(&format!("INSERT INTO b {}", join_rows(from, to, 2)))
            .await
            .unwrap();
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
    }
    assert_none_failed(&s);
    let all = |salt| join_rows(0, BATCHES * JOIN_ROWS, salt);
    let want = format!(
        "SELECT a.k AS k, CAST(a.ts AS TIMESTAMP) AS ats, CAST(b.ts AS TIMESTAMP) AS bts, a.v AS av, b.v AS bv
         FROM ({}) a JOIN ({}) b ON a.k = b.k
           AND a.ts BETWEEN b.ts - INTERVAL '2' SECOND AND b.ts + INTERVAL '2' SECOND",
        all(1),
        all(2)
    );
    let n = sql_rows(&mut s, &format!("SELECT count(*) FROM ({want})")).await;
    let n: i64 = n[0].parse().unwrap();
    assert!(n > 100_000, "{n} matches");
    for (sink, ..) in configs {
        let differ = rows_differ(&mut s, &format!("SELECT * FROM {sink}"), &want).await;
        assert_eq!(differ, "0", "{sink}: matches differ");
    }
    let j7 = s.queries().find(|q| q.target == "j7").unwrap();
    let last = j7.ctx.last_batches(1).pop().unwrap();
    assert!(
        last.operators[0].spilled_bytes > 0,
        "{:?}",
        last.operators[0]
    );
    s.stop_all().await.unwrap();
}

/// The join of the restart test over two rate streams (3,000 and 100 rows a second,
/// keys `value % 701`: `a`'s kept rows outnumber `b`'s new ones more than 16 times, so
/// `b`'s rows look theirs up in the index, while `a`'s read all of `b`'s), its
/// checkpoint in `dir`, its state in `partitions` partitions under `memory`.
fn rate_join(dir: &std::path::Path, partitions: usize, memory: &str) -> String {
    format!(
        "SET batch_interval = '1 second';
         SET checkpoint_location = '{}';
         SET state_partitions = '{partitions}';
         SET state_memory = '{memory}';
         CREATE STREAM r1 WITH (connector = 'rate', rows_per_second = '3000');
         CREATE STREAM r2 WITH (connector = 'rate', rows_per_second = '100');
         CREATE STREAM a WITH (timestamp = 'et', watermark_delay = '1 second') AS
           SELECT value % 701 AS k, value AS v, timestamp AS et FROM r1;
         CREATE STREAM b WITH (timestamp = 'et', watermark_delay = '1 second') AS
           SELECT value % 701 AS k, value AS v, timestamp AS et FROM r2;
         CREATE SINK m WITH (connector = 'memory') AS
           SELECT a.k AS k, a.v AS av, b.v AS bv FROM a JOIN b
           ON a.k = b.k AND a.et BETWEEN b.et - INTERVAL '2' SECOND AND b.et + INTERVAL '1' SECOND;",
        dir.display()
    )
}

/// A keyed interval join stopped and restarted from its checkpoint every two
/// batches, alternately in 2 and 5 partitions with a budget that spills its rows:
/// the matches of one uninterrupted run, which are those one batch join over all
/// the input finds; checkpoints after a run's first are deltas.
#[tokio::test]
async fn a_keyed_join_restarted_in_2_and_5_spilled_partitions_equals_the_batch_join() {
    const RUNS: usize = 5;
    let dir = temp_dir("state-join-split");
    let mut now = Time::from_millis(0);
    let mut split = Vec::new();
    for run in 0..RUNS {
        let (mut s, clock) = session_at(now);
        let partitions = if run % 2 == 0 { 2 } else { 5 };
        s.execute_script(&rate_join(&dir, partitions, "64 KB"))
            .await
            .unwrap();
        s.execute("ADVANCE 2 BATCHES").await.unwrap();
        assert_none_failed(&s);
        split.extend(sql_rows(&mut s, "SELECT k, av, bv FROM m").await);
        let q = s.queries().next().unwrap();
        let last = q.ctx.last_batches(1).pop().unwrap();
        let op = last
            .operators
            .iter()
            .find(|o| o.name == "StreamJoin")
            .unwrap();
        assert!(op.spilled_bytes > 0, "run {run}: {op:?}");
        // The derived streams' declared watermarks bound both sides.
        assert!(
            q.explain.join("\n").contains(
                "left rows are kept until the watermark of the right side (latest - 1s) passes them; right rows are kept until the watermark of the left side (latest - 1s)"
            ),
            "{:?}",
            q.explain
        );
        let shown = if partitions == flumen::engine::state::default_partitions() {
            "one partition per core".to_string()
        } else {
            format!("{partitions} partitions")
        };
        assert!(
            q.explain.join("\n").contains(&format!(
                "state keyed by a.k = b.k (hash-partitioned, {shown}"
            )),
            "{:?}",
            q.explain
        );
        s.stop_all().await.unwrap();
        now = clock.now();
    }
    let deltas = std::fs::read_dir(dir.join("queries/m/state"))
        .unwrap()
        .filter(|e| {
            std::fs::read_to_string(e.as_ref().unwrap().path().join("manifest"))
                .is_ok_and(|m| m.contains("\"delta\""))
        })
        .count();
    assert!(deltas > 0, "no delta checkpoint among the kept snapshots");

    let whole_dir = temp_dir("state-join-whole");
    let (mut s, _) = session_at(Time::from_millis(0));
    s.execute_script(&rate_join(&whole_dir, 1, "1 GB"))
        .await
        .unwrap();
    s.execute(&format!("ADVANCE {} BATCHES", 2 * RUNS))
        .await
        .unwrap();
    assert_none_failed(&s);
    let mut whole = sql_rows(&mut s, "SELECT k, av, bv FROM m").await;
    // The rate streams' rows as a batch: value v at v / rate seconds.
    let side = |rate: i64| {
        format!(
            "SELECT value % 701 AS k, value AS v,
                    to_timestamp_millis(value * 1000 / {rate}) AS et
             FROM range(0, {})",
            rate * 2 * RUNS as i64
        )
    };
    let mut batch = sql_rows(
        &mut s,
        &format!(
            "SELECT a.k, a.v, b.v FROM ({}) a JOIN ({}) b
             ON a.k = b.k AND a.et BETWEEN b.et - INTERVAL '2' SECOND AND b.et + INTERVAL '1' SECOND",
            side(3000),
            side(100)
        ),
    )
    .await;
    s.stop_all().await.unwrap();
    assert!(batch.len() > 5_000, "{} matches", batch.len());
    whole.sort();
    split.sort();
    batch.sort();
    assert_eq!(whole.len(), batch.len());
    assert!(
        whole == batch,
        "the uninterrupted run differs from the batch join"
    );
    assert_eq!(split.len(), batch.len());
    assert!(
        split == batch,
        "the restarted run differs from the batch join"
    );
}

/// Top-3 per key over 1,000,000 keys (3,200,000 rows in 8 batches) in 1, 2 and 7
/// partitions, the 7 spilled: complete mode's last result is what one batch query over
/// all the input ranks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_n_in_1_2_and_7_partitions_and_spilled_equals_the_batch_query() {
    const KEYS: i64 = 1_000_000;
    const ROWS: i64 = 400_000;
    const BATCHES: i64 = 8;
    let rows = |from: i64, to: i64| {
        format!(
            "SELECT (value * 7919 + (value * value) % 997) % {KEYS} AS k, (value * 104729) % 1000003 AS v
             FROM range({from}, {to})"
        )
    };
    let top = |from: &str| {
        format!(
            "SELECT k, v, rn FROM (SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC) AS rn
                                   FROM {from}) WHERE rn <= 3"
        )
    };
    let mut s = sql_session();
    s.execute_script(
        "CREATE STREAM s (k BIGINT, v BIGINT) WITH (connector = 'memory');
         SET output_mode = 'complete';",
    )
    .await
    .unwrap();
    let configs = [("t1", 1, "1 GB"), ("t2", 2, "1 GB"), ("t7", 7, "1 MB")];
    for (sink, partitions, memory) in configs {
        s.execute_script(&format!(
            "SET state_partitions = '{partitions}'; SET state_memory = '{memory}';
             CREATE SINK {sink} WITH (connector = 'memory') AS {};",
            top("s")
        ))
        .await
        .unwrap();
    }
    for b in 0..BATCHES {
        s.execute(&format!("INSERT INTO s {}", rows(b * ROWS, (b + 1) * ROWS)))
            .await
            .unwrap();
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
    }
    assert_none_failed(&s);
    let want = top(&format!("({})", rows(0, BATCHES * ROWS)));
    let n = sql_rows(&mut s, &format!("SELECT count(*) FROM ({want})")).await;
    assert!(n[0].parse::<i64>().unwrap() > 400_000, "{n:?}");
    for (sink, ..) in configs {
        let differ = rows_differ(&mut s, &format!("SELECT * FROM {sink}"), &want).await;
        assert_eq!(differ, "0", "{sink}: top rows differ");
    }
    let t7 = s.queries().find(|q| q.target == "t7").unwrap();
    let op = &t7.ctx.last_batches(1).pop().unwrap().operators[0];
    assert_eq!(op.name, "TopN");
    assert!(op.spilled_bytes > 0, "{op:?}");
    s.stop_all().await.unwrap();
}
