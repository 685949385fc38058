//! The socket source against a real TCP server opened by the test (like `nc -lk`).

use std::sync::Arc;
use std::time::Duration;

use flumen::datafusion::arrow::array::{Array, Int64Array, StringArray};
use flumen::datafusion::arrow::record_batch::RecordBatch;
use flumen::engine::ManualClock;
use flumen::sql::{FlumenSession, StatementResult};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn session() -> FlumenSession {
    FlumenSession::new(
        flumen::connectors::registry(),
        Arc::new(ManualClock::default()),
    )
}

async fn rows(s: &mut FlumenSession, sql: &str) -> Vec<RecordBatch> {
    match s.execute(sql).await.unwrap() {
        StatementResult::Rows { batches, .. } => batches,
        other => panic!("rows expected from {sql}, got {other:?}"),
    }
}

async fn count(s: &mut FlumenSession, sql: &str) -> usize {
    rows(s, sql).await.iter().map(|b| b.num_rows()).sum()
}

/// Runs batches until `sql` counts `n` rows: the receiver reads on its own task, so
/// lines arrive when the network delivers them. Fails after 10 s.
async fn advance_until(s: &mut FlumenSession, sql: &str, n: usize) {
    for _ in 0..500 {
        s.execute("ADVANCE 1 BATCHES").await.unwrap();
        if count(s, sql).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{sql} did not reach {n} rows in 10 s");
}

async fn accept(listener: &TcpListener) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the socket source did not connect within 10 s")
        .unwrap()
        .0
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    let mut out: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            a.values().to_vec()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_with_bad_records_to_the_dead_letter_and_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = session();
    s.execute_script(&format!(
        "CREATE STREAM people (id BIGINT NOT NULL, name TEXT) WITH (connector = 'socket', \
           host = '127.0.0.1', port = '{port}', format = 'json', on_error = 'dead_letter');
         CREATE SINK out WITH (connector = 'memory') AS SELECT id, name FROM people;"
    ))
    .await
    .unwrap();
    let mut conn = accept(&listener).await;
    conn.write_all(
        b"{\"id\": 1, \"name\": \"ann\"}\n{\"id\": 2}\noops\n{\"id\": 3, \"name\": \"cy\"}\r\n",
    )
    .await
    .unwrap();
    conn.flush().await.unwrap();
    advance_until(&mut s, "SELECT * FROM out", 3).await;
    assert_eq!(ids(&rows(&mut s, "SELECT * FROM out").await), vec![1, 2, 3]);
    let errors = rows(&mut s, "SELECT source, position, record FROM people_errors").await;
    assert_eq!(errors.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let col = |i: usize| {
        errors[0]
            .column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    };
    assert_eq!(col(0), "people");
    assert_eq!(col(1), format!("127.0.0.1:{port} line 3"));
    assert_eq!(col(2), "oops");
    let shown = rows(&mut s, "SHOW QUERIES").await;
    let rejected = shown[0]
        .column(7)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(0)
        .to_string();
    assert_eq!(rejected, "1");

    // The server goes away; the receiver reconnects and reads on.
    drop(conn);
    let mut conn = accept(&listener).await;
    conn.write_all(b"{\"id\": 4, \"name\": \"di\"}\n")
        .await
        .unwrap();
    conn.flush().await.unwrap();
    advance_until(&mut s, "SELECT * FROM out", 4).await;
    assert_eq!(
        ids(&rows(&mut s, "SELECT * FROM out").await),
        vec![1, 2, 3, 4]
    );
    s.stop_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_under_on_error_fail_stops_the_query_naming_its_position() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = session();
    s.execute_script(&format!(
        "CREATE STREAM nums (n BIGINT, label TEXT) WITH (connector = 'socket', port = '{port}', format = 'csv');
         CREATE SINK out WITH (connector = 'memory') AS SELECT n FROM nums;"
    ))
    .await
    .unwrap();
    let mut conn = accept(&listener).await;
    conn.write_all(b"1,a\n2,b\n").await.unwrap();
    conn.flush().await.unwrap();
    advance_until(&mut s, "SELECT * FROM out", 2).await;
    conn.write_all(b"three,c\n").await.unwrap();
    conn.flush().await.unwrap();
    let ctx = s.queries().next().unwrap().ctx.clone();
    let mut error = None;
    for _ in 0..500 {
        let _ = s.execute("ADVANCE 1 BATCHES").await;
        match ctx.await_termination_timeout(Duration::ZERO).await {
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
            Ok(true) => panic!("the query stopped without an error"),
            Ok(false) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = error.expect("the query did not stop on the bad record");
    assert!(
        error.contains(&format!(
            "source 'nums': bad record at 127.0.0.1:{port} line 3"
        )),
        "{error}"
    );
    assert!(error.contains("(record: three,c)"), "{error}");
    // The rows accepted before the bad one stay written.
    assert_eq!(ids(&rows(&mut s, "SELECT * FROM out").await), vec![1, 2]);
}

#[tokio::test]
async fn socket_options_are_checked_at_create() {
    let mut s = session();
    let err = |r: Result<StatementResult, flumen::engine::Error>| r.unwrap_err().to_string();
    assert_eq!(
        err(s
            .execute("CREATE STREAM a WITH (connector = 'socket')")
            .await),
        "stream a: connector 'socket' needs port = '<n>' (and host, default 127.0.0.1)"
    );
    assert_eq!(
        err(s
            .execute("CREATE STREAM a WITH (connector = 'socket', port = 'http')")
            .await),
        "stream a: port 'http' is not a TCP port number"
    );
    assert_eq!(
        err(s
            .execute("CREATE STREAM a WITH (connector = 'socket', port = '9', colour = 'red')")
            .await),
        "unknown option 'colour' for connector 'socket'; accepted: host, port, block_interval, wal, wal_dir, max_line_bytes, format, on_error, strict, consumer"
    );
    assert_eq!(
        err(s
            .execute("CREATE STREAM a WITH (connector = 'socket', port = '9', wal = 'true')")
            .await),
        "stream a: wal = 'true' needs a local directory for the write-ahead log: SET checkpoint_location = '<local directory>' first, or give wal_dir = '...'"
    );
    assert_eq!(
        err(s
            .execute("CREATE STREAM a WITH (connector = 'socket', port = '9', max_records_per_batch = '0')")
            .await),
        "stream a option max_records_per_batch must be a positive whole number, got '0'"
    );
    assert_eq!(
        err(s
            .execute("CREATE STREAM a (id BIGINT, t TEXT) WITH (connector = 'socket', port = '9')")
            .await),
        "stream a: format 'text' gives one TEXT column (e.g. (line TEXT)); for more columns use format = 'csv' or 'json'"
    );
    // Without columns, a text socket stream has one: line.
    s.execute("CREATE STREAM lines WITH (connector = 'socket', port = '9')")
        .await
        .unwrap();
}

/// Waits until the receiver's write-ahead log in `dir` holds `n` lines.
async fn wal_holds(dir: &std::path::Path, n: usize) {
    for _ in 0..500 {
        let lines: usize = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "block"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
                    .sum()
            })
            .unwrap_or(0);
        if lines >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the write-ahead log in {} did not reach {n} lines",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_wal_lines_received_but_not_committed_are_replayed_after_a_restart() {
    let checkpoint = crate::common::temp_dir("socket-wal");
    let wal = checkpoint.join("sources/words/wal");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = |port: u16| {
        format!(
            "SET checkpoint_location = '{}';
             CREATE STREAM words WITH (connector = 'socket', port = '{port}', wal = 'true', block_interval = '10 ms');
             CREATE SINK out WITH (connector = 'memory') AS SELECT line FROM words;",
            checkpoint.display()
        )
    };
    // One clock for both "processes": the second starts when the first stopped.
    let clock = Arc::new(ManualClock::default());
    let session = || FlumenSession::new(flumen::connectors::registry(), clock.clone());
    let mut s = session();
    s.execute_script(&script(port)).await.unwrap();
    let mut conn = accept(&listener).await;
    conn.write_all(b"one\ntwo\n").await.unwrap();
    advance_until(&mut s, "SELECT * FROM out", 2).await;
    // Received and logged, never processed: the process "dies" here.
    conn.write_all(b"three\nfour\n").await.unwrap();
    wal_holds(&wal, 2).await;
    // Stopped without planning another batch: the last two lines are only in the
    // write-ahead log, as if the process had died.
    s.stop_all().await.unwrap();

    // A new process on the same checkpoint replays exactly the uncommitted lines.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut s = session();
    s.execute_script(&script(listener.local_addr().unwrap().port()))
        .await
        .unwrap();
    let mut conn = accept(&listener).await;
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
    let got = rows(&mut s, "SELECT line FROM out ORDER BY line").await;
    let lines: Vec<String> = got
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines, vec!["four", "three"]);
    // Committed blocks leave the log.
    wal_holds(&wal, 0).await;
    assert_eq!(
        std::fs::read_to_string(wal.join("committed.out")).unwrap(),
        "4"
    );
    conn.write_all(b"five\n").await.unwrap();
    advance_until(&mut s, "SELECT * FROM out", 3).await;
    s.stop_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_records_per_batch_caps_each_batch_and_the_rest_follows() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = session();
    s.execute_script(&format!(
        "CREATE STREAM nums (n BIGINT) WITH (connector = 'socket', port = '{port}', format = 'csv', \
           max_records_per_batch = '2', block_interval = '10 ms');
         CREATE SINK out WITH (connector = 'memory') AS SELECT n, _batch_time AS t FROM nums;"
    ))
    .await
    .unwrap();
    let mut conn = accept(&listener).await;
    conn.write_all(b"1\n2\n3\n4\n5\n").await.unwrap();
    advance_until(&mut s, "SELECT * FROM out", 5).await;
    // No batch took more than 2 lines, and they came in order.
    let per_batch = rows(
        &mut s,
        "SELECT max(c) FROM (SELECT t, count(*) AS c FROM out GROUP BY t)",
    )
    .await;
    let max = per_batch[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0);
    assert_eq!(max, 2);
    assert_eq!(
        ids(&rows(&mut s, "SELECT n FROM out").await),
        vec![1, 2, 3, 4, 5]
    );
    s.stop_all().await.unwrap();
}

/// A line longer than `max_line_bytes` and a line that is not UTF-8 are bad records
/// (dead-lettered with their line numbers); the connection stays up and the lines
/// after them arrive. A WAL replay keeps them bad, in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_non_utf8_lines_are_bad_records_and_the_connection_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let wal = crate::common::temp_dir("socket-bad-lines").join("wal");
    let mut s = session();
    s.execute_script(&format!(
        "CREATE STREAM t (line TEXT) WITH (connector = 'socket', host = '127.0.0.1',
           port = '{port}', on_error = 'dead_letter', max_line_bytes = '64 KiB', wal = 'true',
           wal_dir = '{}');
         CREATE SINK out WITH (connector = 'memory') AS SELECT line FROM t;",
        wal.display()
    ))
    .await
    .unwrap();
    let mut conn = accept(&listener).await;
    // Line 2: 200 KiB, sent in pieces; line 4: not UTF-8.
    conn.write_all(b"one\n").await.unwrap();
    for _ in 0..200 {
        conn.write_all(&[b'x'; 1024]).await.unwrap();
    }
    conn.write_all(b"\nthree\n\xff\xfebad\nfive\n")
        .await
        .unwrap();
    conn.flush().await.unwrap();
    advance_until(&mut s, "SELECT * FROM out", 3).await;
    advance_until(&mut s, "SELECT * FROM t_errors", 2).await;
    let text = |batches: &[RecordBatch], col: usize| -> Vec<String> {
        let mut v: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let a = b
                    .column(col)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                (0..a.len())
                    .map(|i| a.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v
    };
    // Three good lines; the sink holds every line of a text stream but the bad ones.
    assert_eq!(
        text(&rows(&mut s, "SELECT * FROM out").await, 0),
        vec!["five", "one", "three"]
    );
    let errors = rows(
        &mut s,
        "SELECT position, error, length(record) FROM t_errors",
    )
    .await;
    let positions = text(&errors, 0);
    assert_eq!(
        positions,
        vec![
            format!("127.0.0.1:{port} line 2"),
            format!("127.0.0.1:{port} line 4")
        ]
    );
    let why = text(&errors, 1);
    assert!(
        why.iter()
            .any(|e| e == "the line is 204800 bytes, longer than max_line_bytes (65536)"),
        "{why:?}"
    );
    assert!(why.iter().any(|e| e.starts_with("not UTF-8")), "{why:?}");
    // Only a preview of the long line was kept.
    let lengths: Vec<i32> = errors
        .iter()
        .flat_map(|b| {
            b.column(2)
                .as_any()
                .downcast_ref::<flumen::datafusion::arrow::array::Int32Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert!(lengths.iter().all(|l| *l <= 1024), "{lengths:?}");
    // The same connection goes on.
    conn.write_all(b"six\n").await.unwrap();
    conn.flush().await.unwrap();
    advance_until(&mut s, "SELECT * FROM out", 4).await;
    s.stop_all().await.unwrap();
    let err = sql_error_text(
        &mut session(),
        &format!(
            "CREATE STREAM u (line TEXT) WITH (connector = 'socket', port = '{port}', max_line_bytes = 'huge')"
        ),
    )
    .await;
    assert!(err.contains("max_line_bytes 'huge' is not a size"), "{err}");
}

async fn sql_error_text(s: &mut FlumenSession, sql: &str) -> String {
    match s.execute(sql).await {
        Ok(r) => panic!("{sql} should fail, gave {r:?}"),
        Err(e) => e.to_string(),
    }
}

/// Two queries over one socket stream share its receiver: one connection, and each
/// query gets every line (not half each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_on_one_socket_stream_get_every_line_over_one_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut s = session();
    s.execute_script(&format!(
        "CREATE STREAM nums (n BIGINT) WITH (connector = 'socket', port = '{port}', format = 'csv',
           block_interval = '10 ms');
         CREATE SINK a WITH (connector = 'memory') AS SELECT n FROM nums;
         CREATE SINK b WITH (connector = 'memory') AS SELECT n * 10 AS n FROM nums WHERE n % 2 = 0;"
    ))
    .await
    .unwrap();
    let mut conn = accept(&listener).await;
    let body: String = (1..=100).map(|i| format!("{i}\n")).collect();
    conn.write_all(body.as_bytes()).await.unwrap();
    conn.flush().await.unwrap();
    advance_until(&mut s, "SELECT * FROM a", 100).await;
    advance_until(&mut s, "SELECT * FROM b", 50).await;
    assert_eq!(
        ids(&rows(&mut s, "SELECT n FROM a").await),
        (1..=100).collect::<Vec<i64>>()
    );
    assert_eq!(
        ids(&rows(&mut s, "SELECT n FROM b").await),
        (1..=50).map(|i| i * 20).collect::<Vec<i64>>()
    );
    // No second connection was opened.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), listener.accept())
            .await
            .is_err(),
        "a second connection was opened"
    );
    s.stop_all().await.unwrap();
}
