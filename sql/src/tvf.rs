//! The window table functions `TUMBLE(stream, ts, size)`, `HOP(stream, ts, slide,
//! size)` and `SESSION(stream, ts, gap)`, rewritten onto `window()` and
//! `session_window()` before DataFusion plans the query:
//!
//! ```text
//! SELECT window_start, k, count(*) FROM TUMBLE(s, ts, INTERVAL '10' SECOND)
//!   GROUP BY window_start, window_end, k
//!   ⇒ SELECT window(ts, INTERVAL '10' SECOND)['start'] AS window_start, k, count(*) FROM s
//!        GROUP BY k, window(ts, INTERVAL '10' SECOND)
//! SELECT * FROM TUMBLE(s, ts, INTERVAL '10' SECOND)          (no GROUP BY)
//!   ⇒ SELECT * FROM (SELECT *, window(..)['start'] AS window_start,
//!                         window(..)['end'] AS window_end FROM s) AS s
//! ```
//!
//! Grouping by the window (rather than by two plain columns) is what lets the
//! planner close windows with the watermark and drop their state.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, GroupByExpr, Query, Select, SetExpr, Statement,
    TableFactor, VisitMut, VisitorMut, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use flumen_engine::{Error, Result, plan_err};

const FUNCTIONS: [&str; 4] = ["TUMBLE", "HOP", "SESSION", "CUMULATE"];

/// Rewrites the window table functions in `statement`, a pass over its tree;
/// whether it had any.
pub fn rewrite_statement(statement: &mut Statement) -> Result<bool> {
    let mut rewriter = Rewriter {
        changed: false,
        error: None,
    };
    let _ = statement.visit(&mut rewriter);
    if let Some(e) = rewriter.error {
        return Err(e);
    }
    Ok(rewriter.changed)
}

struct Rewriter {
    changed: bool,
    error: Option<Error>,
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let Err(e) = rewrite_set_expr(&mut query.body, &mut self.changed) {
            self.error = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

fn rewrite_set_expr(body: &mut SetExpr, changed: &mut bool) -> Result<()> {
    match body {
        SetExpr::Select(select) => rewrite_select(select, changed),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set_expr(left, changed)?;
            rewrite_set_expr(right, changed)
        }
        _ => Ok(()),
    }
}

/// A window table function call found in a FROM clause.
struct Call {
    kind: &'static str,
    stream: String,
    /// `window(ts, size [, slide])` or `session_window(ts, gap)`.
    window: String,
    ts: String,
    /// HOP's (size, slide); CUMULATE's (step, size).
    hop: Option<(String, String)>,
    /// Flink's `SESSION(TABLE t [PARTITION BY cols], ...)` (query.rs carries it as a
    /// last argument `PARTITION_BY(cols)`): the columns, lower-cased.
    partition: Option<Vec<String>>,
}

fn parse_expr(text: &str) -> Result<Expr> {
    Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::Plan(format!("internal rewrite of a window function: {e}")))
}

fn call_of(factor: &TableFactor) -> Result<Option<Call>> {
    let TableFactor::Table {
        name,
        args: Some(args),
        ..
    } = factor
    else {
        return Ok(None);
    };
    let fname = name.to_string().to_ascii_uppercase();
    let Some(kind) = FUNCTIONS.into_iter().find(|f| *f == fname) else {
        return Ok(None);
    };
    let mut args: Vec<&FunctionArg> = args.args.iter().collect();
    // query.rs's `PARTITION_BY(cols)`: the session TVF as Flink writes it.
    let mut partition = None;
    if kind == "SESSION"
        && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Function(f)))) = args.last()
        && f.name.to_string().eq_ignore_ascii_case("partition_by")
    {
        let columns = match &f.args {
            datafusion::sql::sqlparser::ast::FunctionArguments::List(l) => l
                .args
                .iter()
                .map(|a| {
                    let name = a.to_string();
                    name.rsplit('.')
                        .next()
                        .unwrap_or(&name)
                        .to_ascii_lowercase()
                })
                .collect(),
            _ => Vec::new(),
        };
        partition = Some(columns);
        args.pop();
    }
    let args: Vec<String> = args
        .into_iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(match e {
                // Flink's DESCRIPTOR(ts) names the time column.
                Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("descriptor") => f
                    .args
                    .to_string()
                    .trim_matches(|c| c == '(' || c == ')')
                    .to_string(),
                other => other.to_string(),
            }),
            other => plan_err!("{kind}() takes plain arguments, got {other}"),
        })
        .collect::<Result<_>>()?;
    let usage = match kind {
        "TUMBLE" => "TUMBLE(stream, time_column, size)",
        "HOP" => "HOP(stream, time_column, slide, size)",
        "CUMULATE" => "CUMULATE(stream, time_column, step, size)",
        _ => "SESSION(stream, time_column, gap)",
    };
    let expected = if kind == "HOP" || kind == "CUMULATE" {
        4
    } else {
        3
    };
    if args.len() != expected {
        return plan_err!("{usage} takes {expected} arguments, got {}", args.len());
    }
    let (stream, ts) = (args[0].clone(), args[1].clone());
    let (window, hop) = match kind {
        "TUMBLE" => (format!("window({ts}, {})", args[2]), None),
        "HOP" => (
            format!("window({ts}, {}, {})", args[3], args[2]),
            Some((args[3].clone(), args[2].clone())),
        ),
        "CUMULATE" => (
            format!("cumulate_window({ts}, {}, {})", args[2], args[3]),
            Some((args[2].clone(), args[3].clone())),
        ),
        _ => (format!("session_window({ts}, {})", args[2]), None),
    };
    Ok(Some(Call {
        kind,
        stream,
        window,
        ts,
        hop,
        partition,
    }))
}

