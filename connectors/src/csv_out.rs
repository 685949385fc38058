//! CSV encoding of the columns a sink writes most — integers, text, booleans and
//! timestamps without a time zone — straight into bytes: the same bytes as Arrow's CSV
//! writer (which formats every value through `Display` into a string first), at a
//! fraction of its cost. A batch with another type is Arrow's to write.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, LargeStringArray, RecordBatch, StringArray,
    StringViewArray,
};
use datafusion::arrow::datatypes::{
    DataType, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use datafusion::arrow::temporal_conversions::timestamp_s_to_datetime;

/// `batches` as CSV with a header line, as Arrow's writer with a header writes them;
/// `None` when a column has a type only Arrow's writer knows.
pub(crate) fn encode(batches: &[RecordBatch]) -> Option<Vec<u8>> {
    let first = batches.first()?;
    if !first.columns().iter().all(|c| Column::of(c).is_some()) {
        return None;
    }
    let schema = first.schema();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut out = Vec::with_capacity(64 + rows * 16 * schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        text(&mut out, f.name());
    }
    out.push(b'\n');
    let mut seconds = Seconds::default();
    for b in batches {
        let columns = b
            .columns()
            .iter()
            .map(|c| Some((Column::of(c)?, c.logical_nulls())))
            .collect::<Option<Vec<_>>>()?;
        for row in 0..b.num_rows() {
            let start = out.len();
            for (i, (c, nulls)) in columns.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                    c.write(&mut out, row, &mut seconds)?;
                }
            }
            // A record of one empty field is `""`: an empty line would be no record.
            if out.len() == start {
                out.extend_from_slice(b"\"\"");
            }
            out.push(b'\n');
        }
    }
    Some(out)
}

