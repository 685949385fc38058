//! Differential tests of the planner's stateful decisions: a query streamed over many
//! small batches ends with the same rows as the same query run once, as a batch query,
//! over all the input — Nexmark q4 and q9 (aggregates and ROW_NUMBER() over a join of
//! two streams) in complete and update mode, and their windowed forms in append mode.

use std::collections::BTreeMap;

use flumen::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use flumen::sql::{FlumenSession, StatementResult};

use crate::common::sql_session;

/// Every row as `v1|v2|...`, in the order the statement returns them.
async fn ordered_rows(s: &mut FlumenSession, sql: &str) -> Vec<Vec<String>> {
    let StatementResult::Rows { batches, .. } = s.execute(sql).await.unwrap() else {
        panic!("rows expected from {sql}");
    };
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in &batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    out
}

/// Rows sorted, each joined with `|`.
fn sorted(rows: Vec<Vec<String>>) -> Vec<String> {
    let mut v: Vec<String> = rows.into_iter().map(|r| r.join("|")).collect();
    v.sort();
    v
}

/// Update-mode output applied as upserts: the last row emitted for each key (the
/// first `key_columns` columns), then sorted.
fn folded(rows: Vec<Vec<String>>, key_columns: usize) -> Vec<String> {
    let mut latest: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for r in rows {
        latest.insert(r[..key_columns].to_vec(), r);
    }
    sorted(latest.into_values().collect())
}

/// A changelog (rows whose last column is `+I` or `-D`) applied: each `-D` removes one
/// earlier row equal to it, which must be there; the rows left, sorted.
fn applied(rows: Vec<Vec<String>>) -> Vec<String> {
    let mut present: Vec<Vec<String>> = Vec::new();
    for mut r in rows {
        let op = r.pop().expect("an _op column");
        match op.as_str() {
            "+I" => present.push(r),
            "-D" => {
                let i = present
                    .iter()
                    .position(|p| *p == r)
                    .unwrap_or_else(|| panic!("{r:?} retracted but never added"));
                present.swap_remove(i);
            }
            other => panic!("unknown _op {other}"),
        }
    }
    sorted(present)
}

/// Averages to 6 decimals: the streamed and the batch query sum in different orders.
fn rounded(rows: Vec<Vec<String>>, column: usize) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|mut r| {
            if let Ok(v) = r[column].parse::<f64>() {
                r[column] = format!("{v:.6}");
            }
            r
        })
        .collect()
}

const BASE_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00

/// Nexmark's auction and bid streams (the columns q4 and q9 read), 300 auctions and
/// 3,000 bids over 120 s of event time; bids name auctions opened up to 8 s earlier,
/// so some land after the auction expired and the join's time condition drops them.
async fn nexmark_session(s: &mut FlumenSession) {
    s.execute_script(&format!(
        "CREATE TABLE auction_all AS SELECT
           1000 + value AS id, 'item ' || CAST(value AS TEXT) AS item_name, 'd' AS description,
           10 + value % 50 AS initial_bid, 100 + value % 70 AS reserve,
           CAST(to_timestamp_millis({BASE_MS} + value * 400) AS TIMESTAMP) AS date_time,
           CAST(to_timestamp_millis({BASE_MS} + value * 400 + 2000 + (value * 7919) % 6000) AS TIMESTAMP) AS expires,
           (value * 13) % 97 AS seller, 10 + value % 6 AS category, '' AS extra
         FROM range(0, 300);
         CREATE TABLE bid_all AS SELECT
           1000 + greatest(CAST(value / 10 AS BIGINT) - (value * 7919) % 20, 0) AS auction,
           (value * 31) % 101 AS bidder, 1 + (value * 104729) % 997 AS price,
           'c' || CAST(value % 4 AS TEXT) AS channel, 'https://x/' || CAST(value AS TEXT) AS url,
           CAST(to_timestamp_millis({BASE_MS} + value * 40) AS TIMESTAMP) AS date_time, '' AS extra
         FROM range(0, 3000);
         CREATE STREAM auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT,
           reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT,
           extra TEXT, WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
           WITH (connector = 'memory');
         CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
           date_time TIMESTAMP, extra TEXT, WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
           WITH (connector = 'memory');"
    ))
    .await
    .unwrap();
}

