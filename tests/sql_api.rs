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
