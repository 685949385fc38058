//! The web UI (Spark's Streaming tab, for Flumen): an HTTP server over a
//! [`SessionView`], on `127.0.0.1:4040` by default.
//!
//! ```text
//!  GET /                   overview: queries, streams, sinks      (HTML, polls the API)
//!  GET /query/<id|name>    one query: live charts of input rate, processing time,
//!                          scheduling and total delay; recent batches; watermark,
//!                          late rows, state, sources' offsets and lag; the plan
//!  GET /api/queries        every query's summary                   (JSON)
//!  GET /api/queries/<q>    one query: summary, recent batches, plan (JSON)
//!  GET /api/catalog        streams and sinks                       (JSON)
//!  GET /metrics            Prometheus text format
//! ```
//!
//! The pages are static; their script fetches the API once a second and draws the
//! charts as SVG (no library, nothing loaded from outside).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use flumen_engine::StreamingContextState;
use flumen_engine::metrics::{Histogram, MetricsSnapshot, histogram, sample};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::session::{QueryInfo, SessionView, list_queries};

const OVERVIEW_HTML: &str = include_str!("ui/overview.html");
const QUERY_HTML: &str = include_str!("ui/query.html");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The address the UI takes when none is named.
pub const DEFAULT_ADDR: &str = "127.0.0.1:4040";

/// A running UI server; dropping it stops the server.
pub struct UiServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl UiServer {
    /// Where it listens (the port is the real one when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves the UI for `view` until the returned server is dropped.
pub async fn serve(addr: SocketAddr, view: SessionView) -> std::io::Result<UiServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on serving.
                    log::warn!("web UI on {addr}: accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let view = view.clone();
            let loopback = addr.ip().is_loopback();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let view = view.clone();
                    async move {
                        Ok::<_, Infallible>(match foreign_host(loopback, &req) {
                            Some(refused) => refused,
                            None => route(&view, &req),
                        })
                    }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    log::debug!("web UI on {addr}: connection: {e}");
                }
            });
        }
    });
    Ok(UiServer { addr, task })
}

/// Binds the default address, or the next free port after it (4041, 4042, ... as
/// Spark does) when another process holds it; up to 16 tries.
pub async fn serve_default(view: SessionView) -> std::io::Result<UiServer> {
    let mut addr: SocketAddr = DEFAULT_ADDR.parse().map_err(std::io::Error::other)?;
    let mut last = None;
    for _ in 0..16 {
        match serve(addr, view.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(e);
                addr.set_port(addr.port() + 1);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

/// On a loopback address the UI answers only requests for a loopback host name: a
/// page elsewhere whose DNS name is rebound to 127.0.0.1 sends its own name in `Host`,
/// and must not read the API. `None`: the request may be served.
fn foreign_host(loopback: bool, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if !loopback {
        return None;
    }
    let host = req.headers().get(hyper::header::HOST)?;
    let host = host.to_str().unwrap_or("");
    // Without the port: `name:port`, `[v6]:port`, `[v6]`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    let local = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if local {
        return None;
    }
    Some(text(
        StatusCode::FORBIDDEN,
        "text/plain",
        format!(
            "Host '{host}' is not served: on a loopback address the web UI answers only to \
             localhost, 127.0.0.1 and [::1] (a page served under another name cannot read it); \
             start flumen with --ui <address> to serve other names\n"
        ),
    ))
}

fn route(view: &SessionView, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
    }
    let path = req.uri().path();
    match path.trim_end_matches('/') {
        "" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            OVERVIEW_HTML.into(),
        ),
        "/style.css" => text(StatusCode::OK, "text/css", STYLE_CSS.into()),
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(view),
        ),
        "/api/queries" => json_response(StatusCode::OK, &queries_json(view)),
        "/api/catalog" => json_response(StatusCode::OK, &catalog_json(view)),
        p => {
            if let Some(key) = p.strip_prefix("/api/queries/") {
                match view.query(&percent_decode(key)) {
                    Some(q) => json_response(StatusCode::OK, &query_detail(&q, last(req))),
                    None => not_found(view, key),
                }
            } else if let Some(key) = p.strip_prefix("/query/") {
                match view.query(&percent_decode(key)) {
                    Some(_) => text(
                        StatusCode::OK,
                        "text/html; charset=utf-8",
                        QUERY_HTML.into(),
                    ),
                    None => not_found(view, key),
                }
            } else {
                text(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!(
                        "no page {path}; try /, /query/<id>, /api/queries, /api/catalog, /metrics\n"
                    ),
                )
            }
        }
    }
}

