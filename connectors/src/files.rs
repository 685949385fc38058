//! The `files` source (Spark's `textFileStream` / `fileStream`): a directory on a local
//! disk or an object store is listed every batch, and the files that appeared since are
//! read whole.
//!
//! ```text
//!  open:       list ─▶ files already there are `known` (unless include_existing)
//!  plan_batch: list ─▶ new = not known, not hidden (. or _), directly in the folder
//!              ─▶ oldest first by modification time, at most max_files_per_batch
//!              ─▶ range = those paths (and sizes); they become known for ever
//!  read_batch: each file whole ─▶ text | csv | json (per line, on_error) |
//!              parquet | arrow (columns by name, cast to the declared types)
//! ```
//!
//! Spark's rules hold: a file taken once is never read again, even if it changes;
//! a file should be moved into the folder by an atomic rename once complete (a file
//! still being written when a batch lists it is read as it is then). Listing, not
//! modification time, decides what is new, so a renamed-in file with an old time is
//! still seen.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, new_null_array};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use flumen_engine::checkpoint::SourceStore;
use flumen_engine::cluster::scan::ClusterScan;
use flumen_engine::registry::{ConnectorOptions, SourceFactory, bool_option, positive_option};
use flumen_engine::source::{RecordLimit, SourceBatch};
use flumen_engine::{BatchContext, Error, Rejected, Result, Source, SourceRange, plan_err};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::format::{Decoder, Format, OnError, text_schema};
use crate::store::{self, Location, STORE_OPTIONS};

/// How the files' bytes become rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    /// Lines, decoded by the shared text/csv/json decoder.
    Lines {
        header: bool,
    },
    Parquet,
    Arrow,
}

#[derive(Debug, Default)]
struct Listing {
    /// Files taken by a batch, or there before the query first started and left alone.
    known: HashSet<Path>,
    /// Files taken since the seen-files log last recorded them.
    unlogged: Vec<String>,
    /// Under `AvailableNow`: the files there when the query started.
    frozen: Option<HashSet<Path>>,
    /// The files the next batch is expected to take (the backlog the last batch left).
    next: Vec<String>,
    /// Files the last batch left waiting.
    lag: u64,
}

/// Entries of the seen-files log: `existing` (the files there when the query first
/// started, left alone unless `include_existing`), one per commit naming the files
/// taken since the last (`<batch id>`), folded every [`LOG_COMPACT_EVERY`] into
/// `compact-<batch id>`.
const LOG_EXISTING: &str = "existing";
const LOG_COMPACT_EVERY: usize = 10;

#[derive(Debug)]
pub struct FilesSource {
    name: String,
    location: Location,
    reader: Arc<FileLoader>,
    /// The stream's options: what an executor reading its files needs.
    options: ConnectorOptions,
    /// The columns the query reads (`open`), when not all.
    projection: Mutex<Option<Vec<usize>>>,
    include_existing: bool,
    max_files: Option<u64>,
    listing: Mutex<Listing>,
    /// With a checkpoint: the seen-files log (Spark's source log), which remembers
    /// every file taken across restarts.
    seen_log: Mutex<Option<SourceStore>>,
    /// The commit log of a Flumen `files` sink writing here, as read so far.
    commit_log: tokio::sync::Mutex<crate::files_sink::CommitLog>,
    /// Read-ahead: files the next batch will take (those left over when a batch took
    /// `max_files_per_batch` of a longer backlog), read and decoded while the current
    /// batch's query runs. Keyed by path; a batch that takes another file reads it itself.
    ahead: Mutex<HashMap<String, JoinHandle<Result<FileRows>>>>,
}

