//! Record formats shared by the text-based sources (socket, files, Kafka): `text` (one
//! column, the line), `csv` and `json` (one record per line, decoded in bulk by Arrow's
//! readers into the stream's declared schema), and the `on_error` policy for records
//! that do not decode.
//!
//! ```text
//!  lines ─▶ Arrow decoder over all of them ──ok──▶ RecordBatch
//!                        └─error─▶ each line alone: good ones kept, bad ones
//!                                  fail (error naming source + position) | skip | dead_letter
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringBuilder, new_null_array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use flumen_engine::registry::ConnectorOptions;
use flumen_engine::{Error, Rejected, Result, plan_err};

/// How a record's bytes become a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The whole line is the row's one text column.
    Text,
    Csv,
    Json,
}

/// What happens to a record that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop the query with an error naming the source and the record's position.
    Fail,
    /// Count it and go on.
    Skip,
    /// Count it and write it aside (the stream's `<name>_errors` sink).
    DeadLetter,
}

/// The options every text-based source takes.
pub const FORMAT_OPTIONS: [&str; 3] = ["format", "on_error", "strict"];

/// The default schema of a `text` stream: one column, `line`.
pub fn text_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
}

/// What [`Decoder::decode_keeping`] returns.
#[derive(Debug)]
pub struct Decoded {
    pub batch: RecordBatch,
    pub rejected: Vec<Rejected>,
    /// The lines the rows came from, when some were rejected (`None`: all of them).
    pub kept: Option<Vec<u32>>,
}

/// Decodes lines into batches of the stream's schema.
#[derive(Debug, Clone)]
pub struct Decoder {
    source: String,
    schema: SchemaRef,
    format: Format,
    on_error: OnError,
    /// JSON: a field the schema does not declare makes the record bad (by default it
    /// is ignored, as Spark and Flink do).
    strict: bool,
    /// The schema the reader parses into: the declared one, except that columns whose
    /// values are checked for an exact conversion (JSON numbers, CSV floats) are read
    /// as text first.
    raw_schema: SchemaRef,
    /// CSV: the only columns parsed (ascending); the others are placeholders. Shared
    /// by the clones that decode a file's slices.
    projection: Arc<parking_lot::RwLock<Option<Arc<[usize]>>>>,
}

