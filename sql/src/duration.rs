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
}
