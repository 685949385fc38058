//! The `socket` source (Spark's `socketTextStream`): a receiver task connects to
//! `host:port`, reads UTF-8 lines continuously and cuts them into blocks every
//! `block_interval`; a batch takes every block received up to its planning (the line
//! being received is cut into a last block then), decodes them with the stream's
//! `format`, and frees them at commit.
//!
//! ```text
//!  server ──TCP──▶ receiver task ─lines─▶ current ─cut every block_interval─▶ blocks
//!                  (reconnects with        plan_batch: cut, take blocks [from, until)
//!                   backoff, logs it)      read_batch: decode   commit: drop them
//! ```
//!
//! Blocks are held in memory: data received but not yet committed is lost if the
//! process dies (the write-ahead log, `wal = true`, is not built yet and is refused).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::registry::{ConnectorOptions, SourceFactory, bool_option, check_options};
use flumen_engine::{BatchContext, Rejected, Result, Source, SourceRange, plan_err};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::format::{Decoder, FORMAT_OPTIONS, text_schema};

/// Consecutive lines, the first of them line `first` of the connection's input.
#[derive(Debug)]
struct Block {
    first: u64,
    lines: Vec<String>,
}

/// Lines received and not yet committed, cut into numbered blocks.
#[derive(Debug, Default)]
struct Received {
    /// Lines since the last cut.
    current: Vec<String>,
    blocks: BTreeMap<u64, Arc<Block>>,
    next_block: u64,
    /// Blocks below this have been planned into a batch.
    planned_until: u64,
    lines: u64,
    connected: bool,
}

impl Received {
    fn cut(&mut self) {
        if !self.current.is_empty() {
            let lines = std::mem::take(&mut self.current);
            let first = self.lines + 1 - lines.len() as u64;
            self.blocks
                .insert(self.next_block, Arc::new(Block { first, lines }));
            self.next_block += 1;
        }
    }
}

#[derive(Debug)]
pub struct SocketSource {
    name: String,
    addr: String,
    decoder: Decoder,
    block_interval: Duration,
    received: Arc<Mutex<Received>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    rejected: Mutex<Vec<Rejected>>,
}

impl SocketSource {
    pub fn new(name: &str, addr: String, decoder: Decoder, block_interval: Duration) -> Self {
        Self {
            name: name.to_string(),
            addr,
            decoder,
            block_interval,
            received: Arc::default(),
            tasks: Mutex::new(Vec::new()),
            rejected: Mutex::new(Vec::new()),
        }
    }

    /// Lines received since the query started (a metric; tests wait on it).
    pub fn lines_received(&self) -> u64 {
        self.received.lock().lines
    }

    /// Whether the receiver is connected now.
    pub fn is_connected(&self) -> bool {
        self.received.lock().connected
    }
}

