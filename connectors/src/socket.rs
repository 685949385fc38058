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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use flumen_engine::registry::{ConnectorOptions, SourceFactory, bool_option};
use flumen_engine::source::{RecordLimit, SourceBatch};
use flumen_engine::{BatchContext, Result, Source, SourceRange, plan_err};
use parking_lot::Mutex;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::format::{Decoder, FORMAT_OPTIONS, OnError, text_schema};

/// A line that is not a record: longer than `max_line_bytes`, or not UTF-8. It keeps
/// its place (its line number) and goes to `on_error` when its batch is read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct BadLine {
    /// Its index in the block.
    index: u32,
    error: String,
    /// The start of what was received, for the dead-letter record.
    preview: String,
}

/// Consecutive lines of the connection's input, the first of them at index `first`
/// (line `first + 1`); a bad line is an empty string here and listed in `bad`.
#[derive(Debug, Clone)]
struct Block {
    first: u64,
    lines: Vec<String>,
    bad: Vec<BadLine>,
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
    /// The bad ones among them.
    current_bad: Vec<BadLine>,
    /// Blocks by their first line index.
    blocks: BTreeMap<u64, Arc<Block>>,
    /// Lines below this index are in blocks (received, and logged with a WAL).
    cut_until: u64,
    /// Lines received (index of the next one).
    lines: u64,
    connected: bool,
    wal: Option<Wal>,
}

impl Received {
    /// The lines since the last cut as a block (not yet received until it is added).
    fn take_block(&mut self) -> Option<Block> {
        if self.current.is_empty() {
            return None;
        }
        Some(Block {
            first: self.lines - self.current.len() as u64,
            lines: std::mem::take(&mut self.current),
            bad: std::mem::take(&mut self.current_bad),
        })
    }

    /// A block the log could not take goes back in front of the lines received since.
    fn put_back(&mut self, block: Block) {
        let shift = block.lines.len() as u32;
        let mut lines = block.lines;
        lines.append(&mut self.current);
        self.current = lines;
        let mut bad = block.bad;
        bad.extend(
            std::mem::take(&mut self.current_bad)
                .into_iter()
                .map(|mut b| {
                    b.index += shift;
                    b
                }),
        );
        self.current_bad = bad;
    }

    fn add_block(&mut self, block: Arc<Block>) {
        self.cut_until = block.end();
        self.blocks.insert(block.first, block);
    }
}

/// Makes the lines since the last cut a block; with a WAL, only once it is on disk
/// (written on a blocking thread: an fsync never stalls the runtime). `cutting` keeps
/// to one cut at a time, so blocks are added in order.
async fn cut(received: &Mutex<Received>, cutting: &tokio::sync::Mutex<()>) -> std::io::Result<()> {
    let _one = cutting.lock().await;
    let (block, wal) = {
        let mut r = received.lock();
        match r.take_block() {
            Some(b) => (b, r.wal.clone()),
            None => return Ok(()),
        }
    };
    let block = Arc::new(block);
    if let Some(wal) = wal {
        let logged = Arc::clone(&block);
        let written = tokio::task::spawn_blocking(move || wal.append(&logged))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = written {
            // Not received until logged: kept for the next attempt.
            let block = Arc::try_unwrap(block).unwrap_or_else(|b| (*b).clone());
            received.lock().put_back(block);
            return Err(e);
        }
    }
    received.lock().add_block(block);
    Ok(())
}

/// The write-ahead log of a reliable receiver: one file per block, written to a
/// temporary name, fsynced and renamed (so a block file is whole or absent), plus,
/// per query reading the stream, a `committed.<query>` file holding the index of the
/// first line that query has not committed (`committed`, from before queries shared a
/// receiver, counts for any query without its own). A block is deleted once every
/// query committed past it.
#[derive(Debug, Clone)]
struct Wal {
    dir: std::path::PathBuf,
}

impl Wal {
    /// A block file: `<first>.block` holds its lines; `<first>.block2` starts with one
    /// line of JSON listing its bad lines.
    fn block_paths(&self, first: u64) -> [std::path::PathBuf; 2] {
        [
            self.dir.join(format!("{first:020}.block")),
            self.dir.join(format!("{first:020}.block2")),
        ]
    }

    fn write_atomic(&self, name: &str, body: &[u8]) -> std::io::Result<()> {
        flumen_engine::durable::write_atomic(&self.dir.join(name), body)
    }

