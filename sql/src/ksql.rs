//! ksqlDB's window clause, onto Flumen's `window()`:
//!
//! ```text
//! SELECT k, WINDOWSTART, COUNT(*) FROM s WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY k
//!   ⇒ SELECT k, window(ts, INTERVAL '10' SECOND)['start'], COUNT(*) FROM s
//!        GROUP BY window(ts, INTERVAL '10' SECOND), k
//! ```
//!
//! The clause is not SQL, so it is taken off the query's tokens before parsing
//! ([`KsqlWindow::take`]); the rest is a pass over the parsed tree
//! ([`KsqlWindow::apply`]). `ts` is the event-time column (its watermark /
//! `TIMESTAMP` option) of the stream the `SELECT` reads (through a subquery in FROM:
//! the stream the subquery reads), else `_batch_time`.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Query, SetExpr, TableFactor, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};
use flumen_engine::{Error, Result, plan_err};

use crate::batch_time::BATCH_TIME_COLUMN;
use crate::query::word;

/// A ksqlDB `WINDOW TUMBLING | HOPPING | SESSION (...)` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KsqlWindow {
    /// `TUMBLING`, `HOPPING` or `SESSION`.
    kind: String,
    /// The size (a session's gap), as an SQL interval.
    size: String,
    /// A hopping window's `ADVANCE BY`, as an SQL interval.
    advance: Option<String>,
}

