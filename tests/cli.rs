//! The real `flumen` binary: `-c`, `-f` (outputs, exit codes, errors with line
//! numbers, SIGTERM), the demo, and the REPL in a pseudo-terminal.
//!
//! `scripts/test.sh` builds the binary first (`cargo build -p flumen-cli`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub fn flumen() -> PathBuf {
    // target/debug/deps/main-xxxx -> target/debug/flumen
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("flumen");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p flumen-cli` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

fn script(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flumen-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn dash_c_runs_statements_and_exits() {
    let out = Command::new(flumen())
        .args([
            "-c",
            "SELECT 40 + 2 AS answer; SELECT 'x' AS y;",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer\n42\ny\nx\n");
}

#[test]
fn output_piped_into_a_reader_that_stops_ends_quietly() {
    // As `flumen -c ... | head -1`: the reader closes the pipe after one line.
    let mut child = Command::new(flumen())
        .args(["-c", "SELECT * FROM range(0, 200000)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('+'), "{first:?}");
    // The pipe closes here (its reader dropped).
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{out:?}");
}

#[test]
fn dash_f_with_available_now_drains_and_exits() {
    let f = script(
        "drain.sql",
        "SET batch_interval = '200 ms';\n\
         CREATE STREAM ticks WITH (connector = 'rate', rows_per_second = '4', rows = '10');\n\
         CREATE SINK evens WITH (connector = 'console') AS\n\
           SELECT value, value * value AS square FROM ticks WHERE value % 2 = 0;\n",
    );
    let progress = f.with_file_name(format!("drain-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&progress);
    let out = Command::new(flumen())
        .args(["-f", f.to_str().unwrap(), "--trigger", "available-now"])
        .arg("--progress-log")
        .arg(&progress)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with('(')).collect();
    assert_eq!(rows, vec!["(0,0)", "(2,4)", "(4,16)", "(6,36)", "(8,64)"]);
    assert_eq!(stdout.matches("Time: ").count(), 3, "{stdout}");
    // --progress-log: one JSON record per batch, 10 rows read in all.
    let log = std::fs::read_to_string(&progress).unwrap();
    let read: u64 = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["numInputRows"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!((log.lines().count(), read), (3, 10), "{log}");
}

#[test]
fn script_errors_name_the_line_and_exit_non_zero() {
    let f = script(
        "bad.sql",
        "CREATE STREAM a (x INT) WITH (connector = 'memory');\n\n\
         CREATE STREAM b (x INT)\n  WITH (connector = 'kafak');\n",
    );
    let out = Command::new(flumen())
        .args(["-f", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // What ran before the error (stderr, as every status line), then the error.
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "Stream 'a' created\nerror: line 3: unknown source connector 'kafak'; available: files, kafka, memory, nexmark, queue, rate, socket\n"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = Command::new(flumen())
        .args(["-c", "SELEC 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: statement 1: "),
        "{out:?}"
    );
    let out = Command::new(flumen())
        .args(["-f", "/nonexistent.sql"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read script /nonexistent.sql"));
}

#[test]
fn sigterm_stops_a_script_gracefully() {
    let f = script(
        "forever.sql",
        "SET batch_interval = '100 ms';\n\
         CREATE STREAM ticks WITH (connector = 'rate', rows_per_second = '50');\n\
         CREATE SINK out WITH (connector = 'console') AS SELECT count(*) AS n FROM ticks;\n",
    );
    let mut child = Command::new(flumen())
        .args(["-f", f.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first batch, then ask it to stop.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first_batch = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("Time: "));
    assert!(first_batch.is_some(), "no batch printed");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("stopping: the batch in flight finishes and commits"),
        "{stderr}"
    );
}

#[test]
fn demo_runs_and_stops_by_itself() {
    let out = Command::new(flumen())
        .args(["demo", "--seconds", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Time: "), "{stdout}");
    assert!(stdout.contains("demo done: "), "{stdout}");
}

#[test]
fn repl_in_a_terminal() {
    let home = std::env::temp_dir().join(format!("flumen-repl-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(flumen());
    cmd.env("HOME", &home);
    let mut p = rexpect::session::spawn_command(cmd, Some(20_000)).unwrap();
    p.exp_string("flumen> ").unwrap();
    // A statement over two lines.
    p.send_line("CREATE STREAM ticks WITH (connector = 'rate',")
        .unwrap();
    p.send_line("  rows_per_second = '5');").unwrap();
    p.exp_string("Stream 'ticks' created").unwrap();
    p.exp_string("flumen> ").unwrap();
    // A continuous query prints batches until Ctrl-C, which returns to the prompt.
    p.send_line("SELECT value FROM ticks WHERE value < 3;")
        .unwrap();
    p.exp_string("press Ctrl-C to stop it").unwrap();
    p.exp_string("Time: ").unwrap();
    p.exp_string("Time: ").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("Query 1 stopped").unwrap();
    p.exp_string("flumen> ").unwrap();
    // History is saved after each statement, not only at \q.
    let history = std::fs::read_to_string(home.join(".flumen_history")).unwrap();
    assert!(
        history.contains("SELECT value FROM ticks WHERE value < 3;"),
        "{history}"
    );
    p.send_line("\\d").unwrap();
    p.exp_string("Streams").unwrap();
    p.exp_string("ticks").unwrap();
    p.exp_string("Sinks").unwrap();
    p.exp_string("Tables").unwrap();
    p.exp_string("flumen> ").unwrap();
    // \timing prints each statement's time; an empty result prints its header.
    p.send_line("\\timing").unwrap();
    p.exp_string("Timing is on").unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line("SELECT 1 AS one_column WHERE false;").unwrap();
    p.exp_string("one_column").unwrap();
    p.exp_string("Time: ").unwrap();
    p.exp_string(" ms").unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line("\\d ticks").unwrap();
    p.exp_string("Timestamp(ms)").unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line("SELEC 1;").unwrap();
    p.exp_string("error: ").unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line("\\format table").unwrap();
    p.exp_string("Output format is Table").unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line("\\q").unwrap();
    p.exp_eof().unwrap();
    match p.process().wait().unwrap() {
        rexpect::process::WaitStatus::Exited(_, code) => assert_eq!(code, 0),
        other => panic!("the REPL did not exit cleanly: {other:?}"),
    }
    let history = std::fs::read_to_string(home.join(".flumen_history")).unwrap();
    assert!(
        history.contains("SELECT value FROM ticks WHERE value < 3;"),
        "{history}"
    );
}

/// `flumen -f` serves the web UI where `--ui` says; `/metrics` counts its batches.
#[tokio::test]
async fn a_script_serves_the_web_ui_on_the_address_given() {
    let f = script(
        "ui.sql",
        "SET batch_interval = '100 ms';\n\
         CREATE STREAM ticks WITH (connector = 'rate', rows_per_second = '50');\n\
         CREATE SINK out WITH (connector = 'memory') AS SELECT value FROM ticks;\n",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(flumen())
        .args(["-f", f.to_str().unwrap(), "--ui", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What the statements did comes first on stderr, then the UI's address.
    // (The reader stays alive until flumen exits: it still writes to stderr.)
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = stderr
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("Web UI: "));
    assert_eq!(line, Some(format!("Web UI: http://{addr}/")));
    // Batches run every 100 ms; wait for the metrics to count two.
    let mut batches = 0;
    for _ in 0..100 {
        let (status, metrics) = crate::ui::http(addr, "GET", "/metrics", None).await;
        assert_eq!(status, 200);
        batches = metrics
            .lines()
            .find_map(|l| l.strip_prefix("flumen_batches_total{query=\"out\"} "))
            .map_or(0, |n| n.parse().unwrap());
        if batches >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(batches >= 2, "batches counted: {batches}");
    let (_, queries) = crate::ui::http(addr, "GET", "/api/queries", None).await;
    assert!(queries.contains("\"name\":\"out\""), "{queries}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    // A bad address, or one taken, is an error naming it; --no-ui serves nothing.
    let out = Command::new(flumen())
        .args(["-f", f.to_str().unwrap(), "--ui", "localhost"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--ui 'localhost': not an address like 127.0.0.1:4040"),
        "{out:?}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(flumen())
        .args(["-f", f.to_str().unwrap(), "--ui", &taken_addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("--ui {taken_addr}: cannot listen there")),
        "{out:?}"
    );
    let out = Command::new(flumen())
        .args(["-c", "SELECT 1", "--no-ui", "--ui", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give either --ui ADDR or --no-ui"),
        "{out:?}"
    );
}

/// A failing query is not silent: `flumen -f` exits with code 2 as soon as one fails,
/// naming it and its error; with `--keep-going` the others run on and the exit code
/// is still 2.
#[test]
fn a_query_that_fails_ends_the_script_with_exit_code_2() {
    let dir = crate::common::temp_dir("cli-fails");
    std::fs::write(dir.join("bad.csv"), "1\nnot a number\n").unwrap();
    let f = script(
        "fails.sql",
        &format!(
            "SET batch_interval = '100 ms';\n\
             CREATE STREAM ticks WITH (connector = 'rate', rows_per_second = '50');\n\
             CREATE SINK fine WITH (connector = 'memory') AS SELECT value FROM ticks;\n\
             CREATE STREAM nums (n BIGINT) WITH (connector = 'files', path = '{}', format = 'csv',\n\
               include_existing = 'true');\n\
             CREATE SINK broken WITH (connector = 'memory') AS SELECT n FROM nums;\n",
            dir.display()
        ),
    );
    let started = std::time::Instant::now();
    let out = Command::new(flumen())
        .args(["-f", f.to_str().unwrap(), "--no-ui"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: query 2 (broken) failed: ") && stderr.contains("line 2"),
        "{stderr}"
    );
    // --keep-going: the other query runs on until SIGTERM; still exit code 2.
    let mut child = Command::new(flumen())
        .args(["-f", f.to_str().unwrap(), "--no-ui", "--keep-going"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let reported = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("the other queries go on (--keep-going)"));
    assert!(reported.is_some(), "no failure reported");
    assert!(child.try_wait().unwrap().is_none(), "flumen exited");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2));
}

/// `SET restart = 'on-failure'`: a query that fails (a bad record under `on_error =
/// 'fail'`) restarts from its checkpoint after the delay, counted in /metrics; the
/// file fixed meanwhile, the batch runs again and every row is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_query_restarts_from_its_checkpoint() {
    let dir = crate::common::temp_dir("cli-restart");
    let (input, out) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("a.csv"), "1\nnot a number\n").unwrap();
    let f = script(
        "restart.sql",
        &format!(
            "SET batch_interval = '200 ms';\n\
             SET checkpoint_location = '{}';\n\
             SET restart_delay = '3 seconds';\n\
             SET restart = 'on-failure';\n\
             CREATE STREAM nums (n BIGINT) WITH (connector = 'files', path = '{}', format = 'csv',\n\
               include_existing = 'true');\n\
             CREATE SINK out WITH (connector = 'files', path = '{}', format = 'json') AS SELECT n FROM nums;\n",
            dir.join("checkpoint").display(),
            input.display(),
            out.display()
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(flumen())
        .args([
            "-f",
            f.to_str().unwrap(),
            "--ui",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let restarting = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("restart 1 of 3 from its checkpoint"));
    assert!(restarting.is_some(), "no restart announced");
    // Fixed before the restart: the batch that failed reads it again.
    std::fs::write(input.join("a.csv"), "1\n2\n").unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut rows = Vec::new();
    for _ in 0..300 {
        rows = std::fs::read_dir(&out)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .flat_map(|e| {
                        std::fs::read_to_string(e.path())
                            .unwrap()
                            .lines()
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if rows.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    rows.sort();
    assert_eq!(rows, vec![r#"{"n":1}"#, r#"{"n":2}"#]);
    let (_, metrics) = crate::ui::http(addr, "GET", "/metrics", None).await;
    assert!(
        metrics.contains("flumen_query_restarts_total{query=\"out\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flumen_query_failed{query=\"out\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flumen_query_active{query=\"out\"} 1"),
        "{metrics}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `flumen -c` with a continuous SELECT prints its batches until SIGTERM, as `-f`
/// does; errors under `-c` name the statement.
#[test]
fn dash_c_prints_a_continuous_select_until_stopped() {
    let mut child = Command::new(flumen())
        .args([
            "--batch-interval",
            "100 ms",
            "-c",
            "CREATE STREAM r WITH (connector = 'rate', rows_per_second = '30'); SELECT value FROM r;",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let batches = lines
        .by_ref()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("Time: "))
        .take(2)
        .count();
    assert_eq!(batches, 2);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let out = Command::new(flumen())
        .args(["-c", "SELECT 1; SELEC 2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: statement 2: "), "{stderr}");
}

/// `--trigger available-now` on a files stream reads the files the folder holds (Spark's
/// availableNow), unless `include_existing = 'false'` says otherwise.
#[test]
fn available_now_reads_the_files_already_there() {
    let dir = crate::common::temp_dir("cli-available-now");
    std::fs::write(dir.join("a.txt"), "one\ntwo\n").unwrap();
    let f = script(
        "files-now.sql",
        &format!(
            "CREATE STREAM l (line TEXT) WITH (connector = 'files', path = '{}');\n\
             CREATE SINK out WITH (connector = 'console') AS SELECT line FROM l;\n",
            dir.display()
        ),
    );
    let out = Command::new(flumen())
        .args([
            "-f",
            f.to_str().unwrap(),
            "--trigger",
            "available-now",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("one") && stdout.contains("two"), "{stdout}");
}

/// The event-time operators' rows under `--trigger available-now` and a script
/// over `dir` (a stream `s` in `dir/s`, `clicks` in `dir/clicks`), `extra` statements
/// first: the console's CSV rows, sorted, header lines left out.
fn event_time_rows(dir: &std::path::Path, extra: &str) -> Vec<String> {
    let f = script(
        &format!("event-time-{}.sql", dir.file_name().unwrap().to_string_lossy()),
        &format!(
            "SET output_mode = 'append'; {extra}
             CREATE STREAM s (ts TIMESTAMP, k TEXT, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
               WITH (connector = 'files', path = '{d}/s', format = 'csv');
             CREATE STREAM clicks (cts TIMESTAMP, ck TEXT, WATERMARK FOR cts AS cts - INTERVAL '1' SECOND)
               WITH (connector = 'files', path = '{d}/clicks', format = 'csv');
             CREATE SINK tumble WITH (connector = 'console') AS SELECT 'tumble' AS q, window_start, count(*) AS n
               FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY window_start, window_end;
             CREATE SINK sessions WITH (connector = 'console') AS SELECT 'session' AS q, k,
               session_window(ts, INTERVAL '5' SECOND)['start'] AS st, count(*) AS n
               FROM s GROUP BY k, session_window(ts, INTERVAL '5' SECOND);
             CREATE SINK top1 WITH (connector = 'console') AS SELECT 'top' AS q, window_start, k FROM
               (SELECT window_start, window_end, k, ROW_NUMBER() OVER (PARTITION BY window_start, window_end
                ORDER BY k DESC) AS rn FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '10' SECOND)))
               WHERE rn <= 1;
             CREATE SINK unmatched WITH (connector = 'console') AS SELECT 'outer' AS q, s.k, s.ts, clicks.cts
               FROM s LEFT JOIN clicks ON s.k = clicks.ck AND clicks.cts BETWEEN s.ts AND s.ts + INTERVAL '5' SECOND;",
            d = dir.display()
        ),
    );
    let out = Command::new(flumen())
        .args([
            "--no-ui",
            "--trigger",
            "available-now",
            "--format",
            "csv",
            "-f",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut rows: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            ["tumble,", "session,", "top,", "outer,"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

/// `--trigger available-now` without a checkpoint is a run over finite input (Flink's
/// bounded input): when the sources are drained, one last batch takes every
/// event-time operator's watermark past all windows, so the windows, sessions, window
/// top-N rankings and outer-join rows the watermark had not reached come out — no one
/// could ever emit them after the process exits. With a checkpoint they stay open in it
/// and come out in a later run, once its rows move the watermark (Spark's
/// availableNow), each once.
#[test]
fn available_now_closes_open_windows_at_the_end_unless_a_checkpoint_keeps_them() {
    let dir = crate::common::temp_dir("cli-end-of-input");
    for sub in ["s", "clicks"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(
        dir.join("s/a.csv"),
        "2026-01-01T00:00:01,a\n2026-01-01T00:00:05,b\n2026-01-01T00:00:12,a\n2026-01-01T00:00:25,c\n",
    )
    .unwrap();
    std::fs::write(dir.join("clicks/a.csv"), "2026-01-01T00:00:02,a\n").unwrap();
    let all = [
        "outer,a,2026-01-01T00:00:01,2026-01-01T00:00:02",
        "outer,a,2026-01-01T00:00:12,",
        "outer,b,2026-01-01T00:00:05,",
        "outer,c,2026-01-01T00:00:25,",
        "session,a,2026-01-01T00:00:01,1",
        "session,a,2026-01-01T00:00:12,1",
        "session,b,2026-01-01T00:00:05,1",
        "session,c,2026-01-01T00:00:25,1",
        "top,2026-01-01T00:00:00,b",
        "top,2026-01-01T00:00:10,a",
        "top,2026-01-01T00:00:20,c",
        "tumble,2026-01-01T00:00:00,2",
        "tumble,2026-01-01T00:00:10,1",
        "tumble,2026-01-01T00:00:20,1",
    ];
    assert_eq!(event_time_rows(&dir, ""), all);
    // With a checkpoint: what the watermark (24 s for `s`, 1 s for `clicks`) closed.
    let checkpoint = format!(
        "SET checkpoint_location = '{}';",
        dir.join("checkpoint").display()
    );
    assert_eq!(
        event_time_rows(&dir, &checkpoint),
        [
            "outer,a,2026-01-01T00:00:01,2026-01-01T00:00:02",
            "session,a,2026-01-01T00:00:01,1",
            "session,a,2026-01-01T00:00:12,1",
            "session,b,2026-01-01T00:00:05,1",
            "top,2026-01-01T00:00:00,b",
            "top,2026-01-01T00:00:10,a",
            "tumble,2026-01-01T00:00:00,2",
            "tumble,2026-01-01T00:00:10,1",
        ]
    );
    // The next run's rows move both watermarks past the rest, which comes out then.
    std::fs::write(dir.join("s/b.csv"), "2026-01-01T00:00:50,d\n").unwrap();
    std::fs::write(dir.join("clicks/b.csv"), "2026-01-01T00:00:50,x\n").unwrap();
    assert_eq!(
        event_time_rows(&dir, &checkpoint),
        [
            "outer,a,2026-01-01T00:00:12,",
            "outer,b,2026-01-01T00:00:05,",
            "outer,c,2026-01-01T00:00:25,",
            "session,c,2026-01-01T00:00:25,1",
            "top,2026-01-01T00:00:20,c",
            "tumble,2026-01-01T00:00:20,1",
        ]
    );
}

/// REPL: a continuous SELECT whose query fails shows the error and returns to the
/// prompt.
#[test]
fn repl_returns_to_the_prompt_when_a_continuous_select_fails() {
    let dir = crate::common::temp_dir("repl-fails");
    std::fs::write(dir.join("bad.csv"), "x\n").unwrap();
    let home = std::env::temp_dir().join(format!("flumen-repl-home2-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(flumen());
    cmd.env("HOME", &home).arg("--no-ui");
    let mut p = rexpect::session::spawn_command(cmd, Some(20_000)).unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line(&format!(
        "CREATE STREAM nums (n BIGINT) WITH (connector = 'files', path = '{}', format = 'csv', include_existing = 'true');",
        dir.display()
    ))
    .unwrap();
    p.exp_string("Stream 'nums' created").unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line("SELECT n FROM nums;").unwrap();
    p.exp_string("error: query 1 failed: ").unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line("SELECT 41 + 1 AS answer;").unwrap();
    p.exp_string("| 42").unwrap();
    p.exp_string("flumen> ").unwrap();
    p.send_line("\\q").unwrap();
    p.exp_eof().unwrap();
}

/// `--format csv` writes only data rows to stdout — console sinks included — so the
/// output can be piped; what statements did goes to stderr. In the print layout each
/// batch names its sink.
#[test]
fn with_format_csv_stdout_holds_only_rows() {
    let f = script(
        "csv-out.sql",
        "SET batch_interval = '200 ms';\n\
         CREATE STREAM ticks WITH (connector = 'rate', rows_per_second = '4', rows = '6');\n\
         CREATE SINK evens WITH (connector = 'console') AS\n\
           SELECT value, value * value AS square FROM ticks WHERE value % 2 = 0;\n",
    );
    let out = Command::new(flumen())
        .args([
            "-f",
            f.to_str().unwrap(),
            "--trigger",
            "available-now",
            "--format",
            "csv",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "value,square\n0,0\n2,4\n4,16\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Sink 'evens' created; query 1 writes to it"),
        "{stderr}"
    );
    let out = Command::new(flumen())
        .args(["-f", f.to_str().unwrap(), "--trigger", "available-now"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" (sink evens)\n"), "{stdout}");
}

/// The options are clap's: `--help` lists them and the subcommands and exits 0; an
/// unknown option or a bad value is exit code 1 naming it; settings given on the
/// command line reach the session typed, so a quote in a path is just a character.
#[test]
fn options_are_parsed_typed_and_explained() {
    let out = Command::new(flumen()).arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--checkpoint <DIR>",
        "--trigger <MODE>",
        "demo",
        "Exit codes: 0",
    ] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }

    // Exit code 1 and what stderr says.
    let refused = |args: &[&str]| {
        let out = Command::new(flumen()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&["--chekpoint"]);
    assert!(err.contains("unexpected argument '--chekpoint'"), "{err}");
    let err = refused(&["-c", "SELECT 1", "--batch-interval", "5"]);
    assert!(err.contains("'--batch-interval <D>'"), "{err}");
    assert_eq!(
        refused(&["-c", "SELECT 1", "--checkpoint-interval", "0"]),
        "error: checkpoint_interval '0': give a number of batches from 1 to 100 (state is snapshotted every that many batches)\n"
    );

    // `--checkpoint "…/o'neil"`: once formatted into `SET ... = '...'`, now a path.
    let dir = crate::common::temp_dir("cli-typed-settings").join("o'neil");
    let f = script(
        "typed.sql",
        "CREATE STREAM ticks WITH (connector = 'rate', rows_per_second = '5', rows = '5');\n\
         CREATE SINK out WITH (connector = 'console') AS SELECT count(*) AS n FROM ticks;\n",
    );
    let out = Command::new(flumen())
        .args([
            "-f",
            f.to_str().unwrap(),
            "--trigger",
            "available-now",
            "--no-ui",
        ])
        .arg("--checkpoint")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        dir.join("queries").join("out").is_dir(),
        "no checkpoint under {}: {out:?}",
        dir.display()
    );
}

/// The Nexmark suite's files run from the command line as the README shows them
/// (`-f ddl.sql -f qN.sql`), over fewer events: each query that runs drains and exits
/// 0; q6 and q12 exit 1 with an error naming the file, the line and the reason.
#[test]
fn nexmark_suite_files_run_from_the_command_line() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benchmarks/nexmark");
    let ddl = std::fs::read_to_string(dir.join("ddl.sql"))
        .unwrap()
        .replace("events = '10000000'", "events = '20000'")
        .replace(
            "max_records_per_batch = '1000000'",
            "max_records_per_batch = '5000'",
        );
    assert_eq!(ddl.matches("events = '20000'").count(), 3, "{ddl}");
    let ddl = script("nexmark-ddl.sql", &ddl);
    let out_dir = std::env::temp_dir().join(format!("flumen-cli-q10-{}", std::process::id()));
    for n in 0..=22 {
        let mut file = dir.join(format!("q{n}.sql"));
        if n == 10 {
            let text = std::fs::read_to_string(&file)
                .unwrap()
                .replace("/tmp/flumen-nexmark/q10", out_dir.to_str().unwrap());
            file = script("q10.sql", &text);
        }
        let out = Command::new(flumen())
            .args(["--no-ui", "--trigger", "available-now", "-f"])
            .arg(&ddl)
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match n {
            6 => {
                assert_eq!(out.status.code(), Some(1), "q{n}: {stderr}");
                assert!(
                    stderr.contains(&format!("q{n}.sql: line "))
                        && stderr.contains("No field named rownum"),
                    "q{n}: {stderr}"
                );
            }
            _ => assert!(out.status.success(), "q{n}: {stderr}"),
        }
    }
    // q10's files, by day (Hive's layout), with the batches' commit log.
    let days: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(days.iter().any(|d| d.starts_with("dt=")), "{days:?}");
    assert!(days.iter().any(|d| d == "_flumen_log"), "{days:?}");
    // Partitioned by day, then by minute, as Flink's PARTITIONED BY (dt, hm).
    let day = out_dir.join(days.iter().find(|d| d.starts_with("dt=")).unwrap());
    let minutes: Vec<String> = std::fs::read_dir(&day)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !minutes.is_empty() && minutes.iter().all(|m| m.starts_with("hm=")),
        "{minutes:?}"
    );
    // Flink's partition commit: the end of the input passed every minute's time, so
    // each has its _SUCCESS.
    for m in &minutes {
        assert!(day.join(m).join("_SUCCESS").is_file(), "no _SUCCESS in {m}");
    }
    std::fs::remove_dir_all(&out_dir).ok();

    // nexmark-flink's form: one stream of every event and three views over it.
    let views = std::fs::read_to_string(dir.join("ddl_views.sql"))
        .unwrap()
        .replace("events = '10000000'", "events = '20000'")
        .replace(
            "max_records_per_batch = '1000000'",
            "max_records_per_batch = '5000'",
        );
    assert_eq!(views.matches("events = '20000'").count(), 1, "{views}");
    let views = script("nexmark-ddl-views.sql", &views);
    for n in [3, 5, 8] {
        let out = Command::new(flumen())
            .args(["--no-ui", "--trigger", "available-now", "-f"])
            .arg(&views)
            .arg("-f")
            .arg(dir.join(format!("q{n}.sql")))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "q{n} over the views: {stderr}");
    }
}
