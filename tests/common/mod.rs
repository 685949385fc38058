//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use flumen::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use flumen::prelude::*;
use tokio::sync::{Mutex, MutexGuard};

/// Only one StreamingContext may be active per process; tests that start one hold this.
static SERIAL: Mutex<()> = Mutex::const_new(());

pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A context on a manual clock at 0 with batches every `interval_ms`.
pub fn manual_ctx(interval_ms: u64) -> (StreamingContext, ManualClock) {
    let clock = ManualClock::default();
    let ctx = StreamingContext::builder(Duration::from_millis(interval_ms))
        .with_clock(Arc::new(clock.clone()))
        .build()
        .expect("context");
    (ctx, clock)
}

pub fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

pub fn lines_schema() -> SchemaRef {
    schema(&[("line", DataType::Utf8)])
}

pub fn lines(values: &[&str]) -> RecordBatch {
    RecordBatch::try_new(
        lines_schema(),
        vec![Arc::new(StringArray::from(values.to_vec()))],
    )
    .unwrap()
}

/// A (name TEXT, n BIGINT) batch.
pub fn pairs(values: &[(&str, i64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(&[("name", DataType::Utf8), ("n", DataType::Int64)]),
        vec![
            Arc::new(StringArray::from(
                values.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                values.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// Every row as `v1|v2|...`, sorted: results compared without caring for order.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                fmts.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

pub fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

pub fn t(ms: i64) -> Time {
    Time::from_millis(ms)
}

/// A new empty directory under the system's temp dir, unique to this call.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "flumen-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A SQL session on a manual clock with every connector.
pub fn sql_session() -> flumen::sql::FlumenSession {
    flumen::sql::FlumenSession::new(
        flumen::connectors::registry(),
        Arc::new(ManualClock::default()),
    )
}

/// The rows a SQL statement returns, as [`rows`] renders them.
pub async fn sql_rows(s: &mut flumen::sql::FlumenSession, sql: &str) -> Vec<String> {
    match s.execute(sql).await.unwrap() {
        flumen::sql::StatementResult::Rows { batches, .. } => rows(&batches),
        other => panic!("rows expected from {sql}, got {other:?}"),
    }
}

/// The error a SQL statement gives.
pub async fn sql_error(s: &mut flumen::sql::FlumenSession, sql: &str) -> String {
    match s.execute(sql).await {
        Ok(r) => panic!("{sql} should fail, gave {r:?}"),
        Err(e) => e.to_string(),
    }
}
