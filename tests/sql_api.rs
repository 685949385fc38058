//! The SQL session driven from Rust: what `.slt` files cannot express compactly.

use std::sync::Arc;

use flumen::engine::{ConnectorRegistry, ManualClock};
use flumen::sql::{FlumenSession, StatementResult};

fn session() -> FlumenSession {
    FlumenSession::new(
        ConnectorRegistry::with_builtins(),
        Arc::new(ManualClock::default()),
    )
}

async fn rows(s: &mut FlumenSession, sql: &str) -> usize {
    match s.execute(sql).await.unwrap() {
        StatementResult::Rows { batches, .. } => batches.iter().map(|b| b.num_rows()).sum(),
        other => panic!("rows expected from {sql}, got {other:?}"),
    }
}

/// A windowed query over 1,000 batches keeps its state bounded: closed windows are
/// evicted once the watermark passes them.
#[tokio::test]
async fn windowed_state_stays_bounded_over_1000_batches() {
    let mut s = session();
    s.execute_script(
        "CREATE STREAM ev (k BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
           WITH (connector = 'memory');
         SET output_mode = 'append';
         CREATE SINK out WITH (connector = 'memory') AS
           SELECT window(ts, INTERVAL '2' SECOND)['start'] AS w, k, count(*) AS n
           FROM ev GROUP BY window(ts, INTERVAL '2' SECOND), k;",
    )
    .await
    .unwrap();
    let mut max_state = 0;
    for batch in 0..1000u64 {
        // Each batch: 10 keys at event time = batch seconds.
        let values: Vec<String> = (0..10)
            .map(|k| format!("({k}, TIMESTAMP '2026-01-01T00:00:00' + INTERVAL '{batch} seconds')"))
            .collect();
        s.execute(&format!("INSERT INTO ev VALUES {}", values.join(", ")))
            .await
            .unwrap();
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        let q = s.queries().next().unwrap();
        let last = q.ctx.recent_batches().last().cloned().unwrap();
        max_state = max_state.max(last.state_rows);
    }
    // Open windows at any time: at most two 2-second windows x 10 keys.
    assert!(max_state <= 20, "state grew to {max_state} rows");
    // Windows closed by the last watermark (998 s): 499 windows x 10 keys, each of 2 rows.
    assert_eq!(rows(&mut s, "SELECT * FROM out").await, 4990);
    assert_eq!(rows(&mut s, "SELECT * FROM out WHERE n <> 2").await, 0);
}

/// Script errors name the line of the failing statement.
#[tokio::test]
async fn script_errors_name_the_line() {
    let mut s = session();
    let err = s
        .execute_script("CREATE STREAM a (x INT) WITH (connector = 'memory');\n\nCREATE STREAM b (x INT) WITH (connector = 'nope');")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "line 3: unknown source connector 'nope'; available: memory, queue"
    );
}

/// An interval join over 1,000 batches keeps its state bounded: each side's rows
/// leave once the other side's watermark passes them.
#[tokio::test]
async fn interval_join_state_stays_bounded_over_1000_batches() {
    let mut s = session();
    s.execute_script(
        "CREATE STREAM imp (ad BIGINT, t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '1' SECOND) \
           WITH (connector = 'memory');
         CREATE STREAM clk (ad BIGINT, t TIMESTAMP, WATERMARK FOR t AS t - INTERVAL '1' SECOND) \
           WITH (connector = 'memory');
         CREATE SINK out WITH (connector = 'memory') AS
           SELECT i.ad, i.t AS shown, c.t AS clicked FROM imp i JOIN clk c
             ON i.ad = c.ad AND c.t BETWEEN i.t AND i.t + INTERVAL '3' SECOND;",
    )
    .await
    .unwrap();
    let mut max_state = 0;
    for batch in 0..1000u64 {
        // Each batch: 10 ads shown at `batch` s, clicked 2 s later (in batch + 2).
        let at = |k: u64, s: u64| {
            format!("({k}, TIMESTAMP '2026-01-01T00:00:00' + INTERVAL '{s} seconds')")
        };
        let shown: Vec<String> = (0..10).map(|k| at(batch * 10 + k, batch)).collect();
        s.execute(&format!("INSERT INTO imp VALUES {}", shown.join(", ")))
            .await
            .unwrap();
        if batch >= 2 {
            let clicked: Vec<String> = (0..10).map(|k| at((batch - 2) * 10 + k, batch)).collect();
            s.execute(&format!("INSERT INTO clk VALUES {}", clicked.join(", ")))
                .await
                .unwrap();
        }
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        let q = s.queries().next().unwrap();
        let last = q.ctx.recent_batches().last().cloned().unwrap();
        assert_eq!(last.late_rows, 0);
        max_state = max_state.max(last.state_rows);
    }
    // Impressions wait at most 3 s + the clicks' 1 s delay; clicks at most 1 s.
    assert!(max_state <= 80, "state grew to {max_state} rows");
    assert_eq!(rows(&mut s, "SELECT * FROM out").await, 9980);
    assert_eq!(
        rows(
            &mut s,
            "SELECT * FROM out WHERE clicked - shown <> INTERVAL '2' SECOND"
        )
        .await,
        0
    );
}