fn not_found(view: &SessionView, key: &str) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": format!("no query '{key}'; queries: {}", list_queries(&view.queries()))}),
    )
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "no-store".parse() {
        r.headers_mut().insert(hyper::header::CACHE_CONTROL, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    text(status, "application/json", v.to_string())
}

/// `%20` and the like in a query's name.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(q: &QueryInfo) -> &'static str {
    match q.ctx.state() {
        StreamingContextState::Initialized => "initialized",
        StreamingContextState::Active => "active",
        StreamingContextState::Stopped if q.ctx.failure().is_some() => "failed",
        StreamingContextState::Stopped => "stopped",
    }
}

/// One query's summary: totals, the newest batch's gauges, and its progress record.
fn query_summary(q: &QueryInfo) -> Value {
    let m = q.metrics.snapshot();
    let latest = q.ctx.last_batches(1).pop();
    let mut streams: Vec<&String> = q.streams.iter().collect();
    streams.sort();
    json!({
        "id": q.id,
        "name": q.target,
        "sql": q.sql,
        "status": status(q),
        "error": q.ctx.failure().map(|e| e.to_string()),
        "batchIntervalMs": q.ctx.batch_interval().as_millis() as u64,
        "streams": streams,
        "batches": m.batches,
        "inputRows": m.input_rows.values().sum::<u64>(),
        "outputRows": m.output_rows,
        "lateRows": m.late_rows,
        "rejectedRows": m.rejected_rows,
        "restarts": m.restarts,
        "errors": m.errors,
        "stateRows": m.state_rows,
        "stateBytes": m.state_bytes,
        "watermarkMs": m.watermark_ms,
        "lag": m.lag,
        "latest": latest.map(|b| b.progress(&q.target)),
    })
}

fn queries_json(view: &SessionView) -> Value {
    Value::Array(view.queries().iter().map(query_summary).collect())
}

/// `?last=N`: how many of the recent batches to return (all that are kept if absent).
fn last(req: &Request<Incoming>) -> Option<usize> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("last="))?
        .parse()
        .ok()
}

/// A query's summary with its recent batches (oldest first; the newest `last` of
/// them) and its plan.
fn query_detail(q: &QueryInfo, last: Option<usize>) -> Value {
    let mut v = query_summary(q);
    v["recent"] = Value::Array(
        q.ctx
            .last_batches(last.unwrap_or(usize::MAX))
            .iter()
            .map(|b| b.progress(&q.target))
            .collect(),
    );
    v["plan"] = json!(q.explain);
    v["inputRowsBySource"] = json!(q.metrics.snapshot().input_rows);
    v
}

