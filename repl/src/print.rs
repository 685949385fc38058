//! Output formats of the `flumen` command.

use std::str::FromStr;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

/// How results are printed (`\format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Spark's `print()` layout (continuous queries); a table otherwise.
    Print,
    Table,
    Csv,
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "print" => Ok(Format::Print),
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown format '{other}'; accepted: print, table, csv, json"
            )),
        }
    }
}

/// Renders `batches` in `format`.
pub fn render(format: Format, batches: &[RecordBatch]) -> anyhow::Result<String> {
    match batches.first() {
        Some(b) => render_with_schema(format, &b.schema(), batches),
        None => Ok(String::new()),
    }
}

/// [`render`], with the columns of `schema` shown even when there is no row (a table's
/// header, a CSV header line).
pub fn render_with_schema(
    format: Format,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> anyhow::Result<String> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        let empty = RecordBatch::new_empty(schema.clone());
        return Ok(match format {
            Format::Print | Format::Table => {
                format!("{}\n", pretty_format_batches(&[empty])?)
            }
            Format::Csv => format!(
                "{}\n",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Format::Json => String::new(),
        });
    }
    Ok(match format {
        Format::Print | Format::Table => format!("{}\n", pretty_format_batches(batches)?),
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut w = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in batches {
                    w.write(b)?;
                }
            }
            String::from_utf8(out)?
        }
        Format::Json => {
            let mut out = Vec::new();
            {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            String::from_utf8(out)?
        }
    })
}