/// Differential: Nexmark q0, q1, q2, q5, q7 and q8 streamed over 60 small batches
/// end with the same rows as each query run once, as a batch query, over all the data.
#[tokio::test]
async fn nexmark_streamed_over_many_batches_equals_one_batch_query() {
    let mut s = session();
    // Deterministic pseudo-random data: 3,000 bids over 300 s, 300 people, 600 auctions.
    s.execute_script(
        "CREATE TABLE bids_all AS SELECT
           1000 + (value * 7919) % 53 AS auction, (value * 31) % 101 AS bidder,
           1 + (value * 104729) % 997 AS price, 'c' || CAST(value % 4 AS TEXT) AS channel,
           'https://x/' || CAST(value AS TEXT) AS url,
           CAST(to_timestamp_millis(1767225600000 + value * 100) AS TIMESTAMP) AS date_time,
           '' AS extra, value AS n
         FROM range(0, 3000);
         CREATE TABLE persons_all AS SELECT value AS id, 'p' || CAST(value AS TEXT) AS name,
           CAST(to_timestamp_millis(1767225600000 + value * 1000) AS TIMESTAMP) AS date_time, value * 10 AS n
         FROM range(0, 300);
         CREATE TABLE auctions_all AS SELECT 5000 + value AS id, (value * 13) % 300 AS seller,
           CAST(to_timestamp_millis(1767225600000 + value * 500) AS TIMESTAMP) AS date_time, value * 5 AS n
         FROM range(0, 600);
         CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
           date_time TIMESTAMP, extra TEXT, WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
           WITH (connector = 'memory');
         CREATE STREAM person (id BIGINT, name TEXT, date_time TIMESTAMP,
           WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND) WITH (connector = 'memory');
         CREATE STREAM auction (id BIGINT, seller BIGINT, date_time TIMESTAMP,
           WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND) WITH (connector = 'memory');
         SET output_mode = 'append';
         CREATE SINK q0 WITH (connector = 'memory') AS SELECT auction, bidder, price, date_time, extra FROM bid;
         CREATE SINK q1 WITH (connector = 'memory') AS SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid;
         CREATE SINK q2 WITH (connector = 'memory') AS SELECT auction, price FROM bid WHERE auction % 123 = 0 OR auction % 1007 = 0;
         CREATE SINK q5 WITH (connector = 'memory') AS
           SELECT a.auction, a.ws, a.num FROM
             (SELECT auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)['start'] AS ws, count(*) AS num
                FROM bid GROUP BY auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)) a
             JOIN
             (SELECT ws, max(num) AS maxn FROM
                (SELECT auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)['start'] AS ws, count(*) AS num
                   FROM bid GROUP BY auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND))
              GROUP BY ws) b
             ON a.ws = b.ws AND a.num >= b.maxn;
         CREATE SINK q7 WITH (connector = 'memory') AS
           SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b
             JOIN (SELECT max(price) AS maxprice, window(date_time, INTERVAL '10' SECOND)['end'] AS window_end
                     FROM bid GROUP BY window(date_time, INTERVAL '10' SECOND)) m
             ON b.price = m.maxprice AND b.date_time >= m.window_end - INTERVAL '10' SECOND AND b.date_time < m.window_end;
         CREATE SINK q8 WITH (connector = 'memory') AS
           SELECT p.id, p.name, p.starttime FROM
             (SELECT id, name, window(date_time, INTERVAL '10' SECOND)['start'] AS starttime
                FROM person GROUP BY id, name, window(date_time, INTERVAL '10' SECOND)) p
             JOIN
             (SELECT seller, window(date_time, INTERVAL '10' SECOND)['start'] AS starttime
                FROM auction GROUP BY seller, window(date_time, INTERVAL '10' SECOND)) a
             ON p.id = a.seller AND p.starttime = a.starttime;",
    )
    .await
    .unwrap();
    // 60 batches of 5 s of event time each, then one row per stream far ahead that
    // closes every window.
    for b in 0..60 {
        for (stream, table, cols) in [
            (
                "bid",
                "bids_all",
                "auction, bidder, price, channel, url, date_time, extra",
            ),
            ("person", "persons_all", "id, name, date_time"),
            ("auction", "auctions_all", "id, seller, date_time"),
        ] {
            s.execute(&format!(
                "INSERT INTO {stream} SELECT {cols} FROM {table} WHERE n >= {} AND n < {}",
                b * 50,
                (b + 1) * 50
            ))
            .await
            .unwrap();
        }
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
    }
    s.execute_script(
        "INSERT INTO bid VALUES (1, 1, 1, '', '', TIMESTAMP '2026-01-01T01:00:00', '');
         INSERT INTO person VALUES (-1, '', TIMESTAMP '2026-01-01T01:00:00');
         INSERT INTO auction VALUES (-1, -2, TIMESTAMP '2026-01-01T01:00:00');
         ADVANCE 1 BATCHES;",
    )
    .await
    .unwrap();
    let clock = "date_time < TIMESTAMP '2026-01-01T01:00:00'";
    let batch_queries = [
        ("q0", "SELECT auction, bidder, price, date_time, extra FROM bids_all".to_string(), 3000),
        ("q1", "SELECT auction, bidder, 0.908 * price, date_time FROM bids_all".into(), 3000),
        (
            "q2",
            "SELECT auction, price FROM bids_all WHERE auction % 123 = 0 OR auction % 1007 = 0".into(),
            0,
        ),
        (
            "q5",
            "WITH counts AS (
               SELECT auction, w['start'] AS ws, count(*) AS num FROM
                 (SELECT auction, unnest(flumen_hop_windows(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)) AS w
                    FROM bids_all)
               GROUP BY auction, w['start'])
             SELECT c.auction, c.ws, c.num FROM counts c
               JOIN (SELECT ws, max(num) AS maxn FROM counts GROUP BY ws) m ON c.ws = m.ws AND c.num >= m.maxn"
                .into(),
            0,
        ),
        (
            "q7",
            "SELECT b.auction, b.price, b.bidder, b.date_time FROM bids_all b
               JOIN (SELECT max(price) AS maxprice, date_bin(INTERVAL '10' SECOND, date_time) AS ws
                       FROM bids_all GROUP BY 2) m
               ON b.price = m.maxprice AND date_bin(INTERVAL '10' SECOND, b.date_time) = m.ws"
                .into(),
            0,
        ),
        (
            "q8",
            "SELECT DISTINCT p.id, p.name, date_bin(INTERVAL '10' SECOND, p.date_time)
               FROM persons_all p JOIN auctions_all a ON p.id = a.seller
                AND date_bin(INTERVAL '10' SECOND, p.date_time) = date_bin(INTERVAL '10' SECOND, a.date_time)"
                .into(),
            0,
        ),
    ];
    for (sink, batch, expected) in batch_queries {
        let streamed = format!(
            "SELECT * FROM {sink} WHERE {}",
            if sink == "q2" || sink == "q5" || sink == "q8" {
                "true"
            } else {
                clock
            }
        );
        let n = rows(&mut s, &streamed).await;
        assert!(n > 0, "{sink} produced no rows");
        if expected > 0 {
            assert_eq!(n, expected, "{sink}");
        }
        for (a, b) in [(&streamed, &batch), (&batch, &streamed)] {
            let diff = rows(
                &mut s,
                &format!("SELECT * FROM ({a}) EXCEPT ALL SELECT * FROM ({b})"),
            )
            .await;
            assert_eq!(diff, 0, "{sink}: {a}\n  EXCEPT ALL\n{b}");
        }
    }
}