impl FileLoader {
    /// What reading stream `name`'s files (rows of `schema`) needs, from its options.
    fn from_options(name: &str, schema: SchemaRef, options: &ConnectorOptions) -> Result<Self> {
        let Some(path) = options.get("path") else {
            return plan_err!(
                "stream {name}: connector 'files' needs path = '<directory or s3:// / memory:// URL>'"
            );
        };
        let fmt = options
            .get("format")
            .map(|f| f.to_ascii_lowercase())
            .unwrap_or_else(|| "text".into());
        let header = bool_option("files", options, "header", false)?;
        let mut line_options = options.clone();
        let format = match fmt.as_str() {
            "parquet" | "arrow" => {
                line_options.remove("format");
                if fmt == "parquet" {
                    FileFormat::Parquet
                } else {
                    FileFormat::Arrow
                }
            }
            "text" | "csv" | "json" => FileFormat::Lines { header },
            other => {
                return plan_err!(
                    "stream {name}: unknown format '{other}' for connector 'files'; accepted: text, csv, json, parquet, arrow"
                );
            }
        };
        if header && fmt != "csv" {
            return plan_err!("stream {name}: header = 'true' applies to format = 'csv' only");
        }
        let decoder = if matches!(format, FileFormat::Lines { .. }) {
            Decoder::from_options(name, Arc::clone(&schema), &line_options)?
        } else {
            // Only the on_error policy is used for whole binary files.
            let mut o = ConnectorOptions::new();
            if let Some(e) = options.get("on_error") {
                o.insert("on_error".into(), e.clone());
            }
            o.insert("format".into(), "json".into());
            Decoder::from_options(name, Arc::clone(&schema), &o)?
        };
        let location = store::open(&format!("stream {name}"), path, options)?;
        Ok(FileLoader {
            name: name.to_string(),
            location,
            schema,
            format,
            decoder,
        })
    }
}

/// A part of a files scan (`cluster_scan`), read on an executor: some of a batch's
/// files, with what reading them needs (the stream's name and options, the columns
/// the query reads).
pub(crate) fn read_part(part: &serde_json::Value, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let bad = || flumen_engine::Error::Internal(format!("a files scan's bad part: {part}"));
    let (name, options) = crate::named_options(part, "a files scan")?;
    let loader = FileLoader::from_options(&name, Arc::clone(schema), &options)?;
    if let Some(columns) = part.get("projection").and_then(|p| p.as_array()) {
        let columns: Vec<usize> = columns
            .iter()
            .filter_map(|c| c.as_u64().map(|c| c as usize))
            .collect();
        loader.decoder.project(&columns);
    }
    let paths = part
        .get("paths")
        .and_then(|p| p.as_array())
        .ok_or_else(bad)?;
    tokio::runtime::Handle::current().block_on(async {
        let mut out = Vec::new();
        let mut rejected = Vec::new();
        for p in paths {
            let path = p.as_str().ok_or_else(bad)?;
            out.extend(
                loader
                    .read_file(path, &mut rejected)
                    .await?
                    .into_iter()
                    .filter(|b| b.num_rows() > 0),
            );
        }
        if let Some(r) = rejected.first() {
            // Scans reach executors only under on_error = 'fail'.
            return Err(loader.error(format!("{}: {}", r.position, r.error)));
        }
        Ok(out)
    })
}

/// A file's rows and the records it rejected.
type FileRows = (Vec<RecordBatch>, Vec<Rejected>);

/// What reading one file needs, shared with the read-ahead tasks.
#[derive(Debug)]
struct FileLoader {
    name: String,
    location: Location,
    schema: SchemaRef,
    format: FileFormat,
    decoder: Decoder,
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

impl FilesSource {
    fn error(&self, message: String) -> Error {
        self.reader.error(message)
    }

    /// The readable files directly in the folder, oldest first.
    async fn list(&self) -> Result<Vec<ObjectMeta>> {
        // Only the folder's own files: sub-folders are not read (as Spark).
        let listed = self
            .location
            .store
            .list_with_delimiter(Some(&self.location.prefix))
            .await
            .map_err(|e| self.error(format!("listing {}: {e}", self.location.url)))?;
        let mut files: Vec<ObjectMeta> = listed
            .objects
            .into_iter()
            .filter(|m| !m.location.filename().is_none_or(is_hidden))
            .collect();
        // Output of Flumen's files sink: only what its commit log lists.
        let log = self.location.child(crate::files_sink::LOG_DIR);
        if listed.common_prefixes.contains(&log) {
            let mut commit_log = self.commit_log.lock().await;
            commit_log.refresh(&self.location).await?;
            files.retain(|m| {
                m.location
                    .filename()
                    .is_some_and(|f| commit_log.files.contains(f))
            });
        }
        files.sort_by(|a, b| (a.last_modified, &a.location).cmp(&(b.last_modified, &b.location)));
        Ok(files)
    }