/// Feeds one second of event time per batch (120 batches), then one auction and bid
/// an hour later, so every window and join side's watermark passes the data.
async fn stream_all(s: &mut FlumenSession) {
    for b in 0..120i64 {
        let from = BASE_MS + b * 1000;
        let range = format!(
            "date_time >= CAST(to_timestamp_millis({from}) AS TIMESTAMP) \
             AND date_time < CAST(to_timestamp_millis({}) AS TIMESTAMP)",
            from + 1000
        );
        s.execute(&format!(
            "INSERT INTO auction SELECT * FROM auction_all WHERE {range}"
        ))
        .await
        .unwrap();
        s.execute(&format!(
            "INSERT INTO bid SELECT * FROM bid_all WHERE {range}"
        ))
        .await
        .unwrap();
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
    }
    s.execute_script(
        "INSERT INTO auction VALUES (999999, '', '', 1, 1, TIMESTAMP '2026-01-01T01:00:00',
           TIMESTAMP '2026-01-01T01:00:10', 1, 99, '');
         INSERT INTO bid VALUES (999999, 1, 1, '', '', TIMESTAMP '2026-01-01T01:00:01', '');
         ADVANCE 1 BATCHES;",
    )
    .await
    .unwrap();
    for q in s.queries() {
        let late: u64 = q.ctx.recent_batches().iter().map(|b| b.late_rows).sum();
        assert_eq!(late, 0, "query {} dropped late rows", q.id);
        assert!(q.ctx.failure().is_none(), "query {} failed", q.id);
    }
}

fn q4(auction: &str, bid: &str) -> String {
    format!(
        "SELECT Q.category, AVG(Q.final) AS avg FROM (
           SELECT MAX(B.price) AS final, A.category
           FROM {auction} A, {bid} B
           WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
           GROUP BY A.id, A.category
         ) Q GROUP BY Q.category"
    )
}

fn q9(auction: &str, bid: &str) -> String {
    format!(
        "SELECT id, item_name, description, initial_bid, reserve, date_time, expires, seller,
                category, extra, auction, bidder, price, bid_date_time, bid_extra
         FROM (
           SELECT A.id, A.item_name, A.description, A.initial_bid, A.reserve, A.date_time,
                  A.expires, A.seller, A.category, A.extra,
                  B.auction, B.bidder, B.price, B.date_time AS bid_date_time, B.extra AS bid_extra,
                  ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time ASC) AS rownum
           FROM {auction} A, {bid} B
           WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
         )
         WHERE rownum <= 1"
    )
}

/// Nexmark q4 (average closing price per category) and q9 (winning bid per auction),
/// as Flink writes them: an aggregate over an aggregate over a join of two streams,
/// and ROW_NUMBER() over the join. Streamed over 121 batches, in complete and update
/// mode, each ends with the batch query's rows.
#[tokio::test]
async fn q4_and_q9_streamed_equal_the_batch_query() {
    let mut s = sql_session();
    nexmark_session(&mut s).await;
    s.execute_script(&format!(
        "SET output_mode = 'complete';
         CREATE SINK q4c WITH (connector = 'memory') AS {};
         CREATE SINK q9c WITH (connector = 'memory') AS {};
         SET output_mode = 'update';
         CREATE SINK q4u WITH (connector = 'memory') AS {};
         CREATE SINK q9u WITH (connector = 'memory') AS {};",
        q4("auction", "bid"),
        q9("auction", "bid"),
        q4("auction", "bid"),
        q9("auction", "bid"),
    ))
    .await
    .unwrap();
    stream_all(&mut s).await;

    let q4_batch = sorted(rounded(
        ordered_rows(&mut s, &q4("auction_all", "bid_all")).await,
        1,
    ));
    assert_eq!(q4_batch.len(), 6, "{q4_batch:?}");
    let q4c = sorted(rounded(
        ordered_rows(&mut s, "SELECT * FROM q4c WHERE category <> 99").await,
        1,
    ));
    assert_eq!(q4c, q4_batch, "q4, complete mode");
    // Update mode: the inner groups' changes are a changelog the outer AVG takes the
    // old final prices back out of; its own output is a changelog of the categories.
    let q4u = applied(ordered_rows(&mut s, "SELECT * FROM q4u WHERE category <> 99").await);
    let q4u = sorted(rounded(
        q4u.iter()
            .map(|r| r.split('|').map(String::from).collect())
            .collect(),
        1,
    ));
    assert_eq!(q4u, q4_batch, "q4, update mode");

    let q9_batch = sorted(ordered_rows(&mut s, &q9("auction_all", "bid_all")).await);
    assert!(q9_batch.len() > 250, "{}", q9_batch.len());
    let q9c = sorted(ordered_rows(&mut s, "SELECT * FROM q9c WHERE id <> 999999").await);
    assert_eq!(q9c, q9_batch, "q9, complete mode");
    let q9u = folded(
        ordered_rows(&mut s, "SELECT * FROM q9u WHERE id <> 999999").await,
        1,
    );
    assert_eq!(q9u, q9_batch, "q9, update mode");
    // Update mode sends changes only: far fewer rows than every batch's whole result.
    let q9_emitted = ordered_rows(&mut s, "SELECT * FROM q9u").await.len();
    assert!(q9_emitted < 3 * q9_batch.len(), "{q9_emitted}");
}

