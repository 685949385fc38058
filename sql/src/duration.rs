//! Durations as users write them: `'1 second'`, `'500 ms'`, `'2 minutes'`, `5s`,
//! and SQL intervals (`INTERVAL '5' SECOND`).

use std::time::Duration;

use datafusion::sql::sqlparser::ast::{DateTimeField, Expr as SqlExpr, Interval, Value};
use flumen_engine::{Result, plan_err};

pub use flumen_engine::time::parse_duration;
use flumen_engine::time::parse_duration_text as parse;

/// The duration of a SQL `INTERVAL '5' SECOND` / `INTERVAL '5 seconds'` (zero allowed).
pub fn interval_duration(interval: &Interval) -> Result<Duration> {
    let SqlExpr::Value(v) = interval.value.as_ref() else {
        return plan_err!("interval value must be a literal, got {}", interval.value);
    };
    let text = match &v.value {
        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
        Value::Number(n, _) => n.clone(),
        other => return plan_err!("interval value must be a literal, got {other}"),
    };
    let unit = match &interval.leading_field {
        None => "",
        Some(DateTimeField::Millisecond | DateTimeField::Milliseconds) => "ms",
        Some(DateTimeField::Second | DateTimeField::Seconds) => "s",
        Some(DateTimeField::Minute | DateTimeField::Minutes) => "m",
        Some(DateTimeField::Hour | DateTimeField::Hours) => "h",
        Some(DateTimeField::Day | DateTimeField::Days) => "d",
        Some(other) => return plan_err!("unsupported interval unit {other}"),
    };
    parse(&format!("{text} {unit}"), true)
}

/// `text` (a plan line) with DataFusion's interval literals written as SQL intervals:
/// `IntervalMonthDayNano("IntervalMonthDayNano { months: 0, days: 0, nanoseconds:
/// 10000000000 }")` becomes `INTERVAL '10s'`.
pub fn readable_intervals(text: &str) -> String {
    const OPEN: &str = "IntervalMonthDayNano(\"IntervalMonthDayNano { ";
    const CLOSE: &str = " }\")";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let body = &rest[start + OPEN.len()..];
        let Some(end) = body.find(CLOSE) else { break };
        let field = |name: &str| -> Option<i64> {
            body[..end]
                .split(", ")
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        };
        out.push_str(&rest[..start]);
        match (field("months"), field("days"), field("nanoseconds")) {
            (Some(months), Some(days), Some(ns)) => {
                let mut parts = Vec::new();
                if months != 0 {
                    parts.push(format!("{months} months"));
                }
                if days != 0 {
                    parts.push(format!("{days} days"));
                }
                if ns != 0 || parts.is_empty() {
                    let exact = ns % 1_000_000 == 0 && ns >= 0;
                    parts.push(if exact {
                        flumen_engine::time::format_duration(Duration::from_nanos(ns as u64))
                    } else {
                        format!("{ns} ns")
                    });
                }
                out.push_str(&format!("INTERVAL '{}'", parts.join(" ")));
            }
            _ => out.push_str(&rest[start..start + OPEN.len() + end + CLOSE.len()]),
        }
        rest = &body[end + CLOSE.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1 second").unwrap(), Duration::from_secs(1));
        assert_eq!(
            parse_duration("'500 ms'").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration("2 minutes").unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration("0.5 seconds").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_duration("3 fortnights").unwrap_err().to_string(),
            "unknown time unit 'fortnights' in '3 fortnights'; use ms, second(s), minute(s), hour(s) or day(s)"
        );
    }

    #[test]
    fn interval_literals_read_as_sql_intervals() {
        let line = "group by [window(bids.ts, IntervalMonthDayNano(\"IntervalMonthDayNano { months: 0, days: 0, nanoseconds: 10000000000 }\"), IntervalMonthDayNano(\"IntervalMonthDayNano { months: 1, days: 2, nanoseconds: 1500 }\"))]";
        assert_eq!(
            readable_intervals(line),
            "group by [window(bids.ts, INTERVAL '10s', INTERVAL '1 months 2 days 1500 ns')]"
        );
        assert_eq!(readable_intervals("no interval"), "no interval");
        let cut = "x IntervalMonthDayNano(\"IntervalMonthDayNano { months: 0";
        assert_eq!(readable_intervals(cut), cut);
    }
}