/// Reads lines from `addr` for ever, reconnecting with backoff.
async fn receive(name: String, addr: String, received: Arc<Mutex<Received>>) {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    let mut backoff = FIRST;
    loop {
        match TcpStream::connect(&addr).await {
            Ok(stream) => {
                log::info!("socket source {name}: connected to {addr}");
                received.lock().connected = true;
                backoff = FIRST;
                let mut lines = BufReader::new(stream).lines();
                let why = loop {
                    match lines.next_line().await {
                        Ok(Some(line)) => {
                            let mut line = line;
                            if line.ends_with('\r') {
                                line.pop();
                            }
                            let mut r = received.lock();
                            r.lines += 1;
                            r.current.push(line);
                        }
                        Ok(None) => break "the server closed the connection".to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                received.lock().connected = false;
                log::warn!(
                    "socket source {name}: {addr}: {why}; reconnecting in {} ms",
                    backoff.as_millis()
                );
            }
            Err(e) => {
                log::warn!(
                    "socket source {name}: cannot connect to {addr}: {e}; retrying in {} ms",
                    backoff.as_millis()
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX);
    }
}

#[async_trait]
impl Source for SocketSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> SchemaRef {
        self.decoder.schema().clone()
    }

    async fn open(&self) -> Result<()> {
        let mut tasks = self.tasks.lock();
        tasks.push(tokio::spawn(receive(
            self.name.clone(),
            self.addr.clone(),
            Arc::clone(&self.received),
        )));
        let received = Arc::clone(&self.received);
        let every = self.block_interval;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                received.lock().cut();
            }
        }));
        Ok(())
    }

    async fn plan_batch(&self, _batch: &BatchContext) -> Result<SourceRange> {
        let mut r = self.received.lock();
        r.cut();
        let start = r.planned_until;
        let end = r.next_block;
        r.planned_until = end;
        Ok(SourceRange {
            start: json!(start),
            end: json!(end),
        })
    }

    async fn read_batch(&self, range: &SourceRange) -> Result<Vec<Vec<RecordBatch>>> {
        let (Some(start), Some(end)) = (range.start.as_u64(), range.end.as_u64()) else {
            return plan_err!("socket source {}: bad range {range:?}", self.name);
        };
        // The blocks are shared, not copied; lines of consecutive blocks are
        // consecutive lines of the input.
        let blocks: Vec<Arc<Block>> = {
            let r = self.received.lock();
            r.blocks
                .range(start..end)
                .map(|(_, b)| Arc::clone(b))
                .collect()
        };
        let first = blocks.first().map_or(1, |b| b.first);
        let lines: Vec<&str> = blocks
            .iter()
            .flat_map(|b| b.lines.iter().map(String::as_str))
            .collect();
        let (batch, rejected) = self.decoder.decode(&lines, |i| {
            format!("{} line {}", self.addr, first + i as u64)
        })?;
        *self.rejected.lock() = rejected;
        Ok(vec![vec![batch]])
    }

    async fn commit(&self, range: &SourceRange) -> Result<()> {
        if let Some(end) = range.end.as_u64() {
            let mut r = self.received.lock();
            let keep = r.blocks.split_off(&end);
            r.blocks = keep;
        }
        Ok(())
    }

    async fn is_drained(&self) -> Result<bool> {
        let r = self.received.lock();
        Ok(r.current.is_empty() && r.planned_until == r.next_block)
    }

    async fn close(&self) -> Result<()> {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        Ok(())
    }

    fn take_rejected(&self) -> Vec<Rejected> {
        std::mem::take(&mut *self.rejected.lock())
    }
}

/// `connector = 'socket'`.
#[derive(Debug)]
pub struct SocketFactory;

const SOCKET_OPTIONS: [&str; 6] = [
    "host",
    "port",
    "block_interval",
    "wal",
    "format",
    "on_error",
];

impl SourceFactory for SocketFactory {
    fn options(&self) -> &[&'static str] {
        &SOCKET_OPTIONS
    }

    fn create(
        &self,
        name: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Source>> {
        debug_assert!(FORMAT_OPTIONS.iter().all(|o| SOCKET_OPTIONS.contains(o)));
        check_options("socket", options, &SOCKET_OPTIONS)?;
        let host = options
            .get("host")
            .map(String::as_str)
            .unwrap_or("127.0.0.1");
        let Some(port) = options.get("port") else {
            return plan_err!(
                "stream {name}: connector 'socket' needs port = '<n>' (and host, default 127.0.0.1)"
            );
        };
        let Ok(port) = port.parse::<u16>() else {
            return plan_err!("stream {name}: port '{port}' is not a TCP port number");
        };
        if bool_option("socket", options, "wal", false)? {
            return plan_err!(
                "stream {name}: wal = 'true' (a write-ahead log for received blocks) is not built yet; \
                 without it, lines received but not yet committed are lost if the process dies"
            );
        }
        let block_interval = match options.get("block_interval") {
            Some(d) => flumen_engine::time::parse_duration(d).map_err(|e| {
                flumen_engine::Error::Plan(format!("stream {name}: block_interval: {e}"))
            })?,
            None => Duration::from_millis(200),
        };
        let decoder = Decoder::from_options(name, schema, options)?;
        Ok(Arc::new(SocketSource::new(
            name,
            format!("{host}:{port}"),
            decoder,
            block_interval,
        )))
    }

    fn default_schema(&self, options: &ConnectorOptions) -> Option<SchemaRef> {
        match options
            .get("format")
            .map(|f| f.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("text") => Some(text_schema()),
            _ => None,
        }
    }
}