fn catalog_json(view: &SessionView) -> Value {
    json!({
        "streams": view.streams().iter().map(|(name, kind, schema)| json!({
            "name": name,
            "kind": kind,
            "columns": schema.fields().iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "sinks": view.sinks().iter().map(|(name, connector, query)| json!({
            "name": name,
            "connector": connector,
            "query": query,
        })).collect::<Vec<_>>(),
    })
}

/// Reads a counter or gauge from a query's totals.
type Value64 = fn(&MetricsSnapshot) -> u64;
/// Reads values by a second label (source, error kind) from a query's totals.
type Labelled = fn(&MetricsSnapshot) -> &BTreeMap<String, u64>;
/// Reads a duration histogram from a query's totals.
type Durations = fn(&MetricsSnapshot) -> &Histogram;

/// Every query's metrics in Prometheus' text format (version 0.0.4).
pub fn metrics_text(view: &SessionView) -> String {
    let queries = view.queries();
    let snapshots: Vec<_> = queries.iter().map(|q| (q, q.metrics.snapshot())).collect();
    let mut out = String::new();
    status_gauges(&mut out, &snapshots);
    counters_and_gauges(&mut out, &snapshots);
    labelled(&mut out, &snapshots);
    histograms(&mut out, &snapshots);
    watermarks(&mut out, &snapshots);
    out
}

/// Each query with its totals.
type Snapshots<'a> = [(&'a QueryInfo, MetricsSnapshot)];

/// `# HELP` and `# TYPE` of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// `flumen_query_active` and `flumen_query_failed`.
fn status_gauges(out: &mut String, snapshots: &Snapshots<'_>) {
    family(
        out,
        "flumen_query_active",
        "gauge",
        "1 while the query runs, else 0.",
    );
    for (q, _) in snapshots {
        let active = u8::from(q.ctx.state() == StreamingContextState::Active);
        sample(out, "flumen_query_active", &[("query", &q.target)], active);
    }
    family(
        out,
        "flumen_query_failed",
        "gauge",
        "1 once the query stopped with an error, else 0.",
    );
    for (q, _) in snapshots {
        sample(
            out,
            "flumen_query_failed",
            &[("query", &q.target)],
            u8::from(q.ctx.failure().is_some()),
        );
    }
}

/// The per-query counters and gauges.
fn counters_and_gauges(out: &mut String, snapshots: &Snapshots<'_>) {
    let per_query: [(&str, &str, &str, Value64); 7] = [
        (
            "flumen_query_restarts_total",
            "counter",
            "Restarts from the checkpoint after a failure (SET restart = 'on-failure').",
            |m| m.restarts,
        ),
        (
            "flumen_batches_total",
            "counter",
            "Batches completed.",
            |m| m.batches,
        ),
        (
            "flumen_output_rows_total",
            "counter",
            "Rows written to the query's sink.",
            |m| m.output_rows,
        ),
        (
            "flumen_late_rows_total",
            "counter",
            "Rows dropped as older than the watermark.",
            |m| m.late_rows,
        ),
        (
            "flumen_rejected_rows_total",
            "counter",
            "Input records the sources could not decode.",
            |m| m.rejected_rows,
        ),
        (
            "flumen_state_rows",
            "gauge",
            "Rows held by the query's stateful operators.",
            |m| m.state_rows,
        ),
        (
            "flumen_state_bytes",
            "gauge",
            "Memory of that state, estimated.",
            |m| m.state_bytes,
        ),
    ];
    for (name, kind, help, get) in per_query {
        family(out, name, kind, help);
        for (q, m) in snapshots {
            sample(out, name, &[("query", &q.target)], get(m));
        }
    }
}

/// The metrics with a second label (a source, an error kind).
fn labelled(out: &mut String, snapshots: &Snapshots<'_>) {
    let per_label: [(&str, &str, &str, &str, Labelled); 3] = [
        (
            "flumen_input_rows_total",
            "counter",
            "Rows read, per source.",
            "source",
            |m| &m.input_rows,
        ),
        (
            "flumen_errors_total",
            "counter",
            "Errors by kind: rejected_record, sink_retry, or the kind of error that stopped the query.",
            "kind",
            |m| &m.errors,
        ),
        (
            "flumen_source_lag",
            "gauge",
            "How far the newest batch ended behind what the source held (Kafka: records; files: files).",
            "source",
            |m| &m.lag,
        ),
    ];
    for (name, kind, help, label, get) in per_label {
        family(out, name, kind, help);
        for (q, m) in snapshots {
            for (value, n) in get(m) {
                sample(out, name, &[("query", &q.target), (label, value)], n);
            }
        }
    }
}

/// The batch duration histograms.
fn histograms(out: &mut String, snapshots: &Snapshots<'_>) {
    let histograms: [(&str, &str, Durations); 3] = [
        (
            "flumen_batch_processing_seconds",
            "Time to process a batch.",
            |m| &m.processing_time,
        ),
        (
            "flumen_batch_scheduling_delay_seconds",
            "From a batch's time to the start of its processing.",
            |m| &m.scheduling_delay,
        ),
        (
            "flumen_batch_total_delay_seconds",
            "Scheduling delay plus processing time.",
            |m| &m.total_delay,
        ),
    ];
    for (name, help, get) in histograms {
        family(out, name, "histogram", help);
        for (q, m) in snapshots {
            histogram(out, name, &[("query", &q.target)], get(m));
        }
    }
}

/// `flumen_watermark_seconds`, for queries that have one.
fn watermarks(out: &mut String, snapshots: &Snapshots<'_>) {
    family(
        out,
        "flumen_watermark_seconds",
        "gauge",
        "The query's event-time watermark (Unix time).",
    );
    for (q, m) in snapshots {
        if let Some(w) = m.watermark_ms {
            sample(
                out,
                "flumen_watermark_seconds",
                &[("query", &q.target)],
                w as f64 / 1000.0,
            );
        }
    }
}
