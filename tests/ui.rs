//! The web UI: its JSON and Prometheus endpoints over real HTTP on 127.0.0.1, and the
//! query page in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by scripts/services.sh), driven over WebDriver.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use flumen::sql::FlumenSession;
use flumen::sql::ui;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{sql_session, temp_dir};

/// One HTTP/1.1 request on a new connection: status code and body (read by its
/// Content-Length: chromedriver keeps the connection open after answering).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]).to_string();
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| response.len() >= end + 4 + n) {
                let n = length.unwrap_or_default();
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                let body = String::from_utf8(response[end + 4..end + 4 + n].to_vec()).unwrap();
                return (status, body);
            }
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "{method} {path}: connection closed after {response:?}"
        );
        response.extend_from_slice(&chunk[..n]);
    }
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A windowed count over a memory stream (rows inserted per batch, the manual clock)
/// and a files query whose input has a bad line (skipped).
async fn running_session() -> (FlumenSession, std::path::PathBuf) {
    let dir = temp_dir("ui-files");
    std::fs::write(dir.join("a.csv"), "1\nnot a number\n2\n").unwrap();
    let mut s = sql_session();
    s.execute_script(&format!(
        "CREATE STREAM ev (k BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
           WITH (connector = 'memory');
         SET output_mode = 'append';
         CREATE SINK counts WITH (connector = 'memory') AS
           SELECT window(ts, INTERVAL '2' SECOND)['start'] AS w, k, count(*) AS n
           FROM ev GROUP BY window(ts, INTERVAL '2' SECOND), k;
         CREATE STREAM nums (v BIGINT) WITH (connector = 'files', path = '{}', format = 'csv',
           include_existing = 'true', on_error = 'skip');
         CREATE SINK copied WITH (connector = 'memory') AS SELECT v FROM nums;",
        dir.display(),
    ))
    .await
    .unwrap();
    (s, dir)
}

/// Inserts `rows` (key, seconds) into `ev` and runs one batch.
async fn batch(s: &mut FlumenSession, rows: &[(i64, i64)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(k, sec)| {
            format!("({k}, TIMESTAMP '2026-01-01T00:00:00' + INTERVAL '{sec} seconds')")
        })
        .collect();
    s.execute(&format!("INSERT INTO ev VALUES {}", values.join(", ")))
        .await
        .unwrap();
    s.execute("ADVANCE 1 BATCHES").await.unwrap();
}