/// The windowed forms in append mode: the join carries the sides' watermarks to the
/// bid time, so windows over its matches close; each window's rows are emitted once,
/// and equal the batch query's.
#[tokio::test]
async fn windowed_aggregates_over_a_join_in_append_mode_equal_the_batch_query() {
    let mut s = sql_session();
    nexmark_session(&mut s).await;
    let join = "FROM auction A JOIN bid B ON A.id = B.auction \
                AND B.date_time BETWEEN A.date_time AND A.expires";
    s.execute_script(&format!(
        "SET output_mode = 'append';
         CREATE SINK w4 WITH (connector = 'memory') AS
           SELECT ws, category, AVG(final) AS avg FROM (
             SELECT window(B.date_time, INTERVAL '10' SECOND)['start'] AS ws, A.id, A.category,
                    MAX(B.price) AS final
             {join}
             GROUP BY window(B.date_time, INTERVAL '10' SECOND), A.id, A.category)
           GROUP BY ws, category;
         CREATE SINK w9 WITH (connector = 'memory') AS
           SELECT ws, category, best FROM (
             SELECT ws, category, best, ROW_NUMBER() OVER (PARTITION BY ws ORDER BY best DESC, category) AS rn
             FROM (SELECT window(B.date_time, INTERVAL '10' SECOND)['start'] AS ws, A.category,
                          MAX(B.price) AS best
                   {join}
                   GROUP BY window(B.date_time, INTERVAL '10' SECOND), A.category))
           WHERE rn <= 1;"
    ))
    .await
    .unwrap();
    let explain = crate::common::sql_rows(
        &mut s,
        &format!(
            "EXPLAIN SELECT window(B.date_time, INTERVAL '10' SECOND)['start'] AS ws, count(*) \
             {join} GROUP BY window(B.date_time, INTERVAL '10' SECOND)"
        ),
    )
    .await
    .join("\n");
    assert!(
        explain.contains("watermark on b.date_time carried through the join"),
        "{explain}"
    );
    stream_all(&mut s).await;
    let batch_join = "FROM auction_all A JOIN bid_all B ON A.id = B.auction \
                      AND B.date_time BETWEEN A.date_time AND A.expires";
    let w4_batch = sorted(rounded(
        ordered_rows(
            &mut s,
            &format!(
                "SELECT ws, category, AVG(final) FROM (
                   SELECT date_bin(INTERVAL '10' SECOND, B.date_time) AS ws, A.id, A.category,
                          MAX(B.price) AS final
                   {batch_join}
                   GROUP BY 1, A.id, A.category)
                 GROUP BY ws, category"
            ),
        )
        .await,
        2,
    ));
    assert!(w4_batch.len() > 60, "{}", w4_batch.len());
    let w4 = sorted(rounded(ordered_rows(&mut s, "SELECT * FROM w4").await, 2));
    assert_eq!(w4, w4_batch, "windowed q4, append mode");
    let w9_batch = sorted(
        ordered_rows(
            &mut s,
            &format!(
                "SELECT ws, category, best FROM (
                   SELECT ws, category, best,
                          ROW_NUMBER() OVER (PARTITION BY ws ORDER BY best DESC, category) AS rn
                   FROM (SELECT date_bin(INTERVAL '10' SECOND, B.date_time) AS ws, A.category,
                                MAX(B.price) AS best
                         {batch_join} GROUP BY 1, A.category))
                 WHERE rn <= 1"
            ),
        )
        .await,
    );
    assert_eq!(w9_batch.len(), 12, "{w9_batch:?}");
    let w9 = sorted(ordered_rows(&mut s, "SELECT * FROM w9").await);
    assert_eq!(w9, w9_batch, "windowed top-1, append mode");
}