/// `SHOW PROGRESS` and the progress log (`SET progress_log`, `--progress-log`): one
/// record per batch, as Spark's `StreamingQueryProgress`.
#[tokio::test]
async fn show_progress_and_the_progress_log() {
    let log = crate::common::temp_dir("progress-log").join("progress.jsonl");
    let mut s = crate::common::sql_session();
    s.execute_script(&format!(
        "SET progress_log = '{}';
         CREATE STREAM m (k TEXT, v BIGINT) WITH (connector = 'memory');
         SET output_mode = 'update';
         CREATE SINK totals WITH (connector = 'memory') AS SELECT k, sum(v) AS s FROM m GROUP BY k;
         INSERT INTO m VALUES ('a', 1), ('b', 2), ('a', 3);
         ADVANCE 1 BATCHES;
         INSERT INTO m VALUES ('c', 4);
         ADVANCE 1 BATCHES;",
        log.display()
    ))
    .await
    .unwrap();
    // The newest batch of every query: id, target, batch 1, 1 row in, 1 group changed,
    // 3 groups held.
    let fields = |row: &str| row.split('|').map(str::to_string).collect::<Vec<_>>();
    let rows = crate::common::sql_rows(&mut s, "SHOW PROGRESS").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let f = fields(&rows[0]);
    assert_eq!(
        (&f[1][..], &f[2][..], &f[4][..], &f[9][..], &f[10][..]),
        ("totals", "1", "1", "1", "3"),
        "{rows:?}"
    );
    assert!(
        f[13].starts_with("RunningAggregate: 3 rows, ")
            && f[13].ends_with(" B in memory, 0 B spilled, 0 evicted, 0 B checkpointed"),
        "{rows:?}"
    );
    // One query's recent batches, by the sink it writes.
    let rows = crate::common::sql_rows(&mut s, "SHOW PROGRESS totals").await;
    let inputs: Vec<String> = rows.iter().map(|r| fields(r)[4].clone()).collect();
    assert_eq!(inputs, vec!["3", "1"], "{rows:?}");
    let err = crate::common::sql_error(&mut s, "SHOW PROGRESS nope").await;
    assert!(
        err.contains("SHOW PROGRESS nope: no such query; running: 1 (totals)"),
        "{err}"
    );
    s.stop_all().await.unwrap();
    // The log: one JSON line per batch.
    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    assert_eq!(records[0]["name"], "totals");
    assert_eq!(records[0]["batchId"], 0);
    assert_eq!(records[0]["numInputRows"], 3);
    assert_eq!(records[0]["sink"]["numOutputRows"], 2);
    assert_eq!(records[1]["numInputRows"], 1);
    assert_eq!(records[1]["stateOperators"]["numRowsTotal"], 3);
    // Per operator: its name, rows, memory, nothing spilled or evicted, no checkpoint.
    let op = &records[1]["stateOperators"]["operators"][0];
    assert_eq!(op["name"], "RunningAggregate", "{text}");
    assert_eq!(op["numRowsTotal"], 3);
    assert!(op["memoryUsedBytes"].as_u64().unwrap() > 0, "{text}");
    assert_eq!(
        (
            &op["spilledBytes"],
            &op["numRowsEvicted"],
            &op["checkpointBytes"]
        ),
        (
            &serde_json::json!(0),
            &serde_json::json!(0),
            &serde_json::json!(0)
        )
    );
    assert_eq!(records[1]["sources"][0]["description"], "m");
    assert!(
        records[1]["durationMs"]["processing"].as_f64().is_some(),
        "{text}"
    );
}

