//! Batch times and durations.

use std::fmt;
use std::time::Duration;

use crate::{Result, plan_err};

/// A point in time in milliseconds since the Unix epoch: the time of a batch, as in
/// Spark Streaming's `Time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(i64);

impl Time {
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `d`.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0 + d.as_millis() as i64)
    }

    /// This time minus `d`.
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0 - d.as_millis() as i64)
    }

    /// The smallest multiple of `interval` strictly after this time.
    pub fn next_multiple_of(self, interval: Duration) -> Self {
        let i = interval.as_millis() as i64;
        Self((self.0.div_euclid(i) + 1) * i)
    }

    /// Whether `self - zero` is a whole number of `slide`s.
    pub fn is_multiple_of(self, zero: Time, slide: Duration) -> bool {
        (self.0 - zero.0).rem_euclid(slide.as_millis() as i64) == 0
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

/// Parses `'<number> <unit>'` or `'<number><unit>'`; the unit defaults to seconds.
/// The duration must be positive.
/// The longest duration accepted (366 days, in ms): anything longer is a typo, and
/// batch times must stay far from the edges of their range.
pub const MAX_DURATION_MS: u64 = 366 * 86_400_000;

pub fn parse_duration(text: &str) -> Result<Duration> {
    parse_duration_text(text, false)
}

/// [`parse_duration`], optionally accepting zero.
pub fn parse_duration_text(text: &str, allow_zero: bool) -> Result<Duration> {
    let t = text.trim().trim_matches('\'').trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let Ok(n) = num.parse::<f64>() else {
        return plan_err!(
            "'{text}' is not a duration; write e.g. '1 second', '500 ms' or '2 minutes'"
        );
    };
    let ms = match unit.trim() {
        "" if n != 0.0 => {
            return plan_err!(
                "'{text}' has no time unit; write e.g. '{num} seconds' or '{num} ms'"
            );
        }
        "" => 1.0,
        "ms" | "millisecond" | "milliseconds" | "msec" | "msecs" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        other => {
            return plan_err!(
                "unknown time unit '{other}' in '{text}'; use ms, second(s), minute(s), hour(s) or day(s)"
            );
        }
    };
    let total = n * ms;
    if total == 0.0 && allow_zero {
        return Ok(Duration::ZERO);
    }
    if total <= 0.0 || total.fract() != 0.0 {
        return plan_err!("duration '{text}' must be a positive whole number of milliseconds");
    }
    if total > MAX_DURATION_MS as f64 {
        return plan_err!("duration '{text}' is longer than 366 days, the longest Flumen takes");
    }
    Ok(Duration::from_millis(total as u64))
}

/// A duration in the shortest exact human form: `500ms`, `5s`, `2m`, `1h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Checks that `d` (what the user called `what`) is a whole, positive multiple of
/// `unit` (called `unit_what`), naming the nearest valid choices when it is not.
pub fn check_multiple(
    what: &str,
    d: Duration,
    unit_what: &str,
    unit: Duration,
) -> crate::Result<()> {
    let (dm, um) = (d.as_millis(), unit.as_millis());
    if dm == 0 {
        return crate::plan_err!("{what} must be positive, got {}", format_duration(d));
    }
    if um == 0 || dm % um != 0 {
        let lower = (dm / um.max(1)) * um;
        let upper = lower + um;
        let suggestion = if lower == 0 {
            format!(
                "use {}",
                format_duration(Duration::from_millis(upper as u64))
            )
        } else {
            format!(
                "use {} or {}",
                format_duration(Duration::from_millis(lower as u64)),
                format_duration(Duration::from_millis(upper as u64))
            )
        };
        return crate::plan_err!(
            "{what} {} is not a multiple of the {unit_what} {}; {suggestion}",
            format_duration(d),
            format_duration(unit)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiples_and_messages() {
        let s = Duration::from_secs;
        assert!(check_multiple("window length", s(10), "batch interval", s(5)).is_ok());
        let err = check_multiple("window length", s(5), "batch interval", s(2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "window length 5s is not a multiple of the batch interval 2s; use 4s or 6s"
        );
        let err = check_multiple("slide", Duration::from_millis(500), "batch interval", s(1))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "slide 500ms is not a multiple of the batch interval 1s; use 1s"
        );
        assert_eq!(
            Time::from_millis(1500).next_multiple_of(s(1)),
            Time::from_millis(2000)
        );
        assert_eq!(
            Time::from_millis(2000).next_multiple_of(s(1)),
            Time::from_millis(3000)
        );
    }
}
