//! The `socket` source (Spark's `socketTextStream`): a receiver task connects to
//! `host:port`, reads UTF-8 lines continuously and cuts them into blocks every
//! `block_interval`; a batch takes the lines received up to its planning (the lines
//! not yet cut are cut into a last block then), at most `max_records` of them,
//! decodes them with the stream's `format`, and frees them at commit.
//!
//! ```text
//!  server ──TCP──▶ receiver task ─lines─▶ current ─cut every block_interval─▶ blocks
//!                  (reconnects with        │ wal = true: block file written,
//!                   backoff, logs it)      │ fsynced, renamed before it counts
//!  plan_batch: cut, range = line indexes [planned, min(cut, planned + max))
//!  read_batch: slices of the shared blocks, decoded
//!  commit:     drop blocks wholly below the range end; WAL: `committed` = end,
//!              their files deleted.   open (WAL): uncommitted blocks replayed
//! ```
//!
//! Without `wal = true` blocks live in memory only: lines received but not committed
//! are lost if the process dies. With it, they are replayed after a restart (the
//! log lives in `wal_dir`, by default under the session's `checkpoint_location`).

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

/// Consecutive lines of the connection's input, the first of them at index `first`
/// (line `first + 1`).
#[derive(Debug)]
struct Block {
    first: u64,
    lines: Vec<String>,
}

impl Block {
    fn end(&self) -> u64 {
        self.first + self.lines.len() as u64
    }
}

/// Lines received and not yet committed, cut into blocks; ranges are line indexes.
#[derive(Debug, Default)]
struct Received {
    /// Lines since the last cut.
    current: Vec<String>,
    /// Blocks by their first line index.
    blocks: BTreeMap<u64, Arc<Block>>,
    /// Lines below this index are in blocks (received, and logged with a WAL).
    cut_until: u64,
    /// Lines below this index have been planned into a batch.
    planned_until: u64,
    /// Lines received (index of the next one).
    lines: u64,
    connected: bool,
    wal: Option<Wal>,
}

impl Received {
    /// Makes the lines since the last cut a block; with a WAL, only once it is on disk.
    fn cut(&mut self) -> std::io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let block = Block {
            first: self.lines - self.current.len() as u64,
            lines: std::mem::take(&mut self.current),
        };
        if let Some(wal) = &self.wal
            && let Err(e) = wal.append(&block)
        {
            // Not received until logged: keep the lines for the next attempt.
            self.current = block.lines;
            return Err(e);
        }
        self.cut_until = block.end();
        self.blocks.insert(block.first, Arc::new(block));
        Ok(())
    }
}

/// The write-ahead log of a reliable receiver: one file per block, written to a
/// temporary name, fsynced and renamed (so a block file is whole or absent), plus a
/// `committed` file holding the index of the first line not yet committed.
#[derive(Debug)]
struct Wal {
    dir: std::path::PathBuf,
}

impl Wal {
    fn block_path(&self, first: u64) -> std::path::PathBuf {
        self.dir.join(format!("{first:020}.block"))
    }

    fn write_atomic(&self, name: &str, body: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(name))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn append(&self, block: &Block) -> std::io::Result<()> {
        let mut body = String::with_capacity(block.lines.iter().map(|l| l.len() + 1).sum());
        for l in &block.lines {
            body.push_str(l);
            body.push('\n');
        }
        self.write_atomic(&format!("{:020}.block", block.first), body.as_bytes())
    }