impl KsqlWindow {
    /// Takes the clause off `tokens` (outside parentheses, so never from a subquery
    /// or a string literal), if there is one.
    pub fn take(tokens: &mut Vec<TokenWithSpan>) -> Result<Option<KsqlWindow>> {
        let mut depth = 0i32;
        let mut start = None;
        for (i, t) in tokens.iter().enumerate() {
            match t.token {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                _ => {}
            }
            if depth == 0 && word(t).as_deref() == Some("WINDOW") {
                let mut rest = tokens[i + 1..]
                    .iter()
                    .filter(|t| !matches!(t.token, Token::Whitespace(_)));
                let kind = rest.next().and_then(word);
                let open = rest.next().is_some_and(|t| t.token == Token::LParen);
                if open
                    && let Some(kind) = kind
                    && matches!(kind.as_str(), "TUMBLING" | "HOPPING" | "SESSION")
                {
                    start = Some((i, kind));
                    break;
                }
            }
        }
        let Some((start, kind)) = start else {
            return Ok(None);
        };
        let open = start
            + tokens[start..]
                .iter()
                .position(|t| t.token == Token::LParen)
                .expect("the clause has its '('");
        let mut depth = 0;
        let mut close = None;
        for (i, t) in tokens.iter().enumerate().skip(open) {
            match t.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else {
            return plan_err!("WINDOW {kind} (...: missing ')'");
        };
        let inner: String = tokens[open + 1..close]
            .iter()
            .map(|t| t.token.to_string())
            .collect();
        let window = Self::parse(kind, inner.trim())?;
        tokens.drain(start..=close);
        Ok(Some(window))
    }

    /// `SIZE 10 SECONDS`, `SIZE 1 MINUTE, ADVANCE BY 30 SECONDS`, or a session's
    /// `30 SECONDS`.
    fn parse(kind: String, inner: &str) -> Result<KsqlWindow> {
        if kind == "SESSION" {
            return Ok(KsqlWindow {
                kind,
                size: interval(inner)?,
                advance: None,
            });
        }
        let upper = inner.to_ascii_uppercase();
        let Some(rest) = upper.strip_prefix("SIZE") else {
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
        Ok(KsqlWindow {
            kind,
            size,
            advance,
        })
    }

    /// Groups the query's `SELECT` by the window first and puts the window's bounds
    /// where `WINDOWSTART` / `WINDOWEND` are named.
    pub fn apply(
        &self,
        query: &mut Query,
        event_time_of: impl Fn(&str) -> Option<String>,
    ) -> Result<()> {
        let kind = &self.kind;
        let SetExpr::Select(select) = query.body.as_mut() else {
            return plan_err!("WINDOW {kind} applies to one SELECT");
        };
        let stream = select.from.first().and_then(|t| stream_of(&t.relation));
        let ts = stream
            .as_deref()
            .and_then(event_time_of)
            .unwrap_or_else(|| BATCH_TIME_COLUMN.to_string());
        let window = match (kind.as_str(), &self.advance) {
            ("SESSION", _) => format!("session_window({ts}, {})", self.size),
            (_, Some(a)) => format!("window({ts}, {}, {a})", self.size),
            (_, None) => format!("window({ts}, {})", self.size),
        };
        match &mut select.group_by {
            GroupByExpr::Expressions(exprs, _) if !exprs.is_empty() => {
                exprs.insert(0, parse_expr(&window)?);
            }
            _ => return plan_err!("WINDOW {kind} needs a GROUP BY"),
        }
        let start = parse_expr(&format!("{window}['start']"))?;
        let end = parse_expr(&format!("{window}['end']"))?;
        let _ = visit_expressions_mut(query, |e: &mut Expr| {
            if let Expr::Identifier(i) = e
                && i.quote_style.is_none()
            {
                if i.value.eq_ignore_ascii_case("WINDOWSTART") {
                    *e = start.clone();
                } else if i.value.eq_ignore_ascii_case("WINDOWEND") {
                    *e = end.clone();
                }
            }
            ControlFlow::<()>::Continue(())
        });
        Ok(())
    }
}

/// The stream a relation reads: a table's name, or for a subquery the stream its own
/// first relation reads (its event-time column must then be in its SELECT list).
fn stream_of(relation: &TableFactor) -> Option<String> {
    match relation {
        TableFactor::Table { name, .. } => name.0.last().and_then(|p| p.as_ident()).map(|i| {
            if i.quote_style.is_some() {
                i.value.clone()
            } else {
                i.value.to_ascii_lowercase()
            }
        }),
        TableFactor::Derived { subquery, .. } => match subquery.body.as_ref() {
            SetExpr::Select(s) => s.from.first().and_then(|t| stream_of(&t.relation)),
            _ => None,
        },
        _ => None,
    }
}

fn parse_expr(text: &str) -> Result<Expr> {
    Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::Plan(format!("internal rewrite of a ksqlDB window: {e}")))
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

#[cfg(test)]
mod tests {
    use crate::query::ParsedQuery;

    fn rewrite(sql: &str, ts: impl Fn(&str) -> Option<String>) -> String {
        let q = ParsedQuery::parse(sql).unwrap();
        q.bind(ts).unwrap().to_string()
    }

    #[test]
    fn tumbling_hopping_and_session() {
        let ts = |s: &str| (s == "pageviews").then(|| "ts".to_string());
        assert_eq!(
            rewrite(
                "SELECT user_id, WINDOWSTART AS ws, COUNT(*) FROM pageviews WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY user_id EMIT FINAL",
                ts
            ),
            "SELECT user_id, window(ts, INTERVAL '10' SECOND)['start'] AS ws, COUNT(*) FROM pageviews GROUP BY window(ts, INTERVAL '10' SECOND), user_id"
        );
        assert_eq!(
            rewrite(
                "SELECT k FROM s WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 30 SECONDS) GROUP BY k",
                |_| None
            ),
            "SELECT k FROM s GROUP BY window(_batch_time, INTERVAL '1' MINUTE, INTERVAL '30' SECOND), k"
        );
        assert_eq!(
            rewrite(
                "SELECT k, WINDOWEND FROM s WINDOW SESSION (30 SECONDS) GROUP BY k",
                |_| None
            ),
            "SELECT k, session_window(_batch_time, INTERVAL '30' SECOND)['end'] FROM s GROUP BY session_window(_batch_time, INTERVAL '30' SECOND), k"
        );
    }

    #[test]
    fn what_only_looks_like_a_window_clause_is_left_alone() {
        for sql in [
            "SELECT window FROM t",
            "SELECT 'WINDOW TUMBLING (SIZE 1 SECOND)' AS w FROM t",
            "SELECT x FROM t WINDOW w AS (PARTITION BY x)",
        ] {
            let q = ParsedQuery::parse(sql).unwrap();
            assert!(q.window.is_none(), "{sql}");
        }
        // Lower case is ksqlDB too; the stream is the relation, not the first word
        // after a FROM somewhere in the text.
        let ts = |s: &str| (s == "clicks").then(|| "ts".to_string());
        assert_eq!(
            rewrite(
                "select extract(second FROM windowstart) AS s, count(*) from clicks window tumbling (size 5 seconds) group by page",
                ts
            ),
            "SELECT EXTRACT(SECOND FROM window(ts, INTERVAL '5' SECOND)['start']) AS s, count(*) FROM clicks GROUP BY window(ts, INTERVAL '5' SECOND), page"
        );
    }

    #[test]
    fn through_a_subquery_the_window_is_on_its_stream_s_event_time() {
        let ts = |s: &str| (s == "views").then(|| "ts".to_string());
        assert_eq!(
            rewrite(
                "SELECT page, COUNT(*) FROM (SELECT page, ts FROM views) AS v WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY page",
                ts
            ),
            "SELECT page, COUNT(*) FROM (SELECT page, ts FROM views) AS v GROUP BY window(ts, INTERVAL '10' SECOND), page"
        );
    }

    #[test]
    fn a_wrong_clause_says_what_is_expected() {
        let err = |sql: &str| ParsedQuery::parse(sql).unwrap_err().to_string();
        assert_eq!(
            err("SELECT k FROM s WINDOW HOPPING (SIZE 1 MINUTE) GROUP BY k"),
            "WINDOW HOPPING needs ADVANCE BY <n> <unit>"
        );
        assert_eq!(
            err("SELECT k FROM s WINDOW TUMBLING (SIZE 10 FORTNIGHTS) GROUP BY k"),
            "unknown window unit 'FORTNIGHT'; use MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS"
        );
        let q = ParsedQuery::parse("SELECT k FROM s WINDOW TUMBLING (SIZE 1 SECOND)").unwrap();
        assert_eq!(
            q.bind(|_| None).unwrap_err().to_string(),
            "WINDOW TUMBLING needs a GROUP BY"
        );
    }
}