    /// Starts reading the files the next batch is expected to take; drops read-aheads
    /// that are no longer expected.
    fn read_ahead(&self) {
        let next = self.listing.lock().next.clone();
        let mut ahead = self.ahead.lock();
        ahead.retain(|path, task| {
            let keep = next.contains(path);
            if !keep {
                task.abort();
            }
            keep
        });
        for path in next {
            if let std::collections::hash_map::Entry::Vacant(e) = ahead.entry(path) {
                let task = self.reader.spawn_read(e.key().clone());
                e.insert(task);
            }
        }
    }

    /// The files not taken yet (within the frozen set under `AvailableNow`).
    async fn new_files(&self) -> Result<Vec<ObjectMeta>> {
        let files = self.list().await?;
        let l = self.listing.lock();
        Ok(files
            .into_iter()
            .filter(|m| !l.known.contains(&m.location))
            .filter(|m| l.frozen.as_ref().is_none_or(|f| f.contains(&m.location)))
            .collect())
    }
}

impl FileLoader {
    fn error(&self, message: String) -> Error {
        Error::Source {
            source_name: self.name.clone(),
            message,
            retryable: false,
        }
    }

    /// Reads a file on a task of its own (the read-ahead).
    fn spawn_read(self: &Arc<Self>, path: String) -> JoinHandle<Result<FileRows>> {
        let reader = Arc::clone(self);
        tokio::spawn(async move {
            let mut rejected = Vec::new();
            let batches = reader.read_file(&path, &mut rejected).await?;
            Ok((batches, rejected))
        })
    }

    fn display(&self, path: &str) -> String {
        self.location
            .url_of(path.rsplit('/').next().unwrap_or(path))
    }

