//! Spark's `print()` layout for a batch.

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::Result;
use crate::time::Time;

/// Formats up to `n` rows of a batch as DStream `print()` does:
///
/// ```text
/// -------------------------------------------
/// Time: 1000 ms
/// -------------------------------------------
/// (a,1)
/// (b,2)
/// ...
/// ```
///
/// A row of one column prints its value; a row of several, `(v1,v2,...)`. `...`
/// follows when rows were left out.
pub fn format_print(t: Time, batches: &[RecordBatch], n: usize) -> Result<String> {
    format_print_named(t, batches, n, None)
}

/// [`format_print`] with the name of what prints in the header (`Time: 1000 ms
/// (sink evens)`), so the output of several sinks can be told apart.
pub fn format_print_named(
    t: Time,
    batches: &[RecordBatch],
    n: usize,
    name: Option<&str>,
) -> Result<String> {
    let mut out = String::new();
    out.push_str("-------------------------------------------\n");
    match name {
        Some(name) => out.push_str(&format!("Time: {t} ({name})\n")),
        None => out.push_str(&format!("Time: {t}\n")),
    }
    out.push_str("-------------------------------------------\n");
    let options = FormatOptions::default().with_null("null");
    let mut printed = 0;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    'outer: for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if printed == n {
                break 'outer;
            }
            let values: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            if values.len() == 1 {
                out.push_str(&values[0]);
            } else {
                out.push('(');
                out.push_str(&values.join(","));
                out.push(')');
            }
            out.push('\n');
            printed += 1;
        }
    }
    if total > printed {
        out.push_str("...\n");
    }
    out.push('\n');
    Ok(out)
}