    fn append(&self, block: &Block) -> std::io::Result<()> {
        let mut body = String::with_capacity(block.lines.iter().map(|l| l.len() + 1).sum());
        let mut name = format!("{:020}.block", block.first);
        if !block.bad.is_empty() {
            body.push_str(&serde_json::to_string(&block.bad).map_err(std::io::Error::other)?);
            body.push('\n');
            name.push('2');
        }
        for l in &block.lines {
            body.push_str(l);
            body.push('\n');
        }
        self.write_atomic(&name, body.as_bytes())
    }

    /// The file of `consumer`'s committed mark.
    fn mark_name(consumer: &str) -> String {
        let safe: String = consumer
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("committed.{safe}")
    }

    /// `consumer` has committed the lines below `end`.
    fn mark(&self, consumer: &str, end: u64) -> std::io::Result<()> {
        self.write_atomic(&Self::mark_name(consumer), end.to_string().as_bytes())
    }

    /// Drops the blocks every consumer committed past.
    fn drop_blocks(&self, dropped: &[u64]) -> std::io::Result<()> {
        for first in dropped {
            for path in self.block_paths(*first) {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Opens (creating) the log in `dir`: the blocks some query has not committed, the
    /// committed mark of each query that has one, and the mark from before queries
    /// shared a receiver (`committed`).
    #[allow(clippy::type_complexity)]
    fn open(
        dir: &std::path::Path,
    ) -> std::io::Result<(Wal, Vec<Block>, HashMap<String, u64>, Option<u64>)> {
        std::fs::create_dir_all(dir)?;
        let read_mark = |path: &std::path::Path| -> std::io::Result<u64> {
            std::fs::read_to_string(path)?
                .trim()
                .parse::<u64>()
                .map_err(|e| std::io::Error::other(format!("{} is corrupt: {e}", path.display())))
        };
        let mut marks = HashMap::new();
        let mut legacy = None;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name == "committed" {
                legacy = Some(read_mark(&path)?);
            } else if let Some(consumer) = name.strip_prefix("committed.")
                && !consumer.ends_with(".tmp")
            {
                marks.insert(consumer.to_string(), read_mark(&path)?);
            }
        }
        // Lines below every mark are committed by every query that ever read here.
        let committed = marks.values().copied().chain(legacy).min().unwrap_or(0);
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
            let (first, with_bad) =
                match (name.strip_suffix(".block"), name.strip_suffix(".block2")) {
                    (Some(first), _) => (first, false),
                    (_, Some(first)) => (first, true),
                    _ => continue,
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
            let mut lines = text.lines();
            let bad: Vec<BadLine> = if with_bad {
                serde_json::from_str(lines.next().unwrap_or_default()).map_err(|e| {
                    std::io::Error::other(format!("{} is corrupt: {e}", path.display()))
                })?
            } else {
                Vec::new()
            };
            let lines: Vec<String> = lines.map(str::to_string).collect();
            let block = Block { first, lines, bad };
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
            marks,
            legacy,
        ))
    }
}

/// One receiver per socket stream, shared by every query that reads it (Spark's one
/// receiver per input DStream): the connection, the received lines cut into blocks,
/// the write-ahead log, and each reading query's committed position. Blocks are
/// freed (and their log files deleted) once every query committed past them.
/// Each consumer's committed line in a write-ahead log, and the mark of a log written
/// before consumers had names.
type LogMarks = (HashMap<String, u64>, Option<u64>);

#[derive(Debug)]
struct Hub {
    name: String,
    addr: String,
    block_interval: Duration,
    wal_dir: Option<std::path::PathBuf>,
    max_line_bytes: usize,
    received: Arc<Mutex<Received>>,
    /// One cut at a time (see [`cut`]).
    cutting: Arc<tokio::sync::Mutex<()>>,
    /// Reading queries (open now, or known from their marks in the log): the first
    /// line each has not committed.
    committed: Mutex<HashMap<String, u64>>,
    /// The first query to open starts the receiver; the last to close stops it.
    open_consumers: tokio::sync::Mutex<usize>,
    /// Marks found in the log when it was opened (the queries that read before).
    marks: Mutex<Option<LogMarks>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The receivers of the process, by stream, address and log: queries over one stream
/// share one.
static HUBS: std::sync::LazyLock<Mutex<HashMap<String, std::sync::Weak<Hub>>>> =
    std::sync::LazyLock::new(Mutex::default);

impl Hub {
    fn shared(
        name: &str,
        addr: String,
        block_interval: Duration,
        wal_dir: Option<std::path::PathBuf>,
        max_line_bytes: usize,
    ) -> Arc<Hub> {
        let key = format!(
            "{name}|{addr}|{}",
            wal_dir
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        );
        let mut hubs = HUBS.lock();
        hubs.retain(|_, h| h.strong_count() > 0);
        if let Some(hub) = hubs.get(&key).and_then(std::sync::Weak::upgrade) {
            return hub;
        }
        let hub = Arc::new(Hub {
            name: name.to_string(),
            addr,
            block_interval,
            wal_dir,
            max_line_bytes,
            received: Arc::default(),
            cutting: Arc::default(),
            committed: Mutex::default(),
            open_consumers: tokio::sync::Mutex::new(0),
            marks: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        hubs.insert(key, Arc::downgrade(&hub));
        hub
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

    /// Opens the hub for `consumer` (the first opening replays the log and starts the
    /// receiver); returns the first line `consumer` has not committed.
    async fn open(&self, consumer: &str) -> Result<u64> {
        let mut open = self.open_consumers.lock().await;
        if *open == 0 {
            if let Some(dir) = self.wal_dir.clone() {
                let (wal, blocks, marks, legacy) =
                    tokio::task::spawn_blocking(move || Wal::open(&dir))
                        .await
                        .map_err(std::io::Error::other)
                        .and_then(|r| r)
                        .map_err(|e| self.wal_error(e))?;
                let mut r = self.received.lock();
                let committed = marks.values().copied().chain(legacy).min().unwrap_or(0);
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
                r.cut_until = committed;
                r.lines = committed;
                for b in blocks {
                    r.cut_until = r.cut_until.max(b.end());
                    r.lines = r.cut_until;
                    r.blocks.insert(b.first, Arc::new(b));
                }
                r.wal = Some(wal);
                self.committed.lock().extend(marks.clone());
                *self.marks.lock() = Some((marks, legacy));
            }
            let mut tasks = self.tasks.lock();
            tasks.push(tokio::spawn(receive(
                self.name.clone(),
                self.addr.clone(),
                self.max_line_bytes,
                Arc::clone(&self.received),
            )));
            let received = Arc::clone(&self.received);
            let cutting = Arc::clone(&self.cutting);
            let every = self.block_interval;
            let name = self.name.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if let Err(e) = cut(&received, &cutting).await {
                        log::error!("socket source {name}: write-ahead log: {e}; will retry");
                    }
                }
            }));
        }
        *open += 1;
        // Where this query starts: its own mark in the log, the mark from before
        // queries shared a receiver, or — a query new to the stream — the first line
        // the receiver still holds (queries started together see the same lines).
        let known = self.marks.lock().as_ref().and_then(|(marks, legacy)| {
            marks
                .get(&Wal::mark_name(consumer)["committed.".len()..])
                .copied()
                .or(*legacy)
        });
        let start = match known {
            Some(mark) => mark,
            None => {
                let r = self.received.lock();
                r.blocks.keys().next().copied().unwrap_or(r.cut_until)
            }
        };
        self.committed.lock().insert(consumer.to_string(), start);
        let wal = self.received.lock().wal.clone();
        if let Some(wal) = wal {
            // Held for this query from now on, even before its first commit.
            let consumer = consumer.to_string();
            tokio::task::spawn_blocking(move || wal.mark(&consumer, start))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(|e| self.wal_error(e))?;
        }
        Ok(start)
    }