    /// Lines below `end` are committed: record it, then drop the blocks wholly below.
    fn commit(&self, end: u64, dropped: &[u64]) -> std::io::Result<()> {
        self.write_atomic("committed", end.to_string().as_bytes())?;
        for first in dropped {
            match std::fs::remove_file(self.block_path(*first)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Opens (creating) the log in `dir`: the blocks not yet committed, and the index
    /// of the first uncommitted line.
    fn open(dir: &std::path::Path) -> std::io::Result<(Wal, Vec<Block>, u64)> {
        std::fs::create_dir_all(dir)?;
        let committed = match std::fs::read_to_string(dir.join("committed")) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| {
                std::io::Error::other(format!("{}/committed is corrupt: {e}", dir.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut blocks = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                // A write the crash interrupted: never counted as received.
                std::fs::remove_file(&path)?;
                continue;
            }
            let Some(first) = name.strip_suffix(".block") else {
                continue;
            };
            let first: u64 = first.parse().map_err(|_| {
                std::io::Error::other(format!("unexpected file {} in the WAL", path.display()))
            })?;
            let text = String::from_utf8(std::fs::read(&path)?).map_err(|_| {
                std::io::Error::other(format!("{} is not UTF-8: corrupt", path.display()))
            })?;
            if !text.is_empty() && !text.ends_with('\n') {
                return Err(std::io::Error::other(format!(
                    "{} is truncated (no final newline)",
                    path.display()
                )));
            }
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            let block = Block { first, lines };
            if block.end() <= committed {
                std::fs::remove_file(&path)?;
                continue;
            }
            blocks.push(block);
        }
        blocks.sort_by_key(|b| b.first);
        Ok((
            Wal {
                dir: dir.to_path_buf(),
            },
            blocks,
            committed,
        ))
    }
}

#[derive(Debug)]
pub struct SocketSource {
    name: String,
    addr: String,
    decoder: Decoder,
    block_interval: Duration,
    wal_dir: Option<std::path::PathBuf>,
    received: Arc<Mutex<Received>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    rejected: Mutex<Vec<Rejected>>,
}

impl SocketSource {
    pub fn new(
        name: &str,
        addr: String,
        decoder: Decoder,
        block_interval: Duration,
        wal_dir: Option<std::path::PathBuf>,
    ) -> Self {
        Self {
            name: name.to_string(),
            addr,
            decoder,
            block_interval,
            wal_dir,
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

    fn wal_error(&self, e: std::io::Error) -> flumen_engine::Error {
        flumen_engine::Error::Source {
            source_name: self.name.clone(),
            message: format!(
                "write-ahead log {}: {e}",
                self.wal_dir
                    .as_deref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ),
            retryable: true,
        }
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
        if let Some(dir) = &self.wal_dir {
            let (wal, blocks, committed) = Wal::open(dir).map_err(|e| self.wal_error(e))?;
            let mut r = self.received.lock();
            if !blocks.is_empty() {
                log::info!(
                    "socket source {}: replaying {} lines not committed before the restart",
                    self.name,
                    blocks
                        .iter()
                        .map(|b| b.end() - b.first.max(committed))
                        .sum::<u64>()
                );
            }
            r.planned_until = committed;
            r.cut_until = committed;
            r.lines = committed;
            for b in blocks {
                r.cut_until = r.cut_until.max(b.end());
                r.lines = r.cut_until;
                r.blocks.insert(b.first, Arc::new(b));
            }
            r.wal = Some(wal);
        }
        let mut tasks = self.tasks.lock();
        tasks.push(tokio::spawn(receive(
            self.name.clone(),
            self.addr.clone(),
            Arc::clone(&self.received),
        )));
        let received = Arc::clone(&self.received);
        let every = self.block_interval;
        let name = self.name.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = received.lock().cut() {
                    log::error!("socket source {name}: write-ahead log: {e}; will retry");
                }
            }
        }));
        Ok(())
    }

    async fn plan_batch(&self, batch: &BatchContext) -> Result<SourceRange> {
        let mut r = self.received.lock();
        r.cut().map_err(|e| self.wal_error(e))?;
        let start = r.planned_until;
        let mut end = r.cut_until;
        if let Some(max) = batch.max_records {
            end = end.min(start + max);
        }
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
        // The blocks are shared, not copied.
        let blocks: Vec<Arc<Block>> = {
            let r = self.received.lock();
            let from = r
                .blocks
                .range(..=start)
                .next_back()
                .map_or(start, |(first, _)| *first);
            r.blocks
                .range(from..end)
                .filter(|(_, b)| b.end() > start)
                .map(|(_, b)| Arc::clone(b))
                .collect()
        };
        let mut lines: Vec<&str> = Vec::with_capacity((end - start) as usize);
        for b in &blocks {
            let lo = start.saturating_sub(b.first) as usize;
            let hi = (end.min(b.end()) - b.first) as usize;
            lines.extend(b.lines[lo..hi].iter().map(String::as_str));
        }
        if lines.len() as u64 != end - start {
            return Err(flumen_engine::Error::Source {
                source_name: self.name.clone(),
                message: format!(
                    "lines {}..{} of {} are no longer held (received {} of them)",
                    start + 1,
                    end + 1,
                    self.addr,
                    lines.len()
                ),
                retryable: false,
            });
        }
        let (batch, rejected) = self.decoder.decode(&lines, |i| {
            format!("{} line {}", self.addr, start + i as u64 + 1)
        })?;
        *self.rejected.lock() = rejected;
        Ok(vec![vec![batch]])
    }

    async fn restore(&self, last: &SourceRange) -> Result<()> {
        if self.wal_dir.is_none() {
            return plan_err!(
                "stream {}: a socket source keeps received lines only in memory, so a query cannot resume from a checkpoint; \
                 set wal = 'true' or delete the checkpoint",
                self.name
            );
        }
        let Some(end) = last.end.as_u64() else {
            return plan_err!("socket source {}: bad range {last:?}", self.name);
        };
        let mut r = self.received.lock();
        r.planned_until = r.planned_until.max(end);
        Ok(())
    }

    async fn commit(&self, range: &SourceRange) -> Result<()> {
        if let Some(end) = range.end.as_u64() {
            let mut r = self.received.lock();
            let dropped: Vec<u64> = r
                .blocks
                .values()
                .take_while(|b| b.end() <= end)
                .map(|b| b.first)
                .collect();
            for first in &dropped {
                r.blocks.remove(first);
            }
            if let Some(wal) = &r.wal {
                wal.commit(end, &dropped).map_err(|e| self.wal_error(e))?;
            }
        }
        Ok(())
    }

    fn honours_record_limit(&self) -> bool {
        true
    }

    async fn is_drained(&self) -> Result<bool> {
        let r = self.received.lock();
        Ok(r.current.is_empty() && r.planned_until == r.cut_until)
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

const SOCKET_OPTIONS: [&str; 7] = [
    "host",
    "port",
    "block_interval",
    "wal",
    "wal_dir",
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
        let wal_dir = match (
            bool_option("socket", options, "wal", false)?,
            options.get("wal_dir"),
        ) {
            (true, Some(dir)) => Some(std::path::PathBuf::from(dir)),
            (true, None) => {
                return plan_err!(
                    "stream {name}: wal = 'true' needs a local directory for the write-ahead log: SET checkpoint_location = '<local directory>' first, or give wal_dir = '...'"
                );
            }
            (false, Some(_)) => {
                return plan_err!("stream {name}: wal_dir is used only with wal = 'true'");
            }
            (false, None) => None,
        };
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
            wal_dir,
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