/// A text field, quoted (quotes doubled) when it holds a comma, a quote or a line end.
fn text(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for b in s.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The text of the last whole second a timestamp fell in (`2023-11-14T22:34:05`,
/// chrono's form, as Arrow writes it): rows in the same second share it.
#[derive(Default)]
struct Seconds {
    second: Option<i64>,
    text: String,
}

/// A column with its type resolved once a batch: each value is then written without
/// asking the array what it is.
enum Column<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    Bool(&'a BooleanArray),
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    View(&'a StringViewArray),
    /// Values, and how many of them make a second.
    Time(&'a [i64], i64),
}

impl<'a> Column<'a> {
    fn of(c: &'a ArrayRef) -> Option<Self> {
        Some(match c.data_type() {
            DataType::Int8 => Column::I8(c.as_primitive::<Int8Type>().values()),
            DataType::Int16 => Column::I16(c.as_primitive::<Int16Type>().values()),
            DataType::Int32 => Column::I32(c.as_primitive::<Int32Type>().values()),
            DataType::Int64 => Column::I64(c.as_primitive::<Int64Type>().values()),
            DataType::UInt8 => Column::U8(c.as_primitive::<UInt8Type>().values()),
            DataType::UInt16 => Column::U16(c.as_primitive::<UInt16Type>().values()),
            DataType::UInt32 => Column::U32(c.as_primitive::<UInt32Type>().values()),
            DataType::UInt64 => Column::U64(c.as_primitive::<UInt64Type>().values()),
            DataType::Boolean => Column::Bool(c.as_boolean()),
            DataType::Utf8 => Column::Utf8(c.as_string::<i32>()),
            DataType::LargeUtf8 => Column::LargeUtf8(c.as_string::<i64>()),
            DataType::Utf8View => Column::View(c.as_string_view()),
            DataType::Timestamp(TimeUnit::Second, None) => {
                Column::Time(c.as_primitive::<TimestampSecondType>().values(), 1)
            }
            DataType::Timestamp(TimeUnit::Millisecond, None) => {
                Column::Time(c.as_primitive::<TimestampMillisecondType>().values(), 1_000)
            }
            DataType::Timestamp(TimeUnit::Microsecond, None) => Column::Time(
                c.as_primitive::<TimestampMicrosecondType>().values(),
                1_000_000,
            ),
            DataType::Timestamp(TimeUnit::Nanosecond, None) => Column::Time(
                c.as_primitive::<TimestampNanosecondType>().values(),
                1_000_000_000,
            ),
            _ => return None,
        })
    }

    /// Row `row` (not null); `None`: a timestamp out of range.
    fn write(&self, out: &mut Vec<u8>, row: usize, seconds: &mut Seconds) -> Option<()> {
        match self {
            Column::I8(v) => int(out, v[row]),
            Column::I16(v) => int(out, v[row]),
            Column::I32(v) => int(out, v[row]),
            Column::I64(v) => int(out, v[row]),
            Column::U8(v) => int(out, v[row]),
            Column::U16(v) => int(out, v[row]),
            Column::U32(v) => int(out, v[row]),
            Column::U64(v) => int(out, v[row]),
            Column::Bool(a) => out.extend_from_slice(if a.value(row) { b"true" } else { b"false" }),
            Column::Utf8(a) => text(out, a.value(row)),
            Column::LargeUtf8(a) => text(out, a.value(row)),
            Column::View(a) => text(out, a.value(row)),
            Column::Time(values, per_second) => timestamp(out, values[row], *per_second, seconds)?,
        }
        Some(())
    }
}

/// A timestamp as chrono prints it (`2023-11-14T22:34:05.123`), as Arrow writes one.
fn timestamp(out: &mut Vec<u8>, v: i64, per_second: i64, seconds: &mut Seconds) -> Option<()> {
    let second = v.div_euclid(per_second);
    if seconds.second != Some(second) {
        let whole = timestamp_s_to_datetime(second)?;
        seconds.text = format!("{whole:?}");
        seconds.second = Some(second);
    }
    out.extend_from_slice(seconds.text.as_bytes());
    // chrono's fraction: none, or 3, 6 or 9 digits, the fewest that hold it.
    let nanos = v.rem_euclid(per_second) * (1_000_000_000 / per_second);
    if nanos != 0 {
        let (digits, scaled) = if nanos % 1_000_000 == 0 {
            (3, nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            (6, nanos / 1_000)
        } else {
            (9, nanos)
        };
        out.push(b'.');
        let mut buffer = itoa::Buffer::new();
        let text = buffer.format(scaled).as_bytes();
        out.extend(std::iter::repeat_n(b'0', digits - text.len()));
        out.extend_from_slice(text);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BooleanArray, Int32Array, Int64Array, StringArray, StringViewArray,
        TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
        TimestampSecondArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn arrow_csv(batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        for b in batches {
            w.write(b).expect("arrow writes csv");
        }
        drop(w);
        out
    }

    #[test]
    fn the_same_bytes_as_arrow_s_csv_writer() {
        let ms = |v: i64| v * 1_000 + v % 997;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id, \"quoted\"", DataType::Int64, true),
            Field::new("small", DataType::Int32, true),
            Field::new("big", DataType::UInt64, true),
            Field::new("flag", DataType::Boolean, true),
            Field::new("text", DataType::Utf8, true),
            Field::new("view", DataType::Utf8View, true),
            Field::new("s", DataType::Timestamp(TimeUnit::Second, None), true),
            Field::new("ms", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("us", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("ns", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]));
        let texts = [
            Some("plain"),
            Some(""),
            None,
            Some("a,b"),
            Some("say \"hi\""),
            Some("two\nlines"),
            Some("cr\rhere"),
            Some(" spaced "),
            Some("#hash"),
            Some("tab\there"),
            Some("ünïcode ✓"),
            Some("'single'"),
        ];
        let n = texts.len();
        let values: Vec<i64> = (0..n as i64)
            .map(|i| (i - 5) * 86_399_999 + i * 7)
            .collect();
        let batch = |offset: i64| {
            let v = |i: usize| values[i] + offset;
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter(
                        (0..n).map(|i| (i != 2).then(|| v(i) - 40_000_000_000)),
                    )),
                    Arc::new(Int32Array::from_iter((0..n).map(|i| Some(i as i32 - 6)))),
                    Arc::new(UInt64Array::from_iter(
                        (0..n).map(|i| Some(u64::MAX - i as u64)),
                    )),
                    Arc::new(BooleanArray::from_iter(
                        (0..n).map(|i| (i != 3).then_some(i % 2 == 0)),
                    )),
                    Arc::new(StringArray::from(texts.to_vec())),
                    Arc::new(StringViewArray::from(texts.to_vec())),
                    Arc::new(TimestampSecondArray::from_iter(
                        (0..n).map(|i| (i != 4).then(|| v(i) / 1000)),
                    )),
                    Arc::new(TimestampMillisecondArray::from_iter(
                        (0..n).map(|i| (i != 5).then(|| ms(v(i)) / 1000 - i as i64 % 3)),
                    )),
                    Arc::new(TimestampMicrosecondArray::from_iter((0..n).map(|i| {
                        Some(match i % 3 {
                            0 => v(i) * 1000,
                            1 => v(i) * 1000 + 17,
                            _ => v(i) * 1000 + 170_000,
                        })
                    }))),
                    Arc::new(TimestampNanosecondArray::from_iter((0..n).map(|i| {
                        Some(match i % 4 {
                            0 => v(i) * 1_000_000,
                            1 => v(i) * 1_000_000 + 1,
                            2 => v(i) * 1_000_000 + 5_000,
                            _ => v(i) * 1_000_000 + 3_000_000,
                        })
                    }))),
                ],
            )
            .expect("a batch")
        };
        let batches = [batch(0), batch(1_234_567), batch(-9_876_543_210)];
        let ours = encode(&batches).expect("every type is encoded here");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&arrow_csv(&batches))
        );
    }

    #[test]
    fn an_empty_value_alone_on_its_line_is_quoted_as_arrow_does() {
        let schema = Arc::new(Schema::new(vec![Field::new("only", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("a"), Some(""), None]))],
        )
        .expect("a batch");
        let ours = encode(std::slice::from_ref(&batch)).expect("text is encoded here");
        assert_eq!(ours, arrow_csv(&[batch]));
        assert_eq!(ours, b"only\na\n\"\"\n\"\"\n");
    }

    #[test]
    fn other_types_are_left_to_arrow() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(datafusion::arrow::array::Float64Array::from(
                vec![1.5],
            ))],
        )
        .expect("a batch");
        assert!(encode(&[batch]).is_none());
    }
}