/// Is `e` the column `name` (maybe qualified)?
fn is_column(e: &Expr, name: &str) -> bool {
    match e {
        Expr::Identifier(i) => i.value.eq_ignore_ascii_case(name),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

fn rewrite_select(select: &mut Select, changed: &mut bool) -> Result<()> {
    let groups_by_window = match &select.group_by {
        GroupByExpr::Expressions(exprs, _) => exprs
            .iter()
            .any(|e| is_column(e, "window_start") || is_column(e, "window_end")),
        GroupByExpr::All(_) => false,
    };
    let mut factors: Vec<&mut TableFactor> = Vec::new();
    for t in &mut select.from {
        factors.push(&mut t.relation);
        for j in &mut t.joins {
            factors.push(&mut j.relation);
        }
    }
    let mut calls = Vec::new();
    for f in factors {
        if let Some(call) = call_of(f)? {
            calls.push((call, f));
        }
    }
    if calls.is_empty() {
        return Ok(());
    }
    *changed = true;
    if groups_by_window {
        if calls.len() > 1 {
            return plan_err!(
                "GROUP BY window_start, window_end over more than one window table function is ambiguous; group each in its own subquery"
            );
        }
        let (call, factor) = calls.pop().expect("one call");
        if let Some(partition) = &call.partition {
            check_session_partition(&call, partition, &select.group_by)?;
        }
        if let TableFactor::Table { name, args, .. } = factor {
            *name = datafusion::sql::sqlparser::ast::ObjectName::from(vec![
                datafusion::sql::sqlparser::ast::Ident::new(call.stream.clone()),
            ]);
            *args = None;
        }
        let window = parse_expr(&call.window)?;
        let start = parse_expr(&format!("{}['start']", call.window))?;
        let end = parse_expr(&format!("{}['end']", call.window))?;
        if let GroupByExpr::Expressions(exprs, _) = &mut select.group_by {
            exprs.retain(|e| !(is_column(e, "window_start") || is_column(e, "window_end")));
            exprs.push(window);
        }
        let mut replace = |e: &mut Expr| {
            if is_column(e, "window_start") {
                *e = start.clone();
            } else if is_column(e, "window_end") {
                *e = end.clone();
            }
            ControlFlow::<()>::Continue(())
        };
        // A bare `window_start` / `window_end` keeps its name in the output.
        for item in select.projection.iter_mut() {
            if let datafusion::sql::sqlparser::ast::SelectItem::UnnamedExpr(e) = item {
                for (name, expr) in [("window_start", &start), ("window_end", &end)] {
                    if is_column(e, name) {
                        *item = datafusion::sql::sqlparser::ast::SelectItem::ExprWithAlias {
                            expr: expr.clone(),
                            alias: datafusion::sql::sqlparser::ast::Ident::new(name),
                        };
                        break;
                    }
                }
            }
        }
        let _ = visit_expressions_mut(&mut select.projection, &mut replace);
        let _ = visit_expressions_mut(&mut select.having, &mut replace);
        return Ok(());
    }
    for (call, factor) in calls {
        let subquery = match (call.kind, &call.hop) {
            ("TUMBLE", _) => format!(
                "SELECT *, {w}['start'] AS window_start, {w}['end'] AS window_end FROM {s}",
                w = call.window,
                s = call.stream
            ),
            // A row in several windows: one row per window.
            ("HOP" | "CUMULATE", Some((a, b))) => {
                let windows = if call.kind == "HOP" {
                    format!("flumen_hop_windows({}, {a}, {b})", call.ts)
                } else {
                    format!("flumen_cumulate_windows({}, {a}, {b})", call.ts)
                };
                format!(
                    "SELECT * EXCLUDE (__flumen_w), __flumen_w['start'] AS window_start, \
                     __flumen_w['end'] AS window_end FROM (SELECT *, \
                     unnest({windows}) AS __flumen_w FROM {s})",
                    s = call.stream
                )
            }
            _ => {
                return plan_err!(
                    "SESSION({}, {}, ...) assigns rows to sessions only in an aggregate: add GROUP BY window_start, window_end",
                    call.stream,
                    call.ts
                );
            }
        };
        let alias = match factor {
            TableFactor::Table { alias, .. } => alias
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_else(|| call.stream.clone()),
            _ => call.stream.clone(),
        };
        let wrapped = format!("SELECT * FROM ({subquery}) AS {alias}");
        let parsed = Parser::parse_sql(&GenericDialect {}, &wrapped)
            .map_err(|e| Error::Plan(format!("internal rewrite of {}: {e}", call.kind)))?;
        let Some(Statement::Query(q)) = parsed.into_iter().next() else {
            return plan_err!("internal rewrite of {} produced no query", call.kind);
        };
        let SetExpr::Select(s) = *q.body else {
            return plan_err!("internal rewrite of {} produced no SELECT", call.kind);
        };
        let Some(from) = s.from.into_iter().next() else {
            return plan_err!("internal rewrite of {} produced no FROM", call.kind);
        };
        *factor = from.relation;
    }
    Ok(())
}

/// Flink's session TVF keeps a session per value of its PARTITION BY columns (one
/// session over the whole table without them); Flumen keeps one per value of the
/// other GROUP BY keys. The two agree when those are the same columns: anything else
/// would silently give other sessions than Flink's, so it is refused.
fn check_session_partition(
    call: &Call,
    partition: &[String],
    group_by: &GroupByExpr,
) -> Result<()> {
    let GroupByExpr::Expressions(exprs, _) = group_by else {
        return Ok(());
    };
    let mut keys: Vec<String> = exprs
        .iter()
        .filter(|e| !(is_column(e, "window_start") || is_column(e, "window_end")))
        .map(|e| match e {
            Expr::Identifier(i) => i.value.to_ascii_lowercase(),
            Expr::CompoundIdentifier(parts) => parts
                .last()
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_default(),
            other => other.to_string(),
        })
        .collect();
    let mut wanted = partition.to_vec();
    keys.sort();
    keys.dedup();
    wanted.sort();
    wanted.dedup();
    if keys == wanted {
        return Ok(());
    }
    let (stream, ts) = (&call.stream, &call.ts);
    if partition.is_empty() {
        return plan_err!(
            "SESSION(TABLE {stream}, DESCRIPTOR({ts}), ...) makes one session over all rows of \
             {stream}, but GROUP BY also names {}: Flumen would keep a session per value of \
             those keys, which is not Flink's answer. Write SESSION(TABLE {stream} PARTITION BY \
             {}, DESCRIPTOR({ts}), ...) for sessions per key",
            keys.join(", "),
            keys.join(", ")
        );
    }
    plan_err!(
        "SESSION(TABLE {stream} PARTITION BY {}, ...) keeps a session per {}: GROUP BY must name \
         the same columns besides window_start, window_end (it names: {})",
        partition.join(", "),
        partition.join(", "),
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ParsedQuery;

    fn rewrite(sql: &str) -> String {
        ParsedQuery::parse(sql)
            .unwrap()
            .bind(|_| None)
            .unwrap()
            .to_string()
    }

    #[test]
    fn grouped_tumble_becomes_a_window_group_key() {
        let out = rewrite(
            "SELECT window_start, k, count(*) FROM TUMBLE(s, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, k",
        );
        assert_eq!(
            out,
            "SELECT window(ts, INTERVAL '10' SECOND)['start'] AS window_start, k, count(*) FROM s GROUP BY k, window(ts, INTERVAL '10' SECOND)"
        );
    }

    #[test]
    fn queries_without_window_functions_are_untouched() {
        let mut statement =
            Statement::Query(ParsedQuery::parse("SELECT hop FROM t").unwrap().query);
        assert!(!rewrite_statement(&mut statement).unwrap());
        assert_eq!(statement.to_string(), "SELECT hop FROM t");
        // A name in a string literal is not a call.
        assert_eq!(
            rewrite("SELECT 'TUMBLE(s, ts, x)' AS t FROM s"),
            "SELECT 'TUMBLE(s, ts, x)' AS t FROM s"
        );
    }
}
