//! ksqlDB's window clause, rewritten onto Flumen's `window()`:
//!
//! ```text
//! SELECT k, WINDOWSTART, COUNT(*) FROM s WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY k
//!   ⇒ SELECT k, window(ts, INTERVAL '10' SECOND)['start'], COUNT(*) FROM s
//!        GROUP BY window(ts, INTERVAL '10' SECOND), k
//! ```
//!
//! `ts` is the stream's event-time column (its watermark / `TIMESTAMP` option), else
//! `_batch_time`.

use flumen_engine::{Result, plan_err};

use crate::batch_time::BATCH_TIME_COLUMN;

/// Case-insensitive search for `word` as a whole word from `from`.
fn find_word(upper: &str, word: &str, from: usize) -> Option<usize> {
    let bytes = upper.as_bytes();
    let mut start = from;
    while let Some(i) = upper[start..].find(word) {
        let at = start + i;
        let before_ok =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let end = at + word.len();
        let after_ok =
            end >= bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_');
        if before_ok && after_ok {
            return Some(at);
        }
        start = at + word.len();
    }
    None
}

/// `10 SECONDS` → `INTERVAL '10' SECOND`.
fn interval(text: &str) -> Result<String> {
    let mut parts = text.split_whitespace();
    let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return plan_err!(
            "window size '{}' must be '<number> <unit>', e.g. 10 SECONDS",
            text.trim()
        );
    };
    if n.parse::<u64>().is_err() {
        return plan_err!(
            "window size '{}' must start with a whole number",
            text.trim()
        );
    }
    let unit = match unit.to_ascii_uppercase().trim_end_matches('S') {
        "MILLISECOND" => "MILLISECOND",
        "SECOND" => "SECOND",
        "MINUTE" => "MINUTE",
        "HOUR" => "HOUR",
        "DAY" => "DAY",
        other => {
            return plan_err!(
                "unknown window unit '{other}'; use MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS"
            );
        }
    };
    Ok(format!("INTERVAL '{n}' {unit}"))
}

/// Rewrites a ksqlDB `WINDOW ...` clause, if any. `event_time_of(stream)` gives the
/// stream's event-time column.
pub fn rewrite_window_clause(
    sql: &str,
    event_time_of: impl Fn(&str) -> Option<String>,
) -> Result<String> {
    let upper = sql.to_ascii_uppercase();
    let Some(w) = find_word(&upper, "WINDOW", 0) else {
        return Ok(sql.to_string());
    };
    let after = upper[w + "WINDOW".len()..].trim_start();
    let kind = ["TUMBLING", "HOPPING", "SESSION"]
        .into_iter()
        .find(|k| after.starts_with(k));
    let Some(kind) = kind else {
        return Ok(sql.to_string());
    };
    let open = match upper[w..].find('(') {
        Some(i) => w + i,
        None => return plan_err!("WINDOW {kind} needs (SIZE ...)"),
    };
    let close = match upper[open..].find(')') {
        Some(i) => open + i,
        None => return plan_err!("WINDOW {kind} (...: missing ')'"),
    };
    let inner = sql[open + 1..close].trim();
    // The stream: the first name after FROM.
    let stream = find_word(&upper, "FROM", 0)
        .and_then(|f| sql[f + 4..].split_whitespace().next())
        .map(|s| {
            s.trim_matches(|c: char| c == ';' || c == '"')
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let ts = event_time_of(&stream).unwrap_or_else(|| BATCH_TIME_COLUMN.to_string());
    if kind == "SESSION" {
        let window = format!("session_window({ts}, {})", interval(inner)?);
        return splice(sql, w, close, kind, &window);
    }
    let inner_upper = inner.to_ascii_uppercase();
    let Some(rest) = inner_upper.strip_prefix("SIZE") else {
        return plan_err!("WINDOW {kind} ({inner}): expected SIZE <n> <unit>");
    };
    let (size, advance) = match rest.find(',') {
        Some(c) => {
            let adv = rest[c + 1..].trim();
            let Some(adv) = adv.strip_prefix("ADVANCE BY") else {
                return plan_err!(
                    "WINDOW {kind} ({inner}): expected ADVANCE BY <n> <unit> after the size"
                );
            };
            (interval(&rest[..c])?, Some(interval(adv)?))
        }
        None => (interval(rest)?, None),
    };
    if kind == "HOPPING" && advance.is_none() {
        return plan_err!("WINDOW HOPPING needs ADVANCE BY <n> <unit>");
    }
    let window = match advance {
        Some(a) => format!("window({ts}, {size}, {a})"),
        None => format!("window({ts}, {size})"),
    };
    splice(sql, w, close, kind, &window)
}

/// Removes the clause `sql[w..=close]`, groups by `window` first, and replaces
/// WINDOWSTART / WINDOWEND.
fn splice(sql: &str, w: usize, close: usize, kind: &str, window: &str) -> Result<String> {
    let mut out = format!("{} {}", sql[..w].trim_end(), sql[close + 1..].trim_start());
    let out_upper = out.to_ascii_uppercase();
    let Some(g) = find_word(&out_upper, "GROUP", 0) else {
        return plan_err!("WINDOW {kind} needs a GROUP BY");
    };
    let Some(by) = find_word(&out_upper, "BY", g) else {
        return plan_err!("WINDOW {kind} needs a GROUP BY");
    };
    out.insert_str(by + 2, &format!(" {window},"));
    for (word, field) in [("WINDOWSTART", "start"), ("WINDOWEND", "end")] {
        while let Some(i) = find_word(&out.to_ascii_uppercase(), word, 0) {
            out.replace_range(i..i + word.len(), &format!("{window}['{field}']"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_and_hopping() {
        let ts = |s: &str| (s == "pageviews").then(|| "ts".to_string());
        assert_eq!(
            rewrite_window_clause(
                "SELECT user_id, WINDOWSTART AS ws, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY user_id EMIT FINAL",
                ts
            )
            .unwrap(),
            "SELECT user_id, window(ts, INTERVAL '10' SECOND)['start'] AS ws, COUNT(*) FROM pageviews GROUP BY window(ts, INTERVAL '10' SECOND), user_id EMIT FINAL"
        );
        assert_eq!(
            rewrite_window_clause(
                "SELECT k FROM s WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 30 SECONDS) GROUP BY k",
                |_| None
            )
            .unwrap(),
            "SELECT k FROM s GROUP BY window(_batch_time, INTERVAL '1' MINUTE, INTERVAL '30' SECOND), k"
        );
        assert_eq!(
            rewrite_window_clause(
                "SELECT k, WINDOWEND FROM s WINDOW SESSION (30 SECONDS) GROUP BY k",
                |_| None
            )
            .unwrap(),
            "SELECT k, session_window(_batch_time, INTERVAL '30' SECOND)['end'] FROM s GROUP BY session_window(_batch_time, INTERVAL '30' SECOND), k"
        );
        assert_eq!(
            rewrite_window_clause("SELECT window FROM t", |_| None).unwrap(),
            "SELECT window FROM t"
        );
    }
}