    /// `consumer` committed the lines below `end`: blocks every query committed past
    /// are freed.
    async fn commit(&self, consumer: &str, end: u64) -> Result<()> {
        let lowest = {
            let mut committed = self.committed.lock();
            committed.insert(consumer.to_string(), end);
            committed.values().copied().min().unwrap_or(end)
        };
        let (dropped, wal) = {
            let mut r = self.received.lock();
            let dropped: Vec<u64> = r
                .blocks
                .values()
                .take_while(|b| b.end() <= lowest)
                .map(|b| b.first)
                .collect();
            for first in &dropped {
                r.blocks.remove(first);
            }
            (dropped, r.wal.clone())
        };
        if let Some(wal) = wal {
            let consumer = consumer.to_string();
            tokio::task::spawn_blocking(move || {
                wal.mark(&consumer, end)?;
                wal.drop_blocks(&dropped)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| self.wal_error(e))?;
        }
        Ok(())
    }

    /// One query stopped reading; the last stops the receiver.
    async fn close(&self) {
        let mut open = self.open_consumers.lock().await;
        *open = open.saturating_sub(1);
        if *open == 0 {
            for t in self.tasks.lock().drain(..) {
                t.abort();
            }
            // Reopened later (a restart): the log is read again.
            *self.received.lock() = Received::default();
            self.committed.lock().clear();
            *self.marks.lock() = None;
        }
    }
}

/// One query's reading of a socket stream: a cursor over the stream's shared
/// receiver ([`Hub`]).
#[derive(Debug)]
pub struct SocketSource {
    name: String,
    decoder: Decoder,
    hub: Arc<Hub>,
    /// The reading query (its sink's name): its position is kept under this name.
    consumer: String,
    /// Lines below this index are planned into this query's batches.
    planned: Mutex<u64>,
}

impl SocketSource {
    pub fn new(
        name: &str,
        addr: String,
        decoder: Decoder,
        block_interval: Duration,
        wal_dir: Option<std::path::PathBuf>,
        max_line_bytes: usize,
        consumer: String,
    ) -> Self {
        Self {
            name: name.to_string(),
            decoder,
            hub: Hub::shared(name, addr, block_interval, wal_dir, max_line_bytes),
            consumer,
            planned: Mutex::new(0),
        }
    }