    async fn read_file(
        &self,
        path: &str,
        rejected: &mut Vec<Rejected>,
    ) -> Result<Vec<RecordBatch>> {
        let shown = self.display(path);
        let location = Path::parse(path).map_err(|e| self.error(format!("{shown}: {e}")))?;
        let got = match self.location.store.get(&location).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match got {
            Ok(bytes) => bytes,
            // Taken by a batch, then deleted or moved before that batch read it (a
            // replay after a restart): a bad record, as on_error says.
            Err(object_store::Error::NotFound { .. }) => {
                self.reject(
                    shown,
                    String::new(),
                    "the file is gone: it was deleted or moved after a batch took it, before \
                     it was read"
                        .into(),
                    rejected,
                )?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.error(format!("reading {shown}: {e}"))),
        };
        match self.format {
            FileFormat::Lines { header } => {
                let mut bad = Vec::new();
                let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
                if !bytes.is_empty()
                    && let Some(batches) = self
                        .decode_in_parts(&bytes, body.len(), header, &shown)
                        .await?
                {
                    return Ok(batches);
                }
                let skip_blank = self.decoder.format() != Format::Text;
                fn keep<'a>(
                    kept: &mut (Vec<&'a str>, Vec<usize>),
                    skip: impl Fn(usize, &str) -> bool,
                    i: usize,
                    line: &'a str,
                ) {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if !skip(i, line) {
                        kept.0.push(line);
                        kept.1.push(i + 1);
                    }
                }
                let skip =
                    |i: usize, line: &str| (header && i == 0) || (skip_blank && line.is_empty());
                let mut kept = (Vec::new(), Vec::new());
                if !bytes.is_empty() {
                    match std::str::from_utf8(body) {
                        // The whole file at once (the common case), then its lines.
                        Ok(text) => text
                            .split('\n')
                            .enumerate()
                            .for_each(|(i, l)| keep(&mut kept, skip, i, l)),
                        Err(_) => {
                            for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
                                match std::str::from_utf8(raw) {
                                    Ok(line) => keep(&mut kept, skip, i, line),
                                    Err(e) => bad.push((i + 1, raw, e)),
                                }
                            }
                        }
                    }
                }
                let (lines, numbers) = kept;
                for (line, raw, e) in bad {
                    self.reject(
                        format!("{shown} line {line}"),
                        String::from_utf8_lossy(raw).into_owned(),
                        format!("not UTF-8: {e}"),
                        rejected,
                    )?;
                }
                // Large files are decoded in slices on every core (in order), on the
                // runtime's blocking threads (long-lived: their allocator caches stay
                // warm from batch to batch); the first error, in line order, wins.
                let parts = if lines.len() >= PARALLEL_DECODE_LINES {
                    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
                } else {
                    1
                };
                let decoded: Vec<Result<(RecordBatch, Vec<Rejected>)>> =
                    if parts == 1 {
                        vec![
                            self.decoder
                                .decode(&lines, |i| format!("{shown} line {}", numbers[i])),
                        ]
                    } else {
                        // Each slice as (start, len) byte ranges into the shared file.
                        let base = bytes.as_ptr() as usize;
                        let ranges: Vec<(usize, usize)> = lines
                            .iter()
                            .map(|l| (l.as_ptr() as usize - base, l.len()))
                            .collect();
                        let chunk = lines.len().div_ceil(parts);
                        let mut tasks = Vec::with_capacity(parts);
                        for (rs, ns) in ranges.chunks(chunk).zip(numbers.chunks(chunk)) {
                            let (rs, ns) = (rs.to_vec(), ns.to_vec());
                            let (bytes, decoder, shown) =
                                (bytes.clone(), self.decoder.clone(), shown.clone());
                            tasks.push(tokio::task::spawn_blocking(move || {
                                let lines: Vec<&str> = rs
                                    .iter()
                                    .map(|(start, len)| {
                                        // Checked as UTF-8 above; sliced at the same places.
                                        std::str::from_utf8(&bytes[*start..start + len])
                                            .unwrap_or_default()
                                    })
                                    .collect();
                                decoder.decode(&lines, |i| format!("{shown} line {}", ns[i]))
                            }));
                        }
                        let mut results = Vec::with_capacity(tasks.len());
                        for t in tasks {
                            results.push(t.await.unwrap_or_else(|e| {
                                Err(self.error(format!("decoding {shown}: {e}")))
                            }));
                        }
                        results
                    };
                let mut out = Vec::with_capacity(decoded.len());
                for d in decoded {
                    let (batch, mut bad) = d?;
                    rejected.append(&mut bad);
                    out.push(batch);
                }
                Ok(out)
            }
            FileFormat::Parquet | FileFormat::Arrow => {
                let size = bytes.len();
                let read = if self.format == FileFormat::Parquet {
                    read_parquet(bytes)
                } else {
                    read_arrow(bytes)
                };
                match read.and_then(|batches| self.conform(&batches, &shown, rejected)) {
                    Ok(batch) => Ok(vec![batch]),
                    Err(e) if e.kind() == "plan" => {
                        self.reject(shown, format!("<{size} bytes>"), e.to_string(), rejected)?;
                        Ok(Vec::new())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// A text, CSV or JSON-lines file decoded straight from its bytes
    /// (`Decoder::decode_part`):
    /// each part of a large file on a blocking thread of its own. `body` is the file
    /// without its last newline. `None` when some part does not decode cleanly (not
    /// UTF-8, a bad record, a shape the fast path leaves alone): the caller then goes
    /// line by line, finding and naming the bad lines.
    async fn decode_in_parts(
        &self,
        bytes: &bytes::Bytes,
        body: usize,
        header: bool,
        shown: &str,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let parts = if body >= PARALLEL_DECODE_BYTES {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
        } else {
            1
        };
        // Cut at the first newline after each even share of the bytes.
        let mut cuts = vec![0];
        for k in 1..parts {
            let from = (body * k / parts).max(*cuts.last().unwrap_or(&0));
            match memchr::memchr(b'\n', &bytes[from..body]) {
                Some(at) => cuts.push(from + at + 1),
                None => break,
            }
        }
        cuts.push(body + 1);
        let mut tasks = Vec::with_capacity(cuts.len() - 1);
        for (i, w) in cuts.windows(2).enumerate() {
            let (bytes, decoder) = (bytes.clone(), self.decoder.clone());
            let (start, end) = (w[0], w[1] - 1);
            let skip_first = header && i == 0;
            tasks.push(tokio::task::spawn_blocking(move || {
                decoder.decode_part(&bytes[start..end], skip_first)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Some(mut batches)) => out.append(&mut batches),
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.error(format!("decoding {shown}: {e}"))),
            }
        }
        Ok(Some(out))
    }

    fn reject(
        &self,
        position: String,
        record: String,
        error: String,
        out: &mut Vec<Rejected>,
    ) -> Result<()> {
        if self.decoder.on_error() == OnError::Fail {
            return Err(self.error(format!(
                "bad input at {position}: {error}; set on_error = 'skip' or 'dead_letter' to go on past bad input"
            )));
        }
        out.push(Rejected {
            position,
            record,
            error,
        });
        Ok(())
    }

    /// A file's batches as the declared schema: columns by name, converted exactly
    /// where the types differ (a value that does not fit makes its row a bad record,
    /// named by its row number), a missing nullable column all nulls. A file whose
    /// columns cannot be the declared ones at all is an `Error::Plan`: the whole file
    /// is a bad record.
    fn conform(
        &self,
        batches: &[RecordBatch],
        shown: &str,
        rejected: &mut Vec<Rejected>,
    ) -> Result<RecordBatch> {
        let mut out = Vec::with_capacity(batches.len());
        let mut row0 = 0usize;
        for b in batches {
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
            // Rows with a value that does not fit, and why.
            let mut bad: std::collections::BTreeMap<usize, String> = Default::default();
            for f in self.schema.fields() {
                let col = match b.column_by_name(f.name()) {
                    Some(c) if c.data_type() == f.data_type() => Arc::clone(c),
                    Some(c) => match crate::exact::cast_exact(c, f.data_type()) {
                        Ok(c) => c,
                        Err(e)
                            if e.rows.len() == c.len() - c.null_count() && !e.rows.is_empty() =>
                        {
                            return plan_err!(
                                "column {} is {} in the file, declared {}: {}",
                                f.name(),
                                c.data_type(),
                                f.data_type(),
                                e.message
                            );
                        }
                        Err(e) => {
                            for r in &e.rows {
                                bad.entry(*r).or_insert_with(|| {
                                    format!(
                                        "column {} ({} in the file): {}",
                                        f.name(),
                                        c.data_type(),
                                        row_message(c, *r, f.data_type())
                                    )
                                });
                            }
                            // Those rows are dropped below; the rest convert.
                            let keep: datafusion::arrow::array::BooleanArray =
                                (0..c.len()).map(|i| Some(!e.rows.contains(&i))).collect();
                            let masked = datafusion::arrow::compute::nullif(
                                c,
                                &datafusion::arrow::compute::not(&keep)?,
                            )?;
                            cast(&masked, f.data_type())?
                        }
                    },
                    None if f.is_nullable() => new_null_array(f.data_type(), b.num_rows()),
                    None => {
                        return plan_err!(
                            "the file has no column {} (declared NOT NULL); it has: {}",
                            f.name(),
                            b.schema()
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                };
                if !f.is_nullable() {
                    for i in 0..col.len() {
                        if col.is_null(i) {
                            bad.entry(i).or_insert_with(|| {
                                format!("column {} is NOT NULL but has no value", f.name())
                            });
                        }
                    }
                }
                cols.push(col);
            }
            // Built with every column nullable: rows breaking NOT NULL are among the
            // bad ones, and the declared schema checks the rest once they are gone.
            let nullable = Arc::new(datafusion::arrow::datatypes::Schema::new(
                self.schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            ));
            let mut batch = RecordBatch::try_new(nullable, cols)?;
            if !bad.is_empty() {
                for (r, error) in &bad {
                    self.reject(
                        format!("{shown} row {}", row0 + r + 1),
                        render_row(b, *r),
                        error.clone(),
                        rejected,
                    )?;
                }
                let keep: datafusion::arrow::array::BooleanArray = (0..b.num_rows())
                    .map(|i| Some(!bad.contains_key(&i)))
                    .collect();
                batch = datafusion::arrow::compute::filter_record_batch(&batch, &keep)?;
            }
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), batch.columns().to_vec())?;
            row0 += b.num_rows();
            out.push(batch);
        }
        Ok(concat_batches(&self.schema, &out)?)
    }
}

/// Why row `r` of `column` does not convert to `to`.
fn row_message(column: &ArrayRef, r: usize, to: &datafusion::arrow::datatypes::DataType) -> String {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let shown = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
        .map(|f| f.value(r).to_string())
        .unwrap_or_default();
    format!("{shown} is not a {to} value (it does not convert exactly)")
}

/// Row `r` of a file's batch, `name=value, ...`, for a dead-letter record.
fn render_row(batch: &RecordBatch, r: usize) -> String {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("NULL");
    batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let v = ArrayFormatter::try_new(c.as_ref(), &options)
                .map(|fmt| fmt.value(r).to_string())
                .unwrap_or_default();
            format!("{}={v}", f.name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_parquet(bytes: bytes::Bytes) -> Result<Vec<RecordBatch>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| Error::Plan(format!("not a Parquet file: {e}")))?
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| Error::Plan(e.to_string()))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Plan(e.to_string()))
}

fn read_arrow(bytes: bytes::Bytes) -> Result<Vec<RecordBatch>> {
    use datafusion::arrow::ipc::reader::{FileReader, StreamReader};
    let file = FileReader::try_new(std::io::Cursor::new(bytes.clone()), None);
    match file {
        Ok(r) => r
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Plan(e.to_string())),
        Err(_) => StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::Plan(format!("not an Arrow IPC file or stream: {e}")))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Plan(e.to_string())),
    }
}

