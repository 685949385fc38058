//! Values into the declared column types, exactly or not at all: `1.5` is not a
//! BIGINT, `1e400` is not a DOUBLE, `'abc'` is not an INT. Arrow's casts and readers
//! turn such values into NULLs or truncate them; the sources check every conversion
//! here instead, so a value that does not fit is a bad record (`on_error`), never a
//! silently different one.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Whether `t` is an integer or floating-point type.
pub fn is_number(t: &DataType) -> bool {
    t.is_integer() || t.is_floating()
}

/// Rows of `column` that do not convert exactly into `to`, and a message about the
/// first of them.
#[derive(Debug)]
pub struct Inexact {
    pub rows: Vec<usize>,
    pub message: String,
}

/// `column` as `to`, if every value converts exactly; else the rows that do not.
/// Exactly: a value that does not parse or is out of range (Arrow: NULL), a fraction
/// into an integer, an integer a float cannot hold, a number text that overflows a
/// float to infinity.
pub fn cast_exact(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, Inexact> {
    let from = column.data_type();
    if from == to {
        return Ok(column.clone());
    }
    let all = || (0..column.len()).filter(|i| column.is_valid(*i)).collect();
    let options = CastOptions {
        safe: true,
        ..Default::default()
    };
    let cast = match cast_with_options(column, to, &options) {
        Ok(c) => c,
        Err(e) => {
            return Err(Inexact {
                rows: all(),
                message: format!("a {from} value cannot become {to}: {e}"),
            });
        }
    };
    // Valid before, NULL after: did not parse, or out of range.
    let mut bad: Vec<bool> = (0..column.len())
        .map(|i| column.is_valid(i) && cast.is_null(i))
        .collect();
    if is_number(from) && is_number(to) {
        // The value must survive the way back (1.5 -> 1 -> 1.0 does not).
        if let Ok(back) = cast_with_options(&cast, from, &options)
            && let Ok(differs) = distinct(column, &back)
        {
            mark(&mut bad, &differs, column);
        }
    }
    if matches!(
        from,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) && to.is_floating()
    {
        // Text that overflows parses to an infinity; only "inf"/"infinity" may.
        if let Ok(f64s) = cast_with_options(&cast, &DataType::Float64, &options)
            && let Ok(text) = cast_with_options(column, &DataType::Utf8, &options)
        {
            let f64s = f64s.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            let text = text.as_string::<i32>();
            for (i, b) in bad.iter_mut().enumerate() {
                if f64s.is_valid(i) && f64s.value(i).is_infinite() {
                    let t = text.value(i).trim().trim_start_matches(['+', '-']);
                    if !t.eq_ignore_ascii_case("inf") && !t.eq_ignore_ascii_case("infinity") {
                        *b = true;
                    }
                }
            }
        }
    }
    let rows: Vec<usize> = bad
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.then_some(i))
        .collect();
    if rows.is_empty() {
        return Ok(cast);
    }
    let shown = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
        .map(|f| f.value(rows[0]).to_string())
        .unwrap_or_default();
    Err(Inexact {
        message: format!("{shown} is not a {to} value (it does not convert exactly)"),
        rows,
    })
}

fn mark(bad: &mut [bool], differs: &BooleanArray, column: &ArrayRef) {
    for (i, b) in bad.iter_mut().enumerate() {
        if column.is_valid(i) && differs.value(i) {
            *b = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn only_exact_conversions_pass() {
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.0), None, Some(-3.0)]));
        let ints = cast_exact(&floats, &DataType::Int64).unwrap();
        assert_eq!(
            ints.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(2),
            -3
        );
        let fraction: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 1.5]));
        let e = cast_exact(&fraction, &DataType::Int64).unwrap_err();
        assert_eq!(e.rows, vec![1]);
        assert!(
            e.message.starts_with("1.5 is not a Int64 value"),
            "{}",
            e.message
        );
        let big: ArrayRef = Arc::new(Int64Array::from(vec![1, i64::MAX]));
        assert_eq!(
            cast_exact(&big, &DataType::Int32).unwrap_err().rows,
            vec![1]
        );
        assert_eq!(
            cast_exact(&big, &DataType::Float64).unwrap_err().rows,
            vec![1]
        );
        let text: ArrayRef = Arc::new(StringArray::from(vec![
            Some("12"),
            Some("abc"),
            None,
            Some("1.5"),
        ]));
        assert_eq!(
            cast_exact(&text, &DataType::Int64).unwrap_err().rows,
            vec![1, 3]
        );
        let floats: ArrayRef =
            Arc::new(StringArray::from(vec!["1e400", "inf", "2.5", "-Infinity"]));
        assert_eq!(
            cast_exact(&floats, &DataType::Float64).unwrap_err().rows,
            vec![0]
        );
    }
}
