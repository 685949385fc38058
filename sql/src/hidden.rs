//! Hidden columns: every stream has `_batch_time`, but `SELECT *` does not write it —
//! only a query that names it gets it (as Spark's and Flink's metadata columns).

use datafusion::dataframe::DataFrame;
use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr};
use flumen_engine::Result;

use crate::batch_time::BATCH_TIME_COLUMN;

/// Whether the top-level `SELECT` of `query` has a wildcard and never names
/// `_batch_time` itself: then the hidden column is left out of its result.
fn hides_batch_time(query: &Query) -> bool {
    fn walk(body: &SetExpr, wildcard: &mut bool, named: &mut bool) {
        match body {
            SetExpr::Select(s) => {
                for item in &s.projection {
                    match item {
                        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                            *wildcard = true
                        }
                        SelectItem::UnnamedExpr(e) => *named |= names_batch_time(e),
                        SelectItem::ExprWithAlias { expr, alias } => {
                            *named |= names_batch_time(expr)
                                || alias.value.eq_ignore_ascii_case(BATCH_TIME_COLUMN)
                        }
                        SelectItem::ExprWithAliases { expr, .. } => {
                            *named |= names_batch_time(expr)
                        }
                    }
                }
            }
            SetExpr::Query(q) => walk(&q.body, wildcard, named),
            SetExpr::SetOperation { left, right, .. } => {
                walk(left, wildcard, named);
                walk(right, wildcard, named);
            }
            _ => {}
        }
    }
    let (mut wildcard, mut named) = (false, false);
    walk(&query.body, &mut wildcard, &mut named);
    wildcard && !named
}

/// Whether `e` is a reference to `_batch_time` (bare or qualified).
fn names_batch_time(e: &Expr) -> bool {
    match e {
        Expr::Identifier(i) => i.value.eq_ignore_ascii_case(BATCH_TIME_COLUMN),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .is_some_and(|i| i.value.eq_ignore_ascii_case(BATCH_TIME_COLUMN)),
        _ => false,
    }
}

/// `df` (the plan of `query`) without the `_batch_time` columns a wildcard brought in.
pub fn drop_hidden_columns(df: DataFrame, query: &Query) -> Result<DataFrame> {
    let hidden: Vec<usize> = df
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() == BATCH_TIME_COLUMN)
        .map(|(i, _)| i)
        .collect();
    if hidden.is_empty() || !hides_batch_time(query) || hidden.len() == df.schema().fields().len() {
        return Ok(df);
    }
    let keep: Vec<datafusion::prelude::Expr> = df
        .schema()
        .columns()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !hidden.contains(i))
        .map(|(_, c)| datafusion::prelude::Expr::Column(c))
        .collect();
    Ok(df.select(keep)?)
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::ast::Statement;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn hides(sql: &str) -> bool {
        let Statement::Query(q) = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0)
        else {
            panic!("a query");
        };
        hides_batch_time(&q)
    }

    #[test]
    fn a_wildcard_hides_it_unless_it_is_named() {
        assert!(hides("SELECT * FROM s"));
        assert!(hides("SELECT s.*, 1 AS x FROM s"));
        assert!(hides("SELECT * FROM a UNION ALL SELECT * FROM b"));
        assert!(!hides("SELECT *, _batch_time FROM s"));
        assert!(!hides("SELECT s.*, s._batch_time AS t FROM s"));
        assert!(!hides("SELECT a, b FROM s"));
    }
}