const T0_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_and_prometheus_metrics_report_every_batch() {
    let (mut s, _dir) = running_session().await;
    let server = ui::serve("127.0.0.1:0".parse().unwrap(), s.view())
        .await
        .unwrap();
    let addr = server.addr();
    batch(&mut s, &[(1, 5), (2, 5)]).await;
    // Event time 9 s moves the watermark to 8 s; the row at 2 s in the next batch is late.
    batch(&mut s, &[(1, 9)]).await;
    batch(&mut s, &[(1, 2), (2, 10)]).await;

    let queries = get_json(addr, "/api/queries").await;
    let names: Vec<&str> = queries
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["counts", "copied"]);
    let counts = &queries[0];
    assert_eq!(counts["status"], "active");
    assert_eq!(counts["batches"], 3);
    assert_eq!(counts["inputRows"], 5);
    assert_eq!(counts["lateRows"], 1);
    assert_eq!(counts["watermarkMs"], T0_MS + 9_000);
    assert_eq!(counts["latest"]["batchId"], 2);
    assert_eq!(counts["latest"]["numInputRows"], 2);
    // Windows [8, 10) for key 1 and [10, 12) for key 2 are open.
    assert_eq!(counts["stateRows"], 2);
    assert!(counts["stateBytes"].as_u64().unwrap() > 0, "{counts}");
    // The query page's State table reads each operator's entry of the newest batch.
    let op = &counts["latest"]["stateOperators"]["operators"][0];
    assert_eq!(op["name"], "WindowAggregate", "{counts}");
    assert_eq!(op["numRowsTotal"], 2);
    assert_eq!(op["spilledBytes"], 0);
    // The files query skipped the bad line; the broken one failed, naming the file.
    let copied = &queries[1];
    assert_eq!(copied["inputRows"], 2);
    assert_eq!(copied["rejectedRows"], 1);
    assert_eq!(copied["errors"], json!({"rejected_record": 1}));
    assert_eq!(copied["lag"], json!({"nums": 0}));

    let detail = get_json(addr, "/api/queries/counts").await;
    assert_eq!(detail["id"], 1);
    let recent = detail["recent"].as_array().unwrap();
    let ids: Vec<u64> = recent
        .iter()
        .map(|b| b["batchId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2]);
    assert_eq!(recent[1]["eventTime"]["watermark"], T0_MS + 8_000);
    assert_eq!(recent[2]["lateRows"], 1);
    assert_eq!(recent[0]["sources"][0]["description"], "ev");
    assert_eq!(detail["inputRowsBySource"], json!({"ev": 5}));
    assert!(
        detail["plan"][0]
            .as_str()
            .unwrap()
            .starts_with("WindowAggregate (tumbling"),
        "the plan is shown: {detail}"
    );
    // The newest batches only.
    let last = get_json(addr, "/api/queries/counts?last=2").await;
    let ids: Vec<u64> = last["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batchId"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
    // By id as well as by name.
    assert_eq!(get_json(addr, "/api/queries/1").await["name"], "counts");

    let catalog = get_json(addr, "/api/catalog").await;
    assert_eq!(catalog["streams"][0]["name"], "ev");
    assert_eq!(
        catalog["streams"][0]["columns"],
        json!(["k Int64", "ts Timestamp(ms)"])
    );
    assert!(
        catalog["sinks"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "counts", "connector": "memory", "query": 1})),
        "{catalog}"
    );

    let (status, metrics) = http(addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    for line in [
        "# TYPE flumen_batches_total counter",
        "flumen_batches_total{query=\"counts\"} 3",
        "flumen_input_rows_total{query=\"counts\",source=\"ev\"} 5",
        "flumen_late_rows_total{query=\"counts\"} 1",
        "flumen_rejected_rows_total{query=\"copied\"} 1",
        "flumen_errors_total{query=\"copied\",kind=\"rejected_record\"} 1",
        "flumen_query_active{query=\"counts\"} 1",
        "# TYPE flumen_batch_processing_seconds histogram",
        "flumen_batch_processing_seconds_bucket{query=\"counts\",le=\"+Inf\"} 3",
        "flumen_batch_processing_seconds_count{query=\"counts\"} 3",
        "flumen_batch_total_delay_seconds_count{query=\"counts\"} 3",
        "flumen_state_rows{query=\"counts\"} 2",
        "flumen_watermark_seconds{query=\"counts\"} 1767225609",
        "flumen_source_lag{query=\"copied\",source=\"nums\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }

    // The pages, and what is not there.
    let (status, page) = http(addr, "GET", "/query/counts", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"chart-input\""));
    let (status, page) = http(addr, "GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("/api/queries"));
    let (status, body) = http(addr, "GET", "/api/queries/nope", None).await;
    assert_eq!(status, 404);
    assert!(
        body.contains("no query 'nope'; queries: 1 (counts), 2 (copied)"),
        "{body}"
    );
    assert_eq!(http(addr, "GET", "/nope", None).await.0, 404);
    assert_eq!(
        http(addr, "POST", "/api/queries", Some(&json!({}))).await.0,
        405
    );

    // A query that fails is shown failed, with its error, and counted by kind.
    let bad = temp_dir("ui-files-bad");
    std::fs::write(bad.join("a.csv"), "oops\n").unwrap();
    s.execute_script(&format!(
        "CREATE STREAM broken (v BIGINT) WITH (connector = 'files', path = '{}', format = 'csv',
           include_existing = 'true');
         CREATE SINK never WITH (connector = 'memory') AS SELECT v FROM broken;",
        bad.display()
    ))
    .await
    .unwrap();
    let q = s
        .queries()
        .find(|q| q.target == "never")
        .unwrap()
        .ctx
        .clone();
    // The batch fails; ADVANCE may or may not see it before the query stops.
    let _ = s.execute("ADVANCE 1 BATCHES").await;
    assert!(q.await_termination().await.is_err());
    let never = get_json(addr, "/api/queries/never").await;
    assert_eq!(never["status"], "failed");
    assert_eq!(never["errors"], json!({"source": 1}));
    assert!(
        never["error"].as_str().unwrap().contains("a.csv line 1"),
        "{never}"
    );
    let (_, metrics) = http(addr, "GET", "/metrics", None).await;
    for line in [
        "flumen_errors_total{query=\"never\",kind=\"source\"} 1",
        "flumen_query_active{query=\"never\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
    s.stop_all().await.unwrap();
}

/// A chromedriver on a free loopback port; killed when dropped.
struct Driver {
    addr: SocketAddr,
    child: std::process::Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn chromedriver() -> Driver {
    let binary = "/usr/bin/chromedriver";
    assert!(
        std::path::Path::new(binary).exists(),
        "{binary} is missing: `scripts/services.sh start` installs Debian's chromium and chromium-driver"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(driver.addr).await.is_ok() {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on {}", driver.addr);
}

/// A WebDriver command; its `value`.
async fn webdriver(driver: &Driver, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, text) = http(driver.addr, method, path, body.as_ref()).await;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(status, 200, "WebDriver {method} {path}: {text}");
    v["value"].clone()
}

/// How many batches the page's input-rate chart shows.
async fn chart_points(driver: &Driver, session: &str) -> u64 {
    let v = webdriver(
        driver,
        "POST",
        &format!("/session/{session}/execute/sync"),
        Some(json!({
            "script": "return Number(document.getElementById('chart-input').dataset.points)",
            "args": [],
        })),
    )
    .await;
    v.as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_page_charts_batches_live_in_headless_chromium() {
    let (mut s, _dir) = running_session().await;
    let server = ui::serve("127.0.0.1:0".parse().unwrap(), s.view())
        .await
        .unwrap();
    let driver = chromedriver().await;
    let session = webdriver(
        &driver,
        "POST",
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--disable-background-networking",
                         "--no-first-run", "--window-size=1280,1100"],
            },
        }}})),
    )
    .await;
    let id = session["sessionId"].as_str().unwrap().to_string();
    let url = format!("http://{}/query/counts", server.addr());
    webdriver(
        &driver,
        "POST",
        &format!("/session/{id}/url"),
        Some(json!({ "url": url })),
    )
    .await;
    assert_eq!(chart_points(&driver, &id).await, 0, "no batch has run yet");
    // The page polls once a second: batches run while it is open and it draws them.
    batch(&mut s, &[(1, 5), (2, 5)]).await;
    batch(&mut s, &[(1, 9)]).await;
    batch(&mut s, &[(1, 2), (2, 10)]).await;
    let mut seen = 0;
    for _ in 0..100 {
        seen = chart_points(&driver, &id).await;
        if seen >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 3, "the input-rate chart shows the three batches");
    let late = webdriver(
        &driver,
        "POST",
        &format!("/session/{id}/execute/sync"),
        Some(json!({
            "script": "return document.getElementById('facts').innerText",
            "args": [],
        })),
    )
    .await;
    let facts = late.as_str().unwrap();
    assert!(facts.contains("late rows dropped\n1"), "{facts}");
    assert!(
        facts.contains("watermark\n2026-01-01 00:00:09.000"),
        "{facts}"
    );
    let png = webdriver(&driver, "GET", &format!("/session/{id}/screenshot"), None).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let shot = temp_dir("ui-screenshot").join("query.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    webdriver(&driver, "DELETE", &format!("/session/{id}"), None).await;
    s.stop_all().await.unwrap();
}

/// One GET with the given `Host` header: the status code.
async fn status_for_host(addr: SocketAddr, host: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /api/queries HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).await.unwrap();
    let head = String::from_utf8_lossy(&response);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// On a loopback address the UI answers only to loopback host names: a page whose DNS
/// name was rebound to 127.0.0.1 (its own name in `Host`) cannot read the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_the_ui_answers_only_to_loopback_host_names() {
    let (s, _dir) = running_session().await;
    let server = ui::serve("127.0.0.1:0".parse().unwrap(), s.view())
        .await
        .unwrap();
    let addr = server.addr();
    let port = addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(status_for_host(addr, &host).await, 200, "{host}");
    }
    for host in [
        format!("evil.example:{port}"),
        "attacker.test".to_string(),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        assert_eq!(status_for_host(addr, &host).await, 403, "{host}");
    }
}
