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
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: line 3: unknown source connector 'kafak'; available: files, kafka, memory, nexmark, queue, rate, socket\n"
    );
    let out = Command::new(flumen())
        .args(["-c", "SELEC 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: line 1: "),
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
    p.send_line("\\d").unwrap();
    p.exp_string("ticks").unwrap();
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
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("Web UI: http://{addr}/"));
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
