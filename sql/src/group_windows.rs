//! Flink's legacy group window functions, a pass over the parsed tree:
//!
//! ```text
//!   GROUP BY TUMBLE(ts, size)            ->  GROUP BY window(ts, size)
//!   GROUP BY HOP(ts, slide, size)        ->  GROUP BY window(ts, size, slide)
//!   GROUP BY SESSION(ts, gap)            ->  GROUP BY session_window(ts, gap)
//!   TUMBLE_START(ts, size) / _END        ->  window(ts, size)['start'] / ['end']
//!   HOP_START(ts, slide, size) / _END    ->  window(ts, size, slide)['start'] / ['end']
//!   SESSION_START(ts, gap) / _END        ->  session_window(ts, gap)['start'] / ['end']
//! ```
//!
//! so a query written for Flink's older syntax is the windowed aggregate Flumen plans
//! for `window()` and `session_window()`. Only calls in expressions are touched (the
//! window table functions in `FROM` are `tvf.rs`'s); a call with the wrong number of
//! arguments is an error giving the form.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Statement, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use flumen_engine::{Error, Result, plan_err};

/// Rewrites the legacy group window calls in `statement`.
pub fn rewrite_statement(statement: &mut Statement) -> Result<()> {
    let mut rewriter = Rewriter { error: None };
    let _ = statement.visit(&mut rewriter);
    match rewriter.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Rewriter {
    error: Option<Error>,
}

impl VisitorMut for Rewriter {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let Expr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        match rewritten(f) {
            Ok(Some(e)) => {
                *expr = e;
                ControlFlow::Continue(())
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// What a legacy group window call becomes; `None` for any other function.
fn rewritten(f: &Function) -> Result<Option<Expr>> {
    let [part] = f.name.0.as_slice() else {
        return Ok(None);
    };
    let Some(ident) = part.as_ident() else {
        return Ok(None);
    };
    if ident.quote_style.is_some() {
        return Ok(None);
    }
    let name = ident.value.to_ascii_uppercase();
    let (kind, field) = match name.split_once('_') {
        Some((kind, field @ ("START" | "END"))) => (kind.to_string(), Some(field)),
        _ => (name.clone(), None),
    };
    let (usage, arity) = match kind.as_str() {
        "TUMBLE" => ("TUMBLE(time_column, size)", 2),
        "HOP" => ("HOP(time_column, slide, size)", 3),
        "SESSION" => ("SESSION(time_column, gap)", 2),
        _ => return Ok(None),
    };
    let usage = match field {
        Some(field) => usage.replacen('(', &format!("_{field}("), 1),
        None => usage.to_string(),
    };
    let FunctionArguments::List(list) = &f.args else {
        return plan_err!("{usage} takes {arity} arguments");
    };
    let args = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.to_string()),
            other => plan_err!("{usage} takes plain arguments, got {other}"),
        })
        .collect::<Result<Vec<String>>>()?;
    if args.len() != arity {
        return plan_err!("{usage} takes {arity} arguments, got {}", args.len());
    }
    let window = match kind.as_str() {
        "TUMBLE" => format!("window({}, {})", args[0], args[1]),
        "HOP" => format!("window({}, {}, {})", args[0], args[2], args[1]),
        _ => format!("session_window({}, {})", args[0], args[1]),
    };
    let text = match field {
        Some("START") => format!("{window}['start']"),
        Some(_) => format!("{window}['end']"),
        None => window,
    };
    Parser::new(&GenericDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_expr())
        .map(Some)
        .map_err(|e| Error::Plan(format!("internal rewrite of {usage}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(sql: &str) -> String {
        let mut statement = Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_statement())
            .unwrap();
        rewrite_statement(&mut statement).unwrap();
        statement.to_string()
    }

    #[test]
    fn legacy_group_windows_become_window_calls() {
        assert_eq!(
            rewrite(
                "SELECT auction, HOP_START(ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS s, count(*) \
                 FROM bid GROUP BY auction, HOP(ts, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
            ),
            "SELECT auction, window(ts, INTERVAL '10' SECOND, INTERVAL '2' SECOND)['start'] AS s, count(*) \
             FROM bid GROUP BY auction, window(ts, INTERVAL '10' SECOND, INTERVAL '2' SECOND)"
        );
        assert_eq!(
            rewrite(
                "SELECT SESSION_END(ts, INTERVAL '5' SECOND) FROM t GROUP BY SESSION(ts, INTERVAL '5' SECOND)"
            ),
            "SELECT session_window(ts, INTERVAL '5' SECOND)['end'] FROM t GROUP BY session_window(ts, INTERVAL '5' SECOND)"
        );
        // Other functions, and a column called tumble, are left alone.
        assert_eq!(
            rewrite("SELECT upper(tumble), date_part('hour', ts) FROM t"),
            "SELECT upper(tumble), date_part('hour', ts) FROM t"
        );
    }

    #[test]
    fn a_wrong_call_gives_the_form() {
        let mut statement = Parser::new(&GenericDialect {})
            .try_with_sql("SELECT TUMBLE_START(ts) FROM t")
            .and_then(|mut p| p.parse_statement())
            .unwrap();
        let e = rewrite_statement(&mut statement).unwrap_err().to_string();
        assert!(
            e.contains("TUMBLE_START(time_column, size) takes 2 arguments, got 1"),
            "{e}"
        );
    }
}
