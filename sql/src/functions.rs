//! SQL functions Flumen adds to DataFusion's so that queries written for Flink run
//! as written: `DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm')` with Java's pattern letters, and
//! `MOD`, `HOUR`, `REGEXP_EXTRACT`, `SPLIT_INDEX` (`flink.rs`).

use std::sync::Arc;

use chrono::format::{Fixed, Item, Numeric, StrftimeItems};
use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// Every SQL function Flumen adds to DataFusion's: what a session registers, and what
/// a cluster's scheduler and executors must know to run its plans
/// (`flumen_engine::cluster::node`). `to_char` and `date_format` replace DataFusion's.
pub fn udfs() -> Vec<std::sync::Arc<ScalarUDF>> {
    [
        crate::window::window_udf(),
        crate::window::hop_windows_udf(),
        crate::window::hop_window_ends_udf(),
        crate::window::window_end_udf(),
        crate::window::session_window_udf(),
        crate::window::cumulate_window_udf(),
        crate::window::cumulate_windows_udf(),
        to_char_udf(),
        date_format_udf(),
    ]
    .into_iter()
    .chain(crate::flink::udfs())
    .map(std::sync::Arc::new)
    .collect()
}

/// `DATE_FORMAT(ts, pattern)`: `ts` (a timestamp, date or time, or text holding a
/// timestamp) as text. The pattern is Java's `DateTimeFormatter`'s, as Flink takes it
/// (`yyyy-MM-dd HH:mm:ss.SSS`), or, if it holds a `%`, chrono's strftime (DataFusion's
/// `to_char`). A pattern that is neither is an error naming the letter at fault.
pub fn date_format_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(DateFormat {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct DateFormat {
    signature: Signature,
}

impl ScalarUDFImpl for DateFormat {
    fn name(&self) -> &str {
        "date_format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [value, pattern] = arg_types else {
            return plan_err!(
                "DATE_FORMAT(ts, pattern) takes 2 arguments, got {}",
                arg_types.len()
            );
        };
        let value = match value {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                DataType::Timestamp(TimeUnit::Nanosecond, None)
            }
            DataType::Timestamp(..)
            | DataType::Date32
            | DataType::Date64
            | DataType::Time32(_)
            | DataType::Time64(_)
            | DataType::Null => value.clone(),
            other => {
                return plan_err!(
                    "DATE_FORMAT(ts, pattern): ts must be a timestamp, date or time, got {other}"
                );
            }
        };
        match pattern {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {}
            other => {
                return plan_err!("DATE_FORMAT(ts, pattern): pattern must be text, got {other}");
            }
        }
        Ok(vec![value, DataType::Utf8])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        // A literal pattern is checked when the query is planned.
        if let Some(Some(
            ScalarValue::Utf8(Some(p))
            | ScalarValue::LargeUtf8(Some(p))
            | ScalarValue::Utf8View(Some(p)),
        )) = args.scalar_arguments.get(1)
        {
            strftime(p)?;
        }
        Ok(Arc::new(Field::new(self.name(), DataType::Utf8, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut args = args;
        let pattern = match &args.args[1] {
            ColumnarValue::Scalar(s) => ColumnarValue::Scalar(match s {
                ScalarValue::Utf8(Some(p))
                | ScalarValue::LargeUtf8(Some(p))
                | ScalarValue::Utf8View(Some(p)) => ScalarValue::Utf8(Some(strftime(p)?)),
                other => other.clone(),
            }),
            ColumnarValue::Array(a) => {
                let a = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
                let Some(a) = a.as_any().downcast_ref::<StringArray>() else {
                    return exec_err!("DATE_FORMAT pattern is not text");
                };
                let translated = a
                    .iter()
                    .map(|p| p.map(strftime).transpose())
                    .collect::<Result<StringArray>>()?;
                ColumnarValue::Array(Arc::new(translated) as ArrayRef)
            }
        };
        if let (ColumnarValue::Array(values), ColumnarValue::Scalar(ScalarValue::Utf8(Some(p)))) =
            (&args.args[0], &pattern)
            && let Some(out) = format_naive_timestamps(values, p)
        {
            return Ok(ColumnarValue::Array(out));
        }
        args.args[1] = pattern;
        datafusion::functions::datetime::to_char().invoke_with_args(args)
    }
}

/// The pattern's smallest unit that matters: rows in the same unit format alike.
fn granularity(items: &[Item<'_>]) -> Option<i64> {
    const MINUTE: i64 = 60_000_000_000;
    const DAY: i64 = 24 * 60 * MINUTE;
    let mut unit = DAY;
    for item in items {
        match item {
            Item::Literal(_) | Item::OwnedLiteral(_) | Item::Space(_) | Item::OwnedSpace(_) => {}
            Item::Numeric(n, _) => match n {
                Numeric::Year
                | Numeric::YearDiv100
                | Numeric::YearMod100
                | Numeric::IsoYear
                | Numeric::IsoYearDiv100
                | Numeric::IsoYearMod100
                | Numeric::Month
                | Numeric::Day
                | Numeric::WeekFromSun
                | Numeric::WeekFromMon
                | Numeric::IsoWeek
                | Numeric::NumDaysFromSun
                | Numeric::WeekdayFromMon
                | Numeric::Ordinal => {}
                Numeric::Hour | Numeric::Hour12 | Numeric::Minute => unit = MINUTE,
                _ => return None,
            },
            Item::Fixed(f) => match f {
                Fixed::ShortMonthName
                | Fixed::LongMonthName
                | Fixed::ShortWeekdayName
                | Fixed::LongWeekdayName => {}
                Fixed::LowerAmPm | Fixed::UpperAmPm => unit = MINUTE,
                _ => return None,
            },
            Item::Error => return None,
        }
    }
    Some(unit)
}

/// `DATE_FORMAT` of a column of timestamps without a time zone by one strftime
/// pattern, parsed once; a row in the same minute (or day, for a pattern of days) as
/// the one before it reuses its text. `None`: another case, left to `to_char`.
fn format_naive_timestamps(values: &ArrayRef, pattern: &str) -> Option<ArrayRef> {
    use datafusion::arrow::array::{AsArray, StringBuilder};
    use datafusion::arrow::datatypes::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    use std::fmt::Write;
    let DataType::Timestamp(unit, None) = values.data_type() else {
        return None;
    };
    let items: Vec<Item<'_>> = StrftimeItems::new(pattern).collect();
    let nanos_per_unit: i64 = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    // Rows whose values fall in one `same` (in the column's unit) format alike.
    let same = granularity(&items).map_or(1, |n| (n / nanos_per_unit).max(1));
    let raw: &[i64] = match unit {
        TimeUnit::Second => values.as_primitive::<TimestampSecondType>().values(),
        TimeUnit::Millisecond => values.as_primitive::<TimestampMillisecondType>().values(),
        TimeUnit::Microsecond => values.as_primitive::<TimestampMicrosecondType>().values(),
        TimeUnit::Nanosecond => values.as_primitive::<TimestampNanosecondType>().values(),
    };
    let units_per_second = 1_000_000_000 / nanos_per_unit;
    let mut out = StringBuilder::with_capacity(values.len(), values.len() * pattern.len());
    let mut last: Option<(i64, String)> = None;
    for (i, v) in raw.iter().enumerate() {
        if values.is_null(i) {
            out.append_null();
            continue;
        }
        let key = v.div_euclid(same);
        if last.as_ref().is_none_or(|(k, _)| *k != key) {
            let seconds = v.div_euclid(units_per_second);
            let nanos = (v.rem_euclid(units_per_second) * nanos_per_unit) as u32;
            let time = chrono::DateTime::from_timestamp(seconds, nanos)?.naive_utc();
            let mut text = String::new();
            write!(text, "{}", time.format_with_items(items.iter())).ok()?;
            last = Some((key, text));
        }
        out.append_value(last.as_ref().map_or("", |(_, t)| t.as_str()));
    }
    Some(Arc::new(out.finish()))
}

/// DataFusion's `to_char` under its own name only: DataFusion also registers it as
/// `date_format`, and a session rebuilt from its function list re-registers every
/// function in no fixed order, so the alias would take `date_format` back from
/// [`date_format_udf`] at random. Register this before `date_format_udf`.
pub fn to_char_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(NoAliases {
        inner: datafusion::functions::datetime::to_char(),
    })
}

/// A function without its aliases (see [`to_char_udf`]).
#[derive(Debug, PartialEq, Eq, Hash)]
struct NoAliases {
    inner: Arc<ScalarUDF>,
}

impl ScalarUDFImpl for NoAliases {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.inner.invoke_with_args(args)
    }

    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
}

/// A `DATE_FORMAT` pattern as chrono's strftime: a pattern holding `%` already is one;
/// otherwise it is read as Java's `DateTimeFormatter` pattern (Flink's), whose letters
/// must all be known here.
pub fn strftime(pattern: &str) -> Result<String> {
    if pattern.contains('%') {
        return Ok(pattern.to_string());
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // 'literal text'; '' is one quote.
            if chars.get(i + 1) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            // Quoted text up to the closing quote; '' inside is one quote.
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => {
                        return plan_err!("DATE_FORMAT pattern '{pattern}': a quote is not closed");
                    }
                    Some('\'') if chars.get(j + 1) == Some(&'\'') => {
                        out.push('\'');
                        j += 2;
                    }
                    Some('\'') => break,
                    Some('%') => {
                        out.push_str("%%");
                        j += 1;
                    }
                    Some(c) => {
                        out.push(*c);
                        j += 1;
                    }
                }
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&x| x == c).count();
        let directive = match (c, run) {
            ('y' | 'u', 2) => "%y",
            ('y' | 'u', _) => "%Y",
            ('M' | 'L', 1) => "%-m",
            ('M' | 'L', 2) => "%m",
            ('M' | 'L', 3) => "%b",
            ('M' | 'L', _) => "%B",
            ('d', 1) => "%-d",
            ('d', 2) => "%d",
            ('D', 1) => "%-j",
            ('D', _) => "%j",
            ('H', 1) => "%-H",
            ('H', 2) => "%H",
            ('h', 1) => "%-I",
            ('h', 2) => "%I",
            ('m', 1) => "%-M",
            ('m', 2) => "%M",
            ('s', 1) => "%-S",
            ('s', 2) => "%S",
            ('S', 3) => "%3f",
            ('S', 6) => "%6f",
            ('S', 9) => "%9f",
            ('S', n) => {
                return plan_err!(
                    "DATE_FORMAT pattern '{pattern}': {n} S letters (fraction of a second) are \
                     not supported; use SSS, SSSSSS or SSSSSSSSS"
                );
            }
            ('a', 1) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('Z', 1..=3) => "%z",
            ('X' | 'x', 3) => "%:z",
            ('z', 1..=3) => "%Z",
            (c, n) => {
                return plan_err!(
                    "DATE_FORMAT pattern '{pattern}': the letter '{c}' ({n} in a row) is not a \
                     date or time field Flumen formats (accepted: yyyy yy MM MMM MMMM dd D HH hh \
                     mm ss SSS a EEE EEEE Z XXX z; quote literal text: 'T'), and the pattern \
                     holds no % directive"
                );
            }
        };
        out.push_str(directive);
        i += run;
    }
    if !out.contains('%') {
        return plan_err!(
            "DATE_FORMAT pattern '{pattern}' holds no date or time field, so it would return \
             itself for every row; use Java letters (yyyy-MM-dd HH:mm:ss) or % directives"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::strftime;

    #[test]
    fn java_patterns_become_strftime() {
        assert_eq!(strftime("yyyy-MM-dd").unwrap(), "%Y-%m-%d");
        assert_eq!(
            strftime("yyyy-MM-dd HH:mm:ss.SSS").unwrap(),
            "%Y-%m-%d %H:%M:%S.%3f"
        );
        assert_eq!(strftime("yyyy-MM-dd'T'HH:mm").unwrap(), "%Y-%m-%dT%H:%M");
        assert_eq!(strftime("d MMM yy, h a").unwrap(), "%-d %b %y, %-I %p");
        assert_eq!(strftime("'it''s' HH").unwrap(), "it's %H");
        // strftime patterns are left as they are.
        assert_eq!(strftime("%Y/%m").unwrap(), "%Y/%m");
    }

    #[test]
    fn patterns_that_would_format_nothing_are_refused() {
        assert!(strftime("hello").unwrap_err().to_string().contains("'e'"));
        assert!(
            strftime("'day'")
                .unwrap_err()
                .to_string()
                .contains("holds no date or time field")
        );
        assert!(strftime("yyyy-MM-dd'T").is_err());
        assert!(strftime("ss.SS").is_err());
    }
}