impl Decoder {
    /// From a stream's `format` (default `text`) and `on_error` (default `fail`).
    pub fn from_options(
        source: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Self> {
        let format = match options
            .get("format")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("text") | Some("raw") => Format::Text,
            Some("csv") => Format::Csv,
            Some("json") => Format::Json,
            Some(other) => {
                return plan_err!(
                    "stream {source}: unknown format '{other}'; accepted: text, csv, json"
                );
            }
        };
        let on_error = match options
            .get("on_error")
            .map(|s| s.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("fail") => OnError::Fail,
            Some("skip") => OnError::Skip,
            Some("dead_letter") => OnError::DeadLetter,
            Some(other) => {
                return plan_err!(
                    "stream {source}: unknown on_error '{other}'; accepted: fail, skip, dead_letter"
                );
            }
        };
        if format == Format::Text
            && !(schema.fields().len() == 1 && schema.field(0).data_type() == &DataType::Utf8)
        {
            return plan_err!(
                "stream {source}: format 'text' gives one TEXT column (e.g. (line TEXT)); for more columns use format = 'csv' or 'json'"
            );
        }
        let strict = flumen_engine::registry::bool_option(
            &format!("stream {source}"),
            options,
            "strict",
            false,
        )?;
        if strict && format != Format::Json {
            return plan_err!("stream {source}: strict = 'true' applies to format = 'json' only");
        }
        // Read as text, then converted exactly (crate::exact): Arrow's JSON reader
        // truncates 1.5 into an integer and its readers overflow text into infinity.
        let checked = |t: &DataType| match format {
            Format::Json => crate::exact::is_number(t),
            Format::Csv => t.is_floating(),
            Format::Text => false,
        };
        let raw_schema = if !schema.fields().iter().any(|f| checked(f.data_type())) {
            Arc::clone(&schema)
        } else {
            Arc::new(Schema::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| {
                        if checked(f.data_type()) {
                            f.as_ref().clone().with_data_type(DataType::Utf8)
                        } else {
                            f.as_ref().clone()
                        }
                    })
                    .collect::<Vec<_>>(),
            ))
        };
        Ok(Self {
            source: source.to_string(),
            schema,
            format,
            on_error,
            strict,
            raw_schema,
            projection: Arc::default(),
        })
    }

    /// Parse only `columns` (CSV; other formats decode every column): the others get
    /// placeholder values (null, or the type's default where the column is NOT NULL),
    /// and bad values in them are no longer seen — Spark's CSV column pruning.
    pub fn project(&self, columns: &[usize]) {
        if self.format == Format::Csv && !columns.is_empty() {
            *self.projection.write() = Some(columns.into());
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The format, for a source's [`flumen_engine::Source::describe`].
    pub fn describe(&self) -> String {
        format!(
            "format {}",
            match self.format {
                Format::Text => "text",
                Format::Csv => "csv",
                Format::Json => "json",
            }
        )
    }

    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `lines`; `position(i)` names line `i` in errors (computed only for bad
    /// records). Returns the rows and the rejected records; under `on_error = 'fail'`, a
    /// bad record is an error instead.
    pub fn decode(
        &self,
        lines: &[&str],
        position: impl Fn(usize) -> String,
    ) -> Result<(RecordBatch, Vec<Rejected>)> {
        let d = self.decode_keeping(lines, position)?;
        Ok((d.batch, d.rejected))
    }

    /// As [`Decoder::decode`], also saying which lines the rows came from when some
    /// were rejected (so a caller can line up columns of its own, e.g. Kafka offsets).
    pub fn decode_keeping(
        &self,
        lines: &[&str],
        position: impl Fn(usize) -> String,
    ) -> Result<Decoded> {
        let all = |batch| Decoded {
            batch,
            rejected: Vec::new(),
            kept: None,
        };
        if lines.is_empty() {
            return Ok(all(RecordBatch::new_empty(Arc::clone(&self.schema))));
        }
        if self.format == Format::Text {
            let bytes = lines.iter().map(|l| l.len()).sum();
            let batch = text_batch(&self.schema, lines.iter().copied(), lines.len(), bytes)?;
            return Ok(all(batch));
        }
        // Fast path: every line at once.
        if let Ok(batch) = self.decode_lines(lines)
            && batch.num_rows() == lines.len()
        {
            return Ok(all(batch));
        }
        // Some line is bad: decode one by one to find which.
        let mut good = Vec::new();
        let mut kept = Vec::new();
        let mut rejected = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let error = match self.decode_lines(&[line]) {
                Ok(b) if b.num_rows() == 1 => {
                    good.push(b);
                    kept.push(i as u32);
                    continue;
                }
                Ok(b) if b.num_rows() == 0 => "an empty record".to_string(),
                Ok(b) => format!("expected one record, decoded {}", b.num_rows()),
                Err(e) => e.to_string(),
            };
            self.reject(&position(i), line, error, &mut rejected)?;
        }
        Ok(Decoded {
            batch: concat_batches(&self.schema, &good)?,
            rejected,
            kept: Some(kept),
        })
    }

    /// Part of a file (lines without the last newline) decoded straight from its
    /// bytes, in batches of at most 8,192 rows, without copying the lines first. `None`
    /// when the part is not UTF-8, a record does not decode, or it has a shape the
    /// line-by-line path treats on its own (a blank line, which it skips; `\r`, which
    /// it strips; for CSV a quote, which may hold a newline): the caller then decodes
    /// line by line. `skip_first` leaves out the first line (a header).
    pub fn decode_part(&self, text: &[u8], skip_first: bool) -> Option<Vec<RecordBatch>> {
        let text = std::str::from_utf8(text).ok()?;
        if self.format == Format::Text {
            let lines = memchr::memchr_iter(b'\n', text.as_bytes()).count() + 1;
            let kept = text
                .split('\n')
                .skip(usize::from(skip_first))
                .map(|l| l.strip_suffix('\r').unwrap_or(l));
            return text_batch(&self.schema, kept, lines, text.len())
                .ok()
                .map(|b| vec![b]);
        }
        let text = match (skip_first, text.find('\n')) {
            (false, _) => text,
            (true, Some(at)) => &text[at + 1..],
            (true, None) => "",
        }
        .as_bytes();
        if text.is_empty() {
            return Some(Vec::new());
        }
        let special = match self.format {
            Format::Csv => memchr::memchr2(b'\r', b'"', text),
            _ => memchr::memchr(b'\r', text),
        };
        if special.is_some() || blank_line(text) {
            return None;
        }
        let lines = memchr::memchr_iter(b'\n', text).count() + 1;
        let batches = self.read(text, PART_BATCH_ROWS).ok()?;
        (batches.iter().map(|b| b.num_rows()).sum::<usize>() == lines).then_some(batches)
    }

    /// Under the stream's policy, a record that could not be read before decoding
    /// (e.g. not UTF-8): an error under `fail`, else added to `out`.
    pub fn reject_raw(
        &self,
        position: &str,
        record: &str,
        error: String,
        out: &mut Vec<Rejected>,
    ) -> Result<()> {
        self.reject(position, record, error, out)
    }

    fn reject(
        &self,
        position: &str,
        line: &str,
        error: String,
        out: &mut Vec<Rejected>,
    ) -> Result<()> {
        if self.on_error == OnError::Fail {
            return Err(Error::Source {
                source_name: self.source.clone(),
                message: format!(
                    "bad record at {position}: {error} (record: {}); set on_error = 'skip' or 'dead_letter' to go on past bad records",
                    clip(line)
                ),
                retryable: false,
            });
        }
        out.push(Rejected {
            position: position.to_string(),
            record: line.to_string(),
            error,
        });
        Ok(())
    }

    fn decode_lines(&self, lines: &[&str]) -> Result<RecordBatch> {
        let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        let batches = self.read(text.as_bytes(), lines.len().max(1))?;
        Ok(concat_batches(&self.schema, &batches)?)
    }

    /// CSV or JSON `text` in batches of `batch_size` rows of the stream's schema (only
    /// the projected columns parsed, placeholders in the rest); an error names a
    /// declared NOT NULL column left without a value.
    fn read(&self, text: &[u8], batch_size: usize) -> Result<Vec<RecordBatch>> {
        let projection = self.projection.read().clone();
        let input = std::io::Cursor::new(text);
        let batches: Vec<RecordBatch> = match self.format {
            Format::Json => {
                datafusion::arrow::json::ReaderBuilder::new(Arc::clone(&self.raw_schema))
                    .with_batch_size(batch_size)
                    .with_strict_mode(self.strict)
                    .with_coerce_primitive(true)
                    .build(input)?
                    .collect::<Result<_, _>>()?
            }
            Format::Csv => {
                let mut reader =
                    datafusion::arrow::csv::ReaderBuilder::new(Arc::clone(&self.raw_schema))
                        .with_header(false)
                        .with_batch_size(batch_size);
                if let Some(p) = &projection {
                    reader = reader.with_projection(p.to_vec());
                }
                reader.build(input)?.collect::<Result<_, _>>()?
            }
            Format::Text => return plan_err!("text lines are not decoded"),
        };
        batches
            .into_iter()
            .map(|batch| self.convert(batch))
            .map(|batch| {
                let batch = batch?;
                // Declared NOT NULL columns must have a value.
                let schema = batch.schema();
                for (f, c) in schema.fields().iter().zip(batch.columns()) {
                    if !f.is_nullable() && c.null_count() > 0 {
                        return plan_err!("column {} is NOT NULL but has no value", f.name());
                    }
                }
                match &projection {
                    Some(p) => self.widen(batch, p),
                    None => Ok(batch),
                }
            })
            .collect()
    }

    /// A batch read into [`Decoder::raw_schema`] (or its projection) in the declared
    /// types: the columns read as text converted exactly, or an error naming the
    /// column and the value.
    fn convert(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if Arc::ptr_eq(&self.raw_schema, &self.schema) {
            return Ok(batch);
        }
        let raw = batch.schema();
        let mut fields = Vec::with_capacity(raw.fields().len());
        let mut columns = Vec::with_capacity(raw.fields().len());
        for (f, c) in raw.fields().iter().zip(batch.columns()) {
            let declared = self.schema.field_with_name(f.name())?;
            let column = crate::exact::cast_exact(c, declared.data_type())
                .map_err(|e| Error::Plan(format!("column {}: {}", f.name(), e.message)))?;
            fields.push(declared.clone());
            columns.push(column);
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    /// A batch of the projected columns `p` as one of the whole schema, with
    /// placeholders in the columns not parsed.
    fn widen(&self, batch: RecordBatch, p: &[usize]) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mut parsed = batch.columns().iter();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (i, f) in self.schema.fields().iter().enumerate() {
            let column = match p.contains(&i).then(|| parsed.next()).flatten() {
                Some(c) => Arc::clone(c),
                None if f.is_nullable() => new_null_array(f.data_type(), rows),
                None => ScalarValue::new_default(f.data_type())?.to_array_of_size(rows)?,
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

/// Rows per batch of a part decoded straight from a file's bytes (DataFusion's
/// `batch_size`: the reader's buffers stay small and are reused from batch to batch).
const PART_BATCH_ROWS: usize = 8192;

/// Whether `text` (lines without the last newline) has an empty line.
fn blank_line(text: &[u8]) -> bool {
    text.first() == Some(&b'\n')
        || text.last() == Some(&b'\n')
        || memchr::memmem::find(text, b"\n\n").is_some()
}

/// `lines` (`count` of them, `bytes` long in all) as a batch of one `Utf8` column,
/// sized up front: growing the values buffer line by line copies it at every doubling.
fn text_batch<'a>(
    schema: &SchemaRef,
    lines: impl Iterator<Item = &'a str>,
    count: usize,
    bytes: usize,
) -> Result<RecordBatch> {
    let mut column = StringBuilder::with_capacity(count, bytes);
    for line in lines {
        column.append_value(line);
    }
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(column.finish()) as ArrayRef],
    )?)
}

/// A record shortened for an error message.
fn clip(line: &str) -> String {
    const MAX: usize = 200;
    if line.len() <= MAX {
        return line.to_string();
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn at(i: usize) -> String {
        format!("test line {}", i + 1)
    }

    fn opts(kv: &[(&str, &str)]) -> ConnectorOptions {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn json_bad_lines_are_skipped_and_reported() {
        let d = Decoder::from_options(
            "s",
            schema(),
            &opts(&[("format", "json"), ("on_error", "skip")]),
        )
        .unwrap();
        let (b, rejected) = d
            .decode(
                &[
                    r#"{"id": 1, "name": "a"}"#,
                    "not json",
                    r#"{"id": 3}"#,
                    r#"{"name": "no id"}"#,
                ],
                at,
            )
            .unwrap();
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 3]);
        assert_eq!(
            rejected
                .iter()
                .map(|r| r.position.as_str())
                .collect::<Vec<_>>(),
            vec!["test line 2", "test line 4"]
        );
    }

    #[test]
    fn csv_bad_line_fails_naming_the_position() {
        let d = Decoder::from_options("s", schema(), &opts(&[("format", "csv")])).unwrap();
        let err = d.decode(&["1,a", "x,b"], at).unwrap_err().to_string();
        assert!(
            err.starts_with("source 's': bad record at test line 2: "),
            "{err}"
        );
        assert!(err.contains("(record: x,b)"), "{err}");
    }

    #[test]
    fn unknown_format_and_policy_list_what_is_accepted() {
        let e = Decoder::from_options("s", schema(), &opts(&[("format", "xml")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stream s: unknown format 'xml'; accepted: text, csv, json"
        );
        let e = Decoder::from_options(
            "s",
            schema(),
            &opts(&[("format", "csv"), ("on_error", "ignore")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "stream s: unknown on_error 'ignore'; accepted: fail, skip, dead_letter"
        );
    }

    /// The fast path gives what the line-by-line path gives, in batches of at most
    /// 8,192 rows, with and without a projection, and leaves every shape the
    /// line-by-line path treats specially (or a bad record) to it.
    #[test]
    fn csv_parts_decode_as_lines_do_or_are_left_to_them() {
        let d = Decoder::from_options("s", schema(), &opts(&[("format", "csv")])).unwrap();
        let text: String = (0..20_000)
            .map(|i| format!("{i},n{}", i % 5))
            .collect::<Vec<_>>()
            .join("\n");
        let lines: Vec<&str> = text.split('\n').collect();
        let show = |b: &[RecordBatch]| {
            datafusion::arrow::util::pretty::pretty_format_batches(b)
                .unwrap()
                .to_string()
        };
        let whole = d.decode(&lines, at).unwrap().0;
        let parts = d.decode_part(text.as_bytes(), false).unwrap();
        assert_eq!(
            parts.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            vec![8192, 8192, 3616]
        );
        assert_eq!(show(&parts), show(&[whole]));
        // A header line is left out; a part that is only the header has no rows.
        let headed = format!("id,name\n{text}");
        let parts = d.decode_part(headed.as_bytes(), true).unwrap();
        assert_eq!(parts.iter().map(|b| b.num_rows()).sum::<usize>(), 20_000);
        assert!(d.decode_part(b"id,name", true).unwrap().is_empty());
        // Projected: `name` only; `id` (NOT NULL) gets placeholders, never nulls.
        d.project(&[1]);
        let parts = d.decode_part(b"1,a\n2,b", false).unwrap();
        assert_eq!(parts[0].column(0).null_count(), 0);
        assert_eq!(
            parts[0]
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap(),
            &StringArray::from(vec!["a", "b"])
        );
        // A bad `id` is no longer parsed; a line with a field too many still fails.
        assert_eq!(d.decode_part(b"x,a\n2,b", false).unwrap()[0].num_rows(), 2);
        assert!(d.decode_part(b"1,a,extra\n2,b", false).is_none());
        // Shapes left to the line-by-line path: \r\n endings, quotes, blank lines,
        // not UTF-8.
        for text in [
            &b"1,a\r\n2,b"[..],
            b"1,\"a\"\n2,b",
            b"1,a\n\n2,b",
            b"\n1,a",
            b"1,a\n",
            b"1,\xff",
        ] {
            assert!(d.decode_part(text, false).is_none(), "{text:?}");
        }
        // JSON lines: as line by line; two objects on a line, a blank line, a bad
        // record go line by line.
        let j = Decoder::from_options("s", schema(), &opts(&[("format", "json")])).unwrap();
        let json: Vec<String> = (0..9000)
            .map(|i| format!("{{\"id\": {i}, \"name\": \"n{}\"}}", i % 3))
            .collect();
        let lines: Vec<&str> = json.iter().map(|l| l.as_str()).collect();
        let parts = j.decode_part(json.join("\n").as_bytes(), false).unwrap();
        assert_eq!(
            parts.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            vec![8192, 808]
        );
        assert_eq!(show(&parts), show(&[j.decode(&lines, at).unwrap().0]));
        for text in [
            &br#"{"id": 1} {"id": 2}"#[..],
            b"{\"id\": 1}\n\n{\"id\": 2}",
            b"{\"id\": \"x\"}",
            b"{\"id\": 1.5}",
            b"{\"name\": \"no id\"}",
        ] {
            assert!(j.decode_part(text, false).is_none(), "{text:?}");
        }
        // A field the schema does not declare: ignored, unless strict.
        let other = b"{\"id\": 1, \"other\": 2}";
        assert_eq!(j.decode_part(other, false).unwrap()[0].num_rows(), 1);
        let strict = Decoder::from_options(
            "s",
            schema(),
            &opts(&[("format", "json"), ("strict", "true")]),
        )
        .unwrap();
        assert!(strict.decode_part(other, false).is_none());
        let text = Decoder::from_options("s", text_schema(), &opts(&[])).unwrap();
        let parts = text.decode_part("a\r\n\nb é".as_bytes(), false).unwrap();
        assert_eq!(
            parts[0]
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap(),
            &StringArray::from(vec!["a", "", "b é"])
        );
    }
}

#[cfg(test)]
mod nesting {
    use super::*;

    /// A line nested 100,000 deep is a bad record, not a stack overflow (runs on a
    /// thread with a 2 MiB stack, as the runtime's).
    #[test]
    fn deeply_nested_json_is_a_bad_record() {
        let decoded = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
                let opts: ConnectorOptions = [
                    ("format".to_string(), "json".to_string()),
                    ("on_error".to_string(), "skip".to_string()),
                ]
                .into_iter()
                .collect();
                let d = Decoder::from_options("s", schema, &opts).unwrap();
                let bare = "[".repeat(100_000);
                let in_field = format!("{{\"a\": {}", "[".repeat(100_000));
                let objects = "{\"a\": ".repeat(50_000);
                d.decode(&[&bare, &in_field, &objects, "{\"a\": 1}"], |i| {
                    i.to_string()
                })
                .map(|(b, rejected)| (b.num_rows(), rejected.len()))
                .unwrap()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(decoded, (1, 3));
    }
}
