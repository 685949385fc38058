//! `window(ts, size)`: the tumbling window a row's event time falls in, as a struct
//! `{start, end}` (Spark's `window` column), for `GROUP BY window(ts, INTERVAL ...)`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StructArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The name the function is registered under.
pub const WINDOW_FUNCTION: &str = "window";

pub fn window_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(WindowFunction {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

/// The struct type `window()` returns.
pub fn window_type() -> DataType {
    flumen_engine::ops::window_struct_type()
}

/// The first argument as timestamps in ms.
fn timestamps_ms(arg: &ColumnarValue, rows: usize) -> Result<TimestampMillisecondArray> {
    let ts = arg.clone().into_array(rows)?;
    let ts = cast(&ts, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    ts.as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .cloned()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("timestamp expected".into()))
}

/// A constant interval argument in ms.
fn constant_millis(arg: &ColumnarValue, what: &str) -> Result<i64> {
    match arg {
        ColumnarValue::Scalar(s) => interval_millis(s),
        ColumnarValue::Array(_) => exec_err!("{what} must be a constant"),
    }
}

/// `{start, end}` structs.
fn window_structs(
    start: TimestampMillisecondArray,
    end: TimestampMillisecondArray,
    nulls: Option<datafusion::arrow::buffer::NullBuffer>,
) -> Result<StructArray> {
    let DataType::Struct(fields) = window_type() else {
        return exec_err!("window type must be a struct");
    };
    Ok(StructArray::try_new(
        fields,
        vec![Arc::new(start) as ArrayRef, Arc::new(end)],
        nulls,
    )?)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    signature: Signature,
}

/// Milliseconds of an interval literal (months are refused: they vary in length).
pub fn interval_millis(v: &ScalarValue) -> Result<i64> {
    let ms = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => i.days as i64 * 86_400_000 + i.milliseconds as i64,
        ScalarValue::DurationMillisecond(Some(ms)) => *ms,
        other => return plan_err!("window sizes must be intervals in days or less, got {other}"),
    };
    if ms <= 0 {
        return plan_err!("window size must be positive");
    }
    Ok(ms)
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        WINDOW_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(2..=3).contains(&arg_types.len()) {
            return plan_err!(
                "window(ts, size [, slide]) takes 2 or 3 arguments, got {}",
                arg_types.len()
            );
        }
        let mut out = vec![DataType::Timestamp(TimeUnit::Millisecond, None)];
        for t in &arg_types[1..] {
            match t {
                DataType::Interval(_) | DataType::Duration(_) => out.push(t.clone()),
                other => return plan_err!("window sizes must be INTERVALs, got {other}"),
            }
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(window_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let size = constant_millis(&args.args[1], "window size")?;
        if let Some(slide) = args.args.get(2)
            && constant_millis(slide, "window slide")? != size
        {
            return exec_err!(
                "window(ts, size, slide) with slide != size assigns a row to several windows: \
                 use it as a GROUP BY key, where the planner expands it"
            );
        }
        let ts = timestamps_ms(&args.args[0], args.number_rows)?;
        let start: TimestampMillisecondArray = ts
            .iter()
            .map(|t| t.map(|t| t - t.rem_euclid(size)))
            .collect();
        let end: TimestampMillisecondArray = start.iter().map(|s| s.map(|s| s + size)).collect();
        let nulls = ts.nulls().cloned();
        Ok(ColumnarValue::Array(Arc::new(window_structs(
            start, end, nulls,
        )?)))
    }
}

/// The most windows one row may fall in (`size / slide` of a hopping window).
pub const MAX_WINDOWS_PER_ROW: i64 = 1000;

/// A hopping window puts each row in `size / slide` windows: refused past
/// [`MAX_WINDOWS_PER_ROW`], where a batch would grow without bound.
pub fn check_windows_per_row(size: i64, slide: i64) -> flumen_engine::Result<()> {
    let per_row = (size + slide.max(1) - 1) / slide.max(1);
    if per_row > MAX_WINDOWS_PER_ROW {
        return flumen_engine::plan_err!(
            "a hopping window of {} sliding every {} puts each row in {per_row} windows; at \
             most {MAX_WINDOWS_PER_ROW} are allowed: use a longer slide or a shorter window",
            flumen_engine::time::format_duration(std::time::Duration::from_millis(size as u64)),
            flumen_engine::time::format_duration(std::time::Duration::from_millis(slide as u64))
        );
    }
    Ok(())
}

/// Every window start that is a multiple of `slide` with `start <= t < start + size`.
/// With `slide > size` windows leave gaps: a time in a gap is in no window (as in
/// Spark and Flink), and the iterator is empty.
fn hop_starts(t: i64, size: i64, slide: i64) -> impl Iterator<Item = i64> {
    let latest = t - t.rem_euclid(slide);
    let mut first = latest;
    while first - slide + size > t {
        first -= slide;
    }
    let last = if latest + size > t {
        latest
    } else {
        latest - slide
    };
    (first..=last).step_by(slide as usize)
}

#[cfg(test)]
mod hop_tests {
    use super::hop_starts;

    #[test]
    fn a_time_between_windows_is_in_none() {
        // 1 s windows every 10 s: [0, 1000), [10000, 11000), ...
        assert_eq!(hop_starts(500, 1000, 10_000).collect::<Vec<_>>(), vec![0]);
        assert!(hop_starts(5000, 1000, 10_000).next().is_none());
        assert!(hop_starts(9999, 1000, 10_000).next().is_none());
        assert!(hop_starts(1000, 1000, 10_000).next().is_none());
        assert_eq!(
            hop_starts(10_000, 1000, 10_000).collect::<Vec<_>>(),
            vec![10_000]
        );
        // Overlapping windows: 10 s every 2 s.
        assert_eq!(
            hop_starts(5000, 10_000, 2000).collect::<Vec<_>>(),
            vec![-4000, -2000, 0, 2000, 4000]
        );
    }
}

/// The name of [`hop_windows_udf`].
pub const HOP_WINDOWS_FUNCTION: &str = "flumen_hop_windows";

/// `flumen_hop_windows(ts, size, slide)`: every `{start, end}` window of length `size`,
/// starting at multiples of `slide`, that contains `ts` (a list; the planner unnests
/// it for `GROUP BY window(ts, size, slide)`).
pub fn hop_windows_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(HopWindows {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct HopWindows {
    signature: Signature,
}

impl ScalarUDFImpl for HopWindows {
    fn name(&self) -> &str {
        HOP_WINDOWS_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        WindowFunction {
            signature: self.signature.clone(),
        }
        .coerce_types(arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new(
            "item",
            window_type(),
            true,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let size = constant_millis(&args.args[1], "window size")?;
        let Some(slide) = args.args.get(2) else {
            return exec_err!("flumen_hop_windows(ts, size, slide) needs a slide");
        };
        let slide = constant_millis(slide, "window slide")?;
        check_windows_per_row(size, slide).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let ts = timestamps_ms(&args.args[0], args.number_rows)?;
        let mut starts = Vec::new();
        let mut offsets = vec![0i32];
        let mut valid = Vec::with_capacity(ts.len());
        for t in ts.iter() {
            if let Some(t) = t {
                starts.extend(hop_starts(t, size, slide));
            }
            valid.push(t.is_some());
            offsets.push(starts.len() as i32);
        }
        let ends: Vec<i64> = starts.iter().map(|s| s + size).collect();
        let structs = window_structs(starts.into(), ends.into(), None)?;
        let list = datafusion::arrow::array::ListArray::try_new(
            Arc::new(Field::new("item", window_type(), true)),
            datafusion::arrow::buffer::OffsetBuffer::new(offsets.into()),
            Arc::new(structs),
            Some(valid.into()),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// The name of [`hop_window_ends_udf`].
pub const HOP_WINDOW_ENDS_FUNCTION: &str = "flumen_hop_window_ends";

/// `flumen_hop_window_ends(ts, size, slide)`: the end of every window of length `size`,
/// starting at multiples of `slide`, that contains `ts` (a list; the planner unnests
/// it for `GROUP BY window(ts, size, slide)`). Windows are keyed by their end, a plain
/// timestamp, so grouping hashes one primitive instead of a `{start, end}` struct; the
/// aggregate puts the struct back in its output.
pub fn hop_window_ends_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(HopWindowEnds {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct HopWindowEnds {
    signature: Signature,
}

impl ScalarUDFImpl for HopWindowEnds {
    fn name(&self) -> &str {
        HOP_WINDOW_ENDS_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        WindowFunction {
            signature: self.signature.clone(),
        }
        .coerce_types(arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new(
            "item",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let size = constant_millis(&args.args[1], "window size")?;
        let slide = match args.args.get(2) {
            Some(slide) => constant_millis(slide, "window slide")?,
            None => size,
        };
        check_windows_per_row(size, slide).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let ts = timestamps_ms(&args.args[0], args.number_rows)?;
        let per_row = (size + slide - 1) / slide;
        let mut ends = Vec::with_capacity(ts.len() * per_row.max(1) as usize);
        let mut offsets = Vec::with_capacity(ts.len() + 1);
        offsets.push(0i32);
        for t in ts.iter() {
            if let Some(t) = t {
                ends.extend(hop_starts(t, size, slide).map(|s| s + size));
            }
            offsets.push(ends.len() as i32);
        }
        let list = datafusion::arrow::array::ListArray::try_new(
            Arc::new(Field::new(
                "item",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            )),
            datafusion::arrow::buffer::OffsetBuffer::new(offsets.into()),
            Arc::new(TimestampMillisecondArray::from(ends)),
            ts.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

/// The name of [`window_end_udf`].
pub const WINDOW_END_FUNCTION: &str = "flumen_window_end";

/// `flumen_window_end(ts, size)`: the end of the tumbling window `ts` falls in, the
/// group key the planner uses for `GROUP BY window(ts, size)`.
pub fn window_end_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(WindowEnd {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowEnd {
    signature: Signature,
}

impl ScalarUDFImpl for WindowEnd {
    fn name(&self) -> &str {
        WINDOW_END_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        WindowFunction {
            signature: self.signature.clone(),
        }
        .coerce_types(arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Millisecond, None))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let size = constant_millis(&args.args[1], "window size")?;
        let ts = timestamps_ms(&args.args[0], args.number_rows)?;
        let end: TimestampMillisecondArray = ts.unary(|t| t - t.rem_euclid(size) + size);
        Ok(ColumnarValue::Array(Arc::new(end)))
    }
}

/// The name of [`session_window_udf`].
pub const SESSION_WINDOW_FUNCTION: &str = "session_window";

/// `session_window(ts, gap)`: the session a row opens on its own, `{ts, ts + gap}`.
/// As a GROUP BY key, the planner coalesces overlapping sessions of a key.
pub fn session_window_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(SessionWindow {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionWindow {
    signature: Signature,
}

impl ScalarUDFImpl for SessionWindow {
    fn name(&self) -> &str {
        SESSION_WINDOW_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return plan_err!(
                "session_window(ts, gap) takes 2 arguments, got {}",
                arg_types.len()
            );
        }
        WindowFunction {
            signature: self.signature.clone(),
        }
        .coerce_types(arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(window_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let gap = constant_millis(&args.args[1], "session gap")?;
        let ts = timestamps_ms(&args.args[0], args.number_rows)?;
        let end: TimestampMillisecondArray = ts.iter().map(|t| t.map(|t| t + gap)).collect();
        let nulls = ts.nulls().cloned();
        Ok(ColumnarValue::Array(Arc::new(window_structs(
            ts, end, nulls,
        )?)))
    }
}

/// The name of [`cumulate_window_udf`].
pub const CUMULATE_WINDOW_FUNCTION: &str = "cumulate_window";

/// The name of [`cumulate_windows_udf`].
pub const CUMULATE_WINDOWS_FUNCTION: &str = "flumen_cumulate_windows";

/// Flink's cumulating windows: windows of `size` aligned to multiples of it, each
/// emitted as it grows by `step` — `[start, start + step)`, `[start, start + 2 step)`,
/// …, `[start, start + size)`. `size` must be a multiple of `step`.
pub fn check_cumulate(step: i64, size: i64) -> flumen_engine::Result<()> {
    let fmt =
        |ms: i64| flumen_engine::time::format_duration(std::time::Duration::from_millis(ms as u64));
    if size % step != 0 {
        return flumen_engine::plan_err!(
            "a cumulating window's size ({}) must be a whole multiple of its step ({})",
            fmt(size),
            fmt(step)
        );
    }
    if size / step > MAX_WINDOWS_PER_ROW {
        return flumen_engine::plan_err!(
            "a cumulating window of {} growing every {} puts each row in up to {} windows; at \
             most {MAX_WINDOWS_PER_ROW} are allowed: use a longer step or a shorter window",
            fmt(size),
            fmt(step),
            size / step
        );
    }
    Ok(())
}

/// `cumulate_window(ts, step, size)`: the GROUP BY key of a cumulating window. A row
/// falls in several windows, so the planner expands the key; called row by row it is
/// an error.
pub fn cumulate_window_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(CumulateWindow {
        signature: Signature::user_defined(Volatility::Immutable),
        name: CUMULATE_WINDOW_FUNCTION,
    })
}

/// `flumen_cumulate_windows(ts, step, size)`: every cumulating window `{start, end}`
/// that contains `ts` (a list, which the planner unnests).
pub fn cumulate_windows_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(CumulateWindow {
        signature: Signature::user_defined(Volatility::Immutable),
        name: CUMULATE_WINDOWS_FUNCTION,
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CumulateWindow {
    signature: Signature,
    name: &'static str,
}

impl ScalarUDFImpl for CumulateWindow {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 3 {
            return plan_err!(
                "{}(ts, step, size) takes 3 arguments, got {}",
                self.name,
                arg_types.len()
            );
        }
        WindowFunction {
            signature: self.signature.clone(),
        }
        .coerce_types(arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.name == CUMULATE_WINDOW_FUNCTION {
            window_type()
        } else {
            DataType::List(Arc::new(Field::new("item", window_type(), true)))
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if self.name == CUMULATE_WINDOW_FUNCTION {
            return exec_err!(
                "cumulate_window(ts, step, size) assigns a row to several windows: use it as a \
                 GROUP BY key, where the planner expands it, or CUMULATE(stream, ts, step, size) \
                 in FROM"
            );
        }
        let step = constant_millis(&args.args[1], "window step")?;
        let size = constant_millis(&args.args[2], "window size")?;
        check_cumulate(step, size).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let ts = timestamps_ms(&args.args[0], args.number_rows)?;
        let (mut starts, mut ends) = (Vec::new(), Vec::new());
        let mut offsets = Vec::with_capacity(ts.len() + 1);
        offsets.push(0i32);
        for t in ts.iter() {
            if let Some(t) = t {
                let start = t - t.rem_euclid(size);
                // The first window that holds t ends at the step boundary after it.
                let first = start + (t - start) / step * step + step;
                for end in (first..=start + size).step_by(step as usize) {
                    starts.push(start);
                    ends.push(end);
                }
            }
            offsets.push(starts.len() as i32);
        }
        let structs = window_structs(starts.into(), ends.into(), None)?;
        let list = datafusion::arrow::array::ListArray::try_new(
            Arc::new(Field::new("item", window_type(), true)),
            datafusion::arrow::buffer::OffsetBuffer::new(offsets.into()),
            Arc::new(structs),
            ts.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list)))
    }
}

#[cfg(test)]
mod cumulate_tests {
    use super::*;
    use datafusion::arrow::array::ListArray;

    #[test]
    fn a_row_is_in_every_growing_window_that_reaches_past_it() {
        // Step 2 s, size 6 s: a row at 3.5 s is in [0, 4) and [0, 6); one at 6 s in
        // [6, 8), [6, 10), [6, 12); a null row in none.
        let ts = TimestampMillisecondArray::from(vec![Some(3500), Some(6000), None]);
        let interval =
            |ms: i64| ColumnarValue::Scalar(ScalarValue::new_interval_mdn(0, 0, ms * 1_000_000));
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(Arc::new(ts)),
                interval(2000),
                interval(6000),
            ],
            arg_fields: vec![],
            number_rows: 3,
            return_field: Arc::new(Field::new(
                "w",
                DataType::List(Arc::new(Field::new("item", window_type(), true))),
                true,
            )),
            config_options: Arc::new(Default::default()),
        };
        let ColumnarValue::Array(out) = cumulate_windows_udf().invoke_with_args(args).unwrap()
        else {
            panic!("array expected")
        };
        let list = out.as_any().downcast_ref::<ListArray>().unwrap();
        let windows = |i: usize| -> Vec<(i64, i64)> {
            let v = list.value(i);
            let s = v.as_any().downcast_ref::<StructArray>().unwrap();
            let col = |c: usize| {
                s.column(c)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .unwrap()
                    .clone()
            };
            let (a, b) = (col(0), col(1));
            (0..s.len()).map(|j| (a.value(j), b.value(j))).collect()
        };
        assert_eq!(windows(0), vec![(0, 4000), (0, 6000)]);
        assert_eq!(
            windows(1),
            vec![(6000, 8000), (6000, 10_000), (6000, 12_000)]
        );
        assert!(list.is_null(2));
        assert!(check_cumulate(4000, 6000).is_err());
        assert!(check_cumulate(1, 6000).is_err());
    }
}