    /// Lines the stream's receiver got since it started (a metric; tests wait on it).
    pub fn lines_received(&self) -> u64 {
        self.hub.received.lock().lines
    }

    /// Whether the receiver is connected now.
    pub fn is_connected(&self) -> bool {
        self.hub.received.lock().connected
    }
}

/// How much of a bad line is kept for its dead-letter record.
const PREVIEW_BYTES: usize = 1024;

/// One line being received: its bytes up to `max` (then only their count).
struct LineBuffer {
    bytes: Vec<u8>,
    /// Bytes received past `max` (the line is too long; only a preview is kept).
    over: Option<u64>,
    max: usize,
}

impl LineBuffer {
    fn push(&mut self, part: &[u8]) {
        if let Some(n) = &mut self.over {
            *n += part.len() as u64;
        } else if self.bytes.len() + part.len() > self.max {
            self.over = Some((self.bytes.len() + part.len()) as u64);
            let room = PREVIEW_BYTES.saturating_sub(self.bytes.len());
            self.bytes.extend_from_slice(&part[..room.min(part.len())]);
            self.bytes.truncate(PREVIEW_BYTES);
            self.bytes.shrink_to_fit();
        } else {
            self.bytes.extend_from_slice(part);
        }
    }

    /// The line received, or why it is not a record.
    fn take(&mut self) -> std::result::Result<String, (String, String)> {
        let over = self.over.take();
        let mut bytes = std::mem::take(&mut self.bytes);
        if over.is_none() && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if let Some(len) = over {
            return Err((
                format!(
                    "the line is {len} bytes, longer than max_line_bytes ({})",
                    self.max
                ),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
        String::from_utf8(bytes).map_err(|e| {
            let error = format!("not UTF-8: {}", e.utf8_error());
            let raw = e.into_bytes();
            (
                error,
                String::from_utf8_lossy(&raw[..raw.len().min(PREVIEW_BYTES)]).into_owned(),
            )
        })
    }
}

impl Received {
    fn push_line(&mut self, line: std::result::Result<String, (String, String)>) {
        let index = self.current.len() as u32;
        match line {
            Ok(l) => self.current.push(l),
            Err((error, preview)) => {
                self.current.push(String::new());
                self.current_bad.push(BadLine {
                    index,
                    error,
                    preview,
                });
            }
        }
        self.lines += 1;
    }
}

/// Reads lines from `addr` for ever, reconnecting with backoff. A line that is not
/// UTF-8 or longer than `max_line_bytes` is kept as a bad line (the connection and
/// the lines after it go on); memory per connection stays within `max_line_bytes`.
async fn receive(
    name: String,
    addr: String,
    max_line_bytes: usize,
    received: Arc<Mutex<Received>>,
) {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    let mut backoff = FIRST;
    loop {
        match TcpStream::connect(&addr).await {
            Ok(stream) => {
                log::info!("socket source {name}: connected to {addr}");
                received.lock().connected = true;
                backoff = FIRST;
                let mut reader = BufReader::with_capacity(64 * 1024, stream);
                let mut line = LineBuffer {
                    bytes: Vec::new(),
                    over: None,
                    max: max_line_bytes,
                };
                let why = loop {
                    let buf = match reader.fill_buf().await {
                        Ok(buf) => buf,
                        Err(e) => break e.to_string(),
                    };
                    if buf.is_empty() {
                        // A last line without a newline still counts.
                        if !line.bytes.is_empty() || line.over.is_some() {
                            received.lock().push_line(line.take());
                        }
                        break "the server closed the connection".to_string();
                    }
                    let n = buf.len();
                    let mut start = 0;
                    let mut ended = Vec::new();
                    for at in memchr::memchr_iter(b'\n', buf) {
                        line.push(&buf[start..at]);
                        ended.push(line.take());
                        start = at + 1;
                    }
                    line.push(&buf[start..]);
                    reader.consume(n);
                    if !ended.is_empty() {
                        let mut r = received.lock();
                        for l in ended {
                            r.push_line(l);
                        }
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

    fn describe(&self) -> String {
        // Positions count lines of the stream's write-ahead log, wherever its server
        // is: the address may change across restarts.
        format!("socket, {}", self.decoder.describe())
    }

    fn schema(&self) -> SchemaRef {
        self.decoder.schema().clone()
    }

    async fn open(&self, _projection: Option<&[usize]>) -> Result<()> {
        let start = self.hub.open(&self.consumer).await?;
        *self.planned.lock() = start;
        Ok(())
    }

    async fn plan_batch(&self, batch: &BatchContext) -> Result<SourceRange> {
        cut(&self.hub.received, &self.hub.cutting)
            .await
            .map_err(|e| self.hub.wal_error(e))?;
        let cut_until = self.hub.received.lock().cut_until;
        let mut planned = self.planned.lock();
        let start = *planned;
        let mut end = cut_until.max(start);
        if let Some(max) = batch.max_records {
            end = end.min(start + max);
        }
        *planned = end;
        Ok(SourceRange {
            start: json!(start),
            end: json!(end),
        })
    }

    async fn read_batch(&self, range: &SourceRange) -> Result<SourceBatch> {
        let (Some(start), Some(end)) = (range.start.as_u64(), range.end.as_u64()) else {
            return plan_err!("socket source {}: bad range {range:?}", self.name);
        };
        // The blocks are shared, not copied.
        let blocks: Vec<Arc<Block>> = {
            let r = self.hub.received.lock();
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
        // Line indexes of `lines` when some lines of the range are bad.
        let mut numbers: Option<Vec<u64>> = None;
        let mut held = 0u64;
        let mut rejected = Vec::new();
        for b in &blocks {
            let lo = start.saturating_sub(b.first) as usize;
            let hi = (end.min(b.end()) - b.first) as usize;
            held += (hi - lo) as u64;
            let bad: Vec<&BadLine> = b
                .bad
                .iter()
                .filter(|l| (lo..hi).contains(&(l.index as usize)))
                .collect();
            if bad.is_empty() && numbers.is_none() {
                lines.extend(b.lines[lo..hi].iter().map(String::as_str));
                continue;
            }
            let numbers = numbers
                .get_or_insert_with(|| (start..start + lines.len() as u64).collect::<Vec<u64>>());
            for (i, line) in b.lines.iter().enumerate().take(hi).skip(lo) {
                let at = b.first + i as u64;
                if let Some(badline) = bad.iter().find(|l| l.index as usize == i) {
                    self.decoder.reject_raw(
                        &format!("{} line {}", self.hub.addr, at + 1),
                        &badline.preview,
                        badline.error.clone(),
                        &mut rejected,
                    )?;
                } else {
                    lines.push(line);
                    numbers.push(at);
                }
            }
        }
        if held != end - start {
            return Err(flumen_engine::Error::Source {
                source_name: self.name.clone(),
                message: format!(
                    "lines {}..{} of {} are no longer held (received {} of them)",
                    start + 1,
                    end + 1,
                    self.hub.addr,
                    held
                ),
                retryable: false,
            });
        }
        let (batch, mut bad) = self.decoder.decode(&lines, |i| {
            let at = numbers.as_ref().map_or(start + i as u64, |n| n[i]);
            format!("{} line {}", self.hub.addr, at + 1)
        })?;
        rejected.append(&mut bad);
        Ok(SourceBatch {
            partitions: vec![vec![batch]],
            rejected,
        })
    }

    async fn restore(&self, last: &SourceRange) -> Result<()> {
        if self.hub.wal_dir.is_none() {
            return plan_err!(
                "stream {}: a socket source keeps received lines only in memory, so a query cannot resume from a checkpoint; \
                 set wal = 'true' or delete the checkpoint",
                self.name
            );
        }
        let Some(end) = last.end.as_u64() else {
            return plan_err!("socket source {}: bad range {last:?}", self.name);
        };
        let mut planned = self.planned.lock();
        *planned = (*planned).max(end);
        Ok(())
    }

    async fn commit(&self, range: &SourceRange) -> Result<()> {
        if let Some(end) = range.end.as_u64() {
            self.hub.commit(&self.consumer, end).await?;
        }
        Ok(())
    }

    fn record_limit(&self) -> RecordLimit {
        RecordLimit::Honoured
    }

    async fn is_drained(&self) -> Result<bool> {
        let r = self.hub.received.lock();
        Ok(r.current.is_empty() && *self.planned.lock() >= r.cut_until)
    }

    async fn close(&self) -> Result<()> {
        self.hub.close().await;
        Ok(())
    }

    fn sets_aside_bad_rows(&self) -> bool {
        self.decoder.on_error() != OnError::Fail
    }
}

/// `connector = 'socket'`.
#[derive(Debug)]
pub struct SocketFactory;

const SOCKET_OPTIONS: [&str; 10] = [
    "host",
    "port",
    "block_interval",
    "wal",
    "wal_dir",
    "max_line_bytes",
    "format",
    "on_error",
    "strict",
    "consumer",
];

/// The longest line a socket source takes by default (16 MiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;

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
        let max_line_bytes = match options.get("max_line_bytes") {
            Some(v) => match parse_bytes(v) {
                Some(n) if n > 0 => n,
                _ => {
                    return plan_err!(
                        "stream {name}: max_line_bytes '{v}' is not a size; give bytes, e.g. '1048576' or '16 MiB'"
                    );
                }
            },
            None => DEFAULT_MAX_LINE_BYTES,
        };
        let decoder = Decoder::from_options(name, schema, options)?;
        // The reading query: its position in a shared receiver is kept under this
        // name (the SQL layer gives the query's sink; one reader by default).
        let consumer = options
            .get("consumer")
            .cloned()
            .unwrap_or_else(|| "default".into());
        Ok(Arc::new(SocketSource::new(
            name,
            format!("{host}:{port}"),
            decoder,
            block_interval,
            wal_dir,
            max_line_bytes,
            consumer,
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

/// A size in bytes: `1048576`, `64 KiB`, `16 MiB`, `1 GiB` (also KB/MB/GB as powers
/// of 1024, and a bare K/M/G).
fn parse_bytes(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().ok()?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("16 MiB"), Some(16 << 20));
        assert_eq!(parse_bytes("64kb"), Some(64 << 10));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5 parsecs"), None);
    }

    #[test]
    fn a_long_line_keeps_only_a_preview_and_a_bad_line_its_place() {
        let mut r = Received::default();
        let mut line = LineBuffer {
            bytes: Vec::new(),
            over: None,
            max: 10,
        };
        line.push(b"0123456789");
        line.push(b"abc");
        assert!(line.bytes.len() <= PREVIEW_BYTES);
        r.push_line(line.take());
        line.push(b"ok\r");
        r.push_line(line.take());
        line.push(&[0xff, 0xfe]);
        r.push_line(line.take());
        assert_eq!(r.current, vec!["", "ok", ""]);
        assert_eq!(r.lines, 3);
        let errors: Vec<(u32, &str)> = r
            .current_bad
            .iter()
            .map(|b| (b.index, b.error.as_str()))
            .collect();
        assert_eq!(
            errors[0],
            (0, "the line is 13 bytes, longer than max_line_bytes (10)")
        );
        assert_eq!(errors[1].0, 2);
        assert!(errors[1].1.starts_with("not UTF-8"), "{errors:?}");
    }
}