/// A query whose state grows without bound says so when it starts, not only in EXPLAIN.
#[tokio::test]
async fn unbounded_state_is_warned_about_when_the_query_starts() {
    let mut s = session();
    s.execute("CREATE STREAM ev (k BIGINT, ts TIMESTAMP) WITH (connector = 'memory')")
        .await
        .unwrap();
    let StatementResult::Done(msg) = s
        .execute(
            "CREATE SINK w WITH (connector = 'memory') AS \
             SELECT k, count(*) FROM ev GROUP BY k, window(ts, INTERVAL '10' SECOND)",
        )
        .await
        .unwrap()
    else {
        panic!("a message expected");
    };
    assert!(
        msg.contains("\nwarning: WindowAggregate (tumbling")
            && msg
                .contains("no watermark on ev.ts: windows never close, state grows without bound"),
        "{msg}"
    );
    let StatementResult::Done(msg) = s
        .execute(
            "CREATE SINK c WITH (connector = 'memory') AS SELECT k, count(*) FROM ev GROUP BY k",
        )
        .await
        .unwrap()
    else {
        panic!("a message expected");
    };
    assert!(!msg.contains("warning"), "{msg}");
}

/// A statement nested too deep to plan is refused, not a stack overflow that aborts
/// the process: 20,000 operators in a row.
#[tokio::test]
async fn a_statement_nested_too_deep_is_refused() {
    let mut s = session();
    let deep = format!("SELECT {}", vec!["1"; 20_000].join(" + "));
    let err = s.execute(&deep).await.unwrap_err().to_string();
    assert!(
        err.contains("the statement holds 19999 operators; at most 2000 are allowed"),
        "{err}"
    );
    // Parentheses nested too deep: the parser's own limit, a syntax error.
    let parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    let err = s.execute(&parens).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "syntax error: sql parser error: recursion limit exceeded"
    );
    // The session goes on.
    assert!(matches!(
        s.execute("SELECT 1 + 1").await.unwrap(),
        StatementResult::Rows { .. }
    ));
}