#[async_trait]
impl Source for FilesSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        let format = match self.reader.format {
            FileFormat::Lines { header } => {
                format!(
                    "{}{}",
                    self.reader.decoder.describe(),
                    if header { " with header" } else { "" }
                )
            }
            FileFormat::Parquet => "format parquet".into(),
            FileFormat::Arrow => "format arrow".into(),
        };
        format!("files {}, {format}", self.location.url)
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.reader.schema)
    }

    fn use_checkpoint(&self, store: SourceStore) {
        *self.seen_log.lock() = Some(store);
    }

    async fn open(&self, projection: Option<&[usize]>) -> Result<()> {
        if let Some(columns) = projection {
            self.reader.decoder.project(columns);
            *self.projection.lock() = Some(columns.to_vec());
        }
        let Some(log) = self.seen_log.lock().clone() else {
            // No checkpoint: every start is a first start.
            if !self.include_existing {
                let existing = self.list().await?;
                self.listing
                    .lock()
                    .known
                    .extend(existing.into_iter().map(|m| m.location));
            }
            return Ok(());
        };
        let names = log.names().await?;
        if names.is_empty() {
            // The query's first start: what is "existing" is decided once, here.
            let existing: Vec<String> = if self.include_existing {
                Vec::new()
            } else {
                self.list()
                    .await?
                    .into_iter()
                    .map(|m| m.location.to_string())
                    .collect()
            };
            log.write(LOG_EXISTING, &json!({ "files": existing }))
                .await?;
            self.listing
                .lock()
                .known
                .extend(existing.iter().map(|p| Path::from(p.as_str())));
            return Ok(());
        }
        // A restart: every file the log names was taken (or left alone) before.
        let mut known = HashSet::new();
        for name in names {
            let Some(entry) = log.read(&name).await? else {
                continue;
            };
            let Some(files) = entry["files"].as_array() else {
                return Err(self.error(format!(
                    "{} is not a seen-files log entry; restore it or delete the checkpoint",
                    log.display(&name)
                )));
            };
            known.extend(files.iter().filter_map(|f| f.as_str()).map(Path::from));
        }
        self.listing.lock().known.extend(known);
        Ok(())
    }

    async fn freeze_available_now(&self) -> Result<()> {
        let files = self.new_files().await?;
        self.listing.lock().frozen = Some(files.into_iter().map(|m| m.location).collect());
        Ok(())
    }

    async fn plan_batch(&self, batch: &BatchContext) -> Result<SourceRange> {
        let mut files = self.new_files().await?;
        let waiting = files.len();
        let mut next = Vec::new();
        if let Some(max) = self.max_files {
            let max = max as usize;
            next = files
                .iter()
                .skip(max)
                .take(max)
                .map(|m| m.location.to_string())
                .collect();
            files.truncate(max);
        }
        let mut l = self.listing.lock();
        l.next = next;
        l.lag = (waiting - files.len()) as u64;
        let before = l.known.len();
        // Files earlier batches took that the seen-files log does not hold yet (a
        // restart between a batch's commit and its log entry) ride along in this
        // batch's offsets, so that whichever batch is last committed, restore finds them.
        let carried = l.unlogged.clone();
        l.known.extend(files.iter().map(|m| m.location.clone()));
        l.unlogged
            .extend(files.iter().map(|m| m.location.to_string()));
        if files.is_empty() && carried.is_empty() {
            return Ok(SourceRange {
                start: json!(before),
                end: json!(before),
            });
        }
        let list: Vec<serde_json::Value> = files
            .iter()
            .map(|m| json!({"path": m.location.as_ref(), "size": m.size}))
            .collect();
        let mut end = json!({"known": l.known.len(), "files": list, "batch": batch.batch_id});
        if !carried.is_empty() {
            end["carried"] = json!(carried);
        }
        Ok(SourceRange {
            start: json!(before),
            end,
        })
    }

    async fn restore(&self, last: &SourceRange) -> Result<()> {
        // Which files were taken comes from the seen-files log (read by open), the
        // batches recovery ran again (read_batch) and the last batch: committed, but
        // perhaps killed before its files reached the log — so they go in at the
        // next commit, or a later restart would take them again.
        let mut l = self.listing.lock();
        let carried = last.end.get("carried").and_then(|c| c.as_array());
        let carried = carried.into_iter().flatten().filter_map(|p| p.as_str());
        for path in range_files(last).chain(carried) {
            if l.known.insert(Path::from(path)) {
                l.unlogged.push(path.to_string());
            }
        }
        Ok(())
    }

    /// The files taken since the last commit go into the seen-files log: everything
    /// planned so far is covered by the checkpoint's commit and snapshot.
    async fn commit(&self, range: &SourceRange) -> Result<()> {
        let Some(log) = self.seen_log.lock().clone() else {
            return Ok(());
        };
        let taken = std::mem::take(&mut self.listing.lock().unlogged);
        if taken.is_empty() {
            return Ok(());
        }
        let Some(batch) = range.end.get("batch").and_then(|b| b.as_u64()) else {
            // Cannot happen: a range with files to log names its batch.
            return Err(
                self.error("a batch with files to log has no batch id in its offsets".into())
            );
        };
        let name = format!("{batch:020}");
        if let Err(e) = log.write(&name, &json!({ "files": taken })).await {
            // Written again at the next commit.
            let mut l = self.listing.lock();
            let later = std::mem::take(&mut l.unlogged);
            l.unlogged = taken;
            l.unlogged.extend(later);
            return Err(e);
        }
        // Fold the log once it has grown: one entry with every file known.
        let names = log.names().await?;
        if names.len() > LOG_COMPACT_EVERY {
            let all: Vec<String> = self
                .listing
                .lock()
                .known
                .iter()
                .map(|p| p.to_string())
                .collect();
            let compact = format!("compact-{batch:020}");
            log.write(&compact, &json!({ "files": all })).await?;
            for old in names.iter().filter(|n| **n != compact) {
                log.delete(old).await;
            }
        }
        Ok(())
    }

    fn cluster_scan(&self, range: &SourceRange, partitions: usize) -> Result<Option<ClusterScan>> {
        // Bad records set aside go to the driver's dead letter: such a stream is read here.
        if self.sets_aside_bad_rows() {
            return Ok(None);
        }
        let paths: Vec<&str> = range_files(range).collect();
        {
            let mut l = self.listing.lock();
            for path in &paths {
                if l.known.insert(Path::from(*path)) {
                    l.unlogged.push(path.to_string());
                }
            }
        }
        let per = paths.len().div_ceil(partitions.max(1)).max(1);
        let projection = self.projection.lock().clone();
        let mut parts: Vec<serde_json::Value> = paths
            .chunks(per)
            .map(|chunk| {
                serde_json::json!({
                    "name": self.name,
                    "options": self.options,
                    "projection": projection,
                    "paths": chunk,
                })
            })
            .collect();
        if parts.is_empty() {
            parts
                .push(serde_json::json!({"name": self.name, "options": self.options, "paths": []}));
        }
        Ok(Some(ClusterScan {
            kind: "files".into(),
            parts,
            rows: None,
            ..Default::default()
        }))
    }

    async fn read_batch(&self, range: &SourceRange) -> Result<SourceBatch> {
        let files = range
            .end
            .get("files")
            .and_then(|f| f.as_array())
            .cloned()
            .unwrap_or_default();
        {
            // A batch run again after a restart took these files before.
            let mut l = self.listing.lock();
            for path in range_files(range) {
                if l.known.insert(Path::from(path)) {
                    l.unlogged.push(path.to_string());
                }
            }
        }
        let mut rejected = Vec::new();
        let mut batches = Vec::with_capacity(files.len());
        for f in &files {
            let Some(path) = f.get("path").and_then(|p| p.as_str()) else {
                return plan_err!("files source {}: bad range {range:?}", self.name);
            };
            let read_ahead = self.ahead.lock().remove(path);
            let read = match read_ahead {
                Some(task) => {
                    let (read, mut bad) = task.await.map_err(|e| {
                        self.error(format!("reading {}: {e}", self.reader.display(path)))
                    })??;
                    rejected.append(&mut bad);
                    read
                }
                None => self.reader.read_file(path, &mut rejected).await?,
            };
            batches.extend(read.into_iter().filter(|b| b.num_rows() > 0));
        }
        self.read_ahead();
        Ok(SourceBatch {
            partitions: vec![batches],
            rejected,
        })
    }

    fn record_limit(&self) -> RecordLimit {
        RecordLimit::Unsupported {
            hint: "; a batch takes whole files: use max_files_per_batch".into(),
        }
    }

    fn lag(&self) -> Option<u64> {
        Some(self.listing.lock().lag)
    }

    async fn close(&self) -> Result<()> {
        for (_, task) in self.ahead.lock().drain() {
            task.abort();
        }
        Ok(())
    }

    async fn is_drained(&self) -> Result<bool> {
        Ok(self.new_files().await?.is_empty())
    }

    fn sets_aside_bad_rows(&self) -> bool {
        self.reader.decoder.on_error() != OnError::Fail
    }
}

