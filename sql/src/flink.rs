//! Flink's scalar functions that the standard Nexmark queries use and DataFusion does
//! not have, with Flink's semantics: `MOD(a, b)`, `HOUR(ts)`,
//! `REGEXP_EXTRACT(s, regex[, group])` and `SPLIT_INDEX(s, separator, index)`. Each is
//! vectorised over Arrow arrays; a bad argument (a regex that does not compile, a
//! group the regex does not have) is an error naming it, never a silent NULL.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Datum, Int64Array, StringArray, StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::numeric::rem;
use datafusion::arrow::compute::kernels::temporal::{DatePart, date_part};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The functions of this module.
pub fn udfs() -> Vec<ScalarUDF> {
    [
        Flink::Mod,
        Flink::Hour,
        Flink::RegexpExtract,
        Flink::SplitIndex,
        Flink::Proctime,
    ]
    .into_iter()
    .map(|f| {
        ScalarUDF::new_from_impl(Function {
            f,
            signature: match f {
                Flink::Proctime => Signature::nullary(Volatility::Volatile),
                _ => Signature::user_defined(Volatility::Immutable),
            },
        })
    })
    .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Flink {
    /// `MOD(a, b)`: the remainder of `a / b`, negative only when `a` is (Java's `%`):
    /// a `BIGINT` for integers, an exact `DECIMAL` when either is one, else `DOUBLE`.
    Mod,
    /// `HOUR(ts)`: the hour of a timestamp or time, 0 to 23, as a `BIGINT`.
    Hour,
    /// `REGEXP_EXTRACT(s, regex[, group])`: the text group `group` (default 0: the
    /// whole match) of the first match of `regex` in `s`; NULL when nothing matches or
    /// the group took no part in the match.
    RegexpExtract,
    /// `SPLIT_INDEX(s, separator, index)`: the `index`-th (from 0) piece of `s` split
    /// at every `separator`; NULL when there is no such piece.
    SplitIndex,
    /// `PROCTIME()`: in a query, [`rewrite_proctime`] makes it `_batch_time` before
    /// planning; the function itself is only reached where no query holds it, and
    /// says so.
    Proctime,
}

/// Flink's `PROCTIME()` (a row's processing time) is, in a micro-batch engine, the
/// time of the batch the row arrives in: each call becomes the column `_batch_time`
/// (Spark's processing-time windows likewise run on the trigger's time). A window over
/// it is a window over batch time: its size a multiple of the batch interval, closed
/// as the batches pass its end.
/// Whether `query` calls `PROCTIME()` (a batch query over tables, which has no batch
/// time, refuses it).
pub fn calls_proctime(query: &datafusion::sql::sqlparser::ast::Query) -> bool {
    use datafusion::sql::sqlparser::ast::{Expr, visit_expressions};
    visit_expressions(query, |e| match e {
        Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("proctime") => {
            std::ops::ControlFlow::Break(())
        }
        _ => std::ops::ControlFlow::Continue(()),
    })
    .is_break()
}

pub fn rewrite_proctime(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use datafusion::sql::sqlparser::ast::{Expr, FunctionArguments, Ident, visit_expressions_mut};
    let _ = visit_expressions_mut(statement, |e| {
        if let Expr::Function(f) = e
            && f.name.to_string().eq_ignore_ascii_case("proctime")
            && match &f.args {
                FunctionArguments::None => true,
                FunctionArguments::List(l) => l.args.is_empty(),
                FunctionArguments::Subquery(_) => false,
            }
        {
            *e = Expr::Identifier(Ident::new(crate::batch_time::BATCH_TIME_COLUMN));
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Function {
    f: Flink,
    signature: Signature,
}

fn is_text(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

fn is_decimal(t: &DataType) -> bool {
    matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

fn is_integer(t: &DataType) -> bool {
    t.is_integer() || *t == DataType::Null
}

impl ScalarUDFImpl for Function {
    fn name(&self) -> &str {
        match self.f {
            Flink::Mod => "mod",
            Flink::Hour => "hour",
            Flink::RegexpExtract => "regexp_extract",
            Flink::SplitIndex => "split_index",
            Flink::Proctime => "proctime",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let text = DataType::Utf8;
        match (self.f, args) {
            (Flink::Mod, [a, b]) if is_integer(a) && is_integer(b) => {
                Ok(vec![DataType::Int64, DataType::Int64])
            }
            (Flink::Mod, [a, b])
                if [a, b].iter().all(|t| is_integer(t) || is_decimal(t))
                    && [a, b].iter().any(|t| is_decimal(t)) =>
            {
                // Exact, as Flink's DECIMAL: both at the larger scale.
                let scale = [a, b]
                    .iter()
                    .map(|t| match t {
                        DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => *s,
                        _ => 0,
                    })
                    .max()
                    .unwrap_or(0);
                Ok(vec![DataType::Decimal128(38, scale); 2])
            }
            (Flink::Mod, [a, b])
                if (a.is_numeric() || *a == DataType::Null)
                    && (b.is_numeric() || *b == DataType::Null) =>
            {
                Ok(vec![DataType::Float64, DataType::Float64])
            }
            (Flink::Hour, [t]) => match t {
                DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_) => {
                    Ok(vec![t.clone()])
                }
                t if is_text(t) => Ok(vec![DataType::Timestamp(TimeUnit::Nanosecond, None)]),
                _ => plan_err!("HOUR(ts): ts must be a timestamp or a time, got {t}"),
            },
            (Flink::RegexpExtract, [s, r]) if is_text(s) && is_text(r) => Ok(vec![text; 2]),
            (Flink::RegexpExtract, [s, r, g]) if is_text(s) && is_text(r) && is_integer(g) => {
                Ok(vec![text.clone(), text, DataType::Int64])
            }
            (Flink::SplitIndex, [s, sep, i]) if is_text(s) && is_text(sep) && is_integer(i) => {
                Ok(vec![text.clone(), text, DataType::Int64])
            }
            (f, args) => {
                let usage = match f {
                    Flink::Mod => "MOD(a, b) takes two numbers",
                    Flink::Hour => "HOUR(ts) takes a timestamp",
                    Flink::RegexpExtract => {
                        "REGEXP_EXTRACT(s, regex[, group]) takes two texts and an optional integer"
                    }
                    Flink::SplitIndex => {
                        "SPLIT_INDEX(s, separator, index) takes two texts and an integer"
                    }
                    Flink::Proctime => "PROCTIME() takes no arguments",
                };
                let got: Vec<String> = args.iter().map(|t| t.to_string()).collect();
                plan_err!("{usage}, got ({})", got.join(", "))
            }
        }
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(match self.f {
            Flink::Proctime => {
                return plan_err!(
                    "PROCTIME() is the time of the micro-batch a row arrives in (_batch_time) \
                     and exists only in a query over streams"
                );
            }
            Flink::Mod => args.first().cloned().unwrap_or(DataType::Int64),
            Flink::Hour => DataType::Int64,
            Flink::RegexpExtract | Flink::SplitIndex => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let args = &args.args;
        let out: ArrayRef = match self.f {
            Flink::Proctime => return exec_err!("PROCTIME() is not supported"),
            Flink::Mod => {
                // Arrow's kernel takes a scalar as is: no column of copies of it.
                let datum = |v: &ColumnarValue| -> Result<Box<dyn Datum>> {
                    Ok(match v {
                        ColumnarValue::Array(a) => Box::new(Arc::clone(a)),
                        ColumnarValue::Scalar(s) => Box::new(s.to_scalar()?),
                    })
                };
                let out = rem(datum(&args[0])?.as_ref(), datum(&args[1])?.as_ref())
                    .map_err(|e| datafusion::common::exec_datafusion_err!("MOD(a, b): {e}"))?;
                if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                    return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
                }
                out
            }
            Flink::Hour => {
                let ts = args[0].to_array(rows)?;
                cast(&date_part(ts.as_ref(), DatePart::Hour)?, &DataType::Int64)?
            }
            Flink::RegexpExtract => Arc::new(regexp_extract(args, rows)?),
            Flink::SplitIndex => Arc::new(split_index(args, rows)?),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// A text argument, row by row: a scalar's one value for every row (never a column of
/// copies of it), or the array's.
enum Texts {
    One(Option<String>),
    Many(StringArray),
}

impl Texts {
    fn of(v: &ColumnarValue) -> Result<Self> {
        Ok(match v {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Utf8)? {
                ScalarValue::Utf8(t) => Texts::One(t),
                other => return exec_err!("not text: {other}"),
            },
            ColumnarValue::Array(a) => {
                Texts::Many(cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
            }
        })
    }

    fn get(&self, i: usize) -> Option<&str> {
        match self {
            Texts::One(t) => t.as_deref(),
            Texts::Many(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
}

/// An integer argument, row by row (see [`Texts`]).
enum Ints {
    One(Option<i64>),
    Many(Int64Array),
}

impl Ints {
    fn of(v: &ColumnarValue) -> Result<Self> {
        Ok(match v {
            ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(n) => Ints::One(n),
                other => return exec_err!("not an integer: {other}"),
            },
            ColumnarValue::Array(a) => Ints::Many(
                cast(a, &DataType::Int64)?
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .clone(),
            ),
        })
    }

    fn get(&self, i: usize) -> Option<i64> {
        match self {
            Ints::One(n) => *n,
            Ints::Many(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
}

/// A `REGEXP_EXTRACT` pattern compiled, with room for its groups' places.
struct Compiled {
    re: regex::Regex,
    locations: regex::CaptureLocations,
}

impl Compiled {
    fn new(pattern: &str) -> Result<Self> {
        match regex::Regex::new(pattern) {
            Ok(re) => Ok(Self {
                locations: re.capture_locations(),
                re,
            }),
            Err(e) => exec_err!("REGEXP_EXTRACT: '{pattern}' is not a regular expression: {e}"),
        }
    }

    /// Group `group` of the first match in `text`, if it matched.
    fn extract<'t>(&mut self, text: &'t str, group: i64) -> Result<Option<&'t str>> {
        if group < 0 || group as usize >= self.re.captures_len() {
            return exec_err!(
                "REGEXP_EXTRACT: '{}' has no group {group} (it has {})",
                self.re.as_str(),
                self.re.captures_len() - 1
            );
        }
        Ok(self
            .re
            .captures_read(&mut self.locations, text)
            .and_then(|_| self.locations.get(group as usize))
            .map(|(start, end)| &text[start..end]))
    }
}

fn regexp_extract(args: &[ColumnarValue], rows: usize) -> Result<StringArray> {
    let s = Texts::of(&args[0])?;
    let patterns = Texts::of(&args[1])?;
    let groups = args.get(2).map(Ints::of).transpose()?;
    // A literal pattern is compiled once; a column's, each once a batch.
    let mut literal = match &patterns {
        Texts::One(Some(p)) => Some(Compiled::new(p)?),
        _ => None,
    };
    let mut compiled: HashMap<String, Compiled> = HashMap::new();
    let mut out = StringBuilder::with_capacity(rows, 0);
    for i in 0..rows {
        let group = match &groups {
            Some(g) => g.get(i),
            None => Some(0),
        };
        let (Some(text), Some(pattern), Some(group)) = (s.get(i), patterns.get(i), group) else {
            out.append_null();
            continue;
        };
        let re = match literal.as_mut() {
            Some(re) => re,
            None => {
                if !compiled.contains_key(pattern) {
                    compiled.insert(pattern.to_string(), Compiled::new(pattern)?);
                }
                match compiled.get_mut(pattern) {
                    Some(re) => re,
                    None => return exec_err!("REGEXP_EXTRACT: '{pattern}' was not compiled"),
                }
            }
        };
        out.append_option(re.extract(text, group)?);
    }
    Ok(out.finish())
}

fn split_index(args: &[ColumnarValue], rows: usize) -> Result<StringArray> {
    let s = Texts::of(&args[0])?;
    let separators = Texts::of(&args[1])?;
    let indexes = Ints::of(&args[2])?;
    Ok((0..rows)
        .map(|i| {
            let (text, separator) = (s.get(i)?, separators.get(i)?);
            let index = usize::try_from(indexes.get(i)?).ok()?;
            if separator.is_empty() {
                return (index == 0).then_some(text);
            }
            text.split(separator).nth(index)
        })
        .collect())
}