/// The paths a range took.
fn range_files(range: &SourceRange) -> impl Iterator<Item = &str> {
    range
        .end
        .get("files")
        .and_then(|f| f.as_array())
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("path").and_then(|p| p.as_str()))
}

/// Files with at least this many lines are decoded on several threads.
const PARALLEL_DECODE_LINES: usize = 65_536;
/// Text, CSV and JSON files of at least this many bytes are decoded on several threads.
const PARALLEL_DECODE_BYTES: usize = 4 << 20;

/// `connector = 'files'`.
#[derive(Debug)]
pub struct FilesFactory;

const FILES_OPTIONS: [&str; 11] = [
    "path",
    "format",
    "on_error",
    "strict",
    "header",
    "include_existing",
    "max_files_per_batch",
    STORE_OPTIONS[0],
    STORE_OPTIONS[1],
    STORE_OPTIONS[2],
    STORE_OPTIONS[3],
];

impl SourceFactory for FilesFactory {
    fn options(&self) -> &[&'static str] {
        &FILES_OPTIONS
    }

    fn create(
        &self,
        name: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Source>> {
        let reader = FileLoader::from_options(name, schema, options)?;
        Ok(Arc::new(FilesSource {
            name: name.to_string(),
            location: reader.location.clone(),
            reader: Arc::new(reader),
            options: options.clone(),
            projection: Mutex::default(),
            include_existing: bool_option("files", options, "include_existing", false)?,
            max_files: positive_option("files", options, "max_files_per_batch")?,
            listing: Mutex::default(),
            seen_log: Mutex::default(),
            commit_log: tokio::sync::Mutex::default(),
            ahead: Mutex::default(),
        }))
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
