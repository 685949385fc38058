//! Flink's lookup join, `JOIN t FOR SYSTEM_TIME AS OF s.proc_time AS alias ON ...`:
//! each row of a stream joined with table `t` as `t` is when the row is processed. A
//! micro-batch engine joins a stream with a table as the table is when each batch
//! runs, which is that: the clause is taken off the tokens (sqlparser's generic
//! dialect does not read it, DataFusion would ignore it) and checked here — it must
//! name processing time (`PROCTIME()`, `_batch_time`, or a column a subquery, view or
//! derived stream of the same `FROM` defines as one of those), and its relation must
//! be a table. Flink's
//! event-time temporal join (a table's version as of each row's event time) is
//! refused with that reason, never run as something else.

use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr, TableFactor};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};
use flumen_engine::{Result, plan_err};

use crate::batch_time::BATCH_TIME_COLUMN;
use crate::query::word;

/// One `FOR SYSTEM_TIME AS OF` clause, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The relation it follows (unquoted names lower-cased).
    pub relation: String,
    /// Its time: `PROCTIME()`, or a column, maybe qualified.
    pub at: LookupTime,
    /// The time as written (errors quote it).
    pub written: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LookupTime {
    Proctime,
    Column {
        qualifier: Option<String>,
        name: String,
    },
}

fn ident(t: &TokenWithSpan) -> Option<String> {
    match &t.token {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// Takes every `relation FOR SYSTEM_TIME AS OF <time>` clause off `tokens` (the
/// relation stays); `<time>` is `PROCTIME()`, `column` or `alias.column`.
pub(crate) fn take_lookups(tokens: &mut Vec<TokenWithSpan>) -> Result<Vec<Lookup>> {
    let significant = |tokens: &[TokenWithSpan], from: usize| {
        (from..tokens.len()).find(|i| !matches!(tokens[*i].token, Token::Whitespace(_)))
    };
    let mut lookups = Vec::new();
    let mut i = 0;
    while let Some(at) = significant(tokens, i) {
        i = at + 1;
        if word(&tokens[at]).as_deref() != Some("FOR") {
            continue;
        }
        let mut next = at;
        let mut keywords = true;
        for expected in ["SYSTEM_TIME", "AS", "OF"] {
            match significant(tokens, next + 1) {
                Some(n) if word(&tokens[n]).as_deref() == Some(expected) => next = n,
                _ => {
                    keywords = false;
                    break;
                }
            }
        }
        if !keywords {
            continue;
        }
        let relation = (0..at)
            .rev()
            .find(|j| !matches!(tokens[*j].token, Token::Whitespace(_)))
            .and_then(|j| ident(&tokens[j]));
        let Some(relation) = relation else {
            return plan_err!("FOR SYSTEM_TIME AS OF must follow a table's name");
        };
        // The time: PROCTIME(), column, or alias.column.
        let Some(first) = significant(tokens, next + 1) else {
            return plan_err!("FOR SYSTEM_TIME AS OF needs a time after it");
        };
        let mut end = first;
        let time = match (
            ident(&tokens[first]),
            significant(tokens, first + 1).map(|n| (n, &tokens[n].token)),
        ) {
            (Some(name), Some((open, Token::LParen))) if name == "proctime" => {
                match significant(tokens, open + 1) {
                    Some(close) if tokens[close].token == Token::RParen => {
                        end = close;
                        LookupTime::Proctime
                    }
                    _ => return plan_err!("FOR SYSTEM_TIME AS OF PROCTIME( takes no argument"),
                }
            }
            (Some(q), Some((dot, Token::Period))) => {
                match significant(tokens, dot + 1).and_then(|n| Some((n, ident(&tokens[n])?))) {
                    Some((n, name)) => {
                        end = n;
                        LookupTime::Column {
                            qualifier: Some(q),
                            name,
                        }
                    }
                    None => return plan_err!("FOR SYSTEM_TIME AS OF {q}. needs a column"),
                }
            }
            (Some(name), _) => LookupTime::Column {
                qualifier: None,
                name,
            },
            (None, _) => {
                return plan_err!(
                    "FOR SYSTEM_TIME AS OF takes PROCTIME() or a processing-time column, got '{}'",
                    tokens[first].token
                );
            }
        };
        let written = tokens[first..=end]
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .map(|t| t.token.to_string())
            .collect();
        tokens.drain(at..=end);
        i = at;
        lookups.push(Lookup {
            relation,
            at: time,
            written,
        });
    }
    Ok(lookups)
}

/// Whether `e` is processing time: `PROCTIME()` or `_batch_time`.
fn is_proctime(e: &Expr) -> bool {
    match e {
        Expr::Function(f) => f.name.to_string().eq_ignore_ascii_case("proctime"),
        Expr::Identifier(i) => i.value == BATCH_TIME_COLUMN,
        Expr::CompoundIdentifier(parts) => {
            parts.last().is_some_and(|i| i.value == BATCH_TIME_COLUMN)
        }
        Expr::Nested(e) => is_proctime(e),
        _ => false,
    }
}

/// Whether `query` (a `SELECT`) selects `name` as processing time.
pub(crate) fn selects_proctime(query: &Query, name: &str) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    select.projection.iter().any(|item| match item {
        SelectItem::ExprWithAlias { expr, alias } => {
            alias.value.eq_ignore_ascii_case(name) && is_proctime(expr)
        }
        SelectItem::UnnamedExpr(e) => name == BATCH_TIME_COLUMN && is_proctime(e),
        // `SELECT *` over a stream carries its `_batch_time`.
        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => name == BATCH_TIME_COLUMN,
        _ => false,
    })
}

/// Whether a relation of `query`'s `FROM` (named or aliased `qualifier`, when given)
/// defines `name` as processing time: a subquery that selects it so, or a view or
/// derived stream whose query does (`view_defines`, by the relation's name).
fn defines_proctime(
    query: &Query,
    qualifier: Option<&str>,
    name: &str,
    view_defines: &dyn Fn(&str, &str) -> bool,
) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let factors = select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)));
    let lower = |s: &str| s.to_ascii_lowercase();
    for factor in factors {
        let (alias, defines) = match factor {
            TableFactor::Derived {
                subquery, alias, ..
            } => (
                alias.as_ref().map(|a| lower(&a.name.value)),
                selects_proctime(subquery, name),
            ),
            TableFactor::Table {
                name: relation,
                alias,
                ..
            } => {
                let Some(last) = relation.0.last().and_then(|p| p.as_ident()) else {
                    continue;
                };
                let relation = lower(&last.value);
                let alias = alias
                    .as_ref()
                    .map(|a| lower(&a.name.value))
                    .unwrap_or_else(|| relation.clone());
                (Some(alias), view_defines(&relation, name))
            }
            _ => continue,
        };
        if qualifier.is_some_and(|q| alias.as_deref() != Some(q)) {
            continue;
        }
        if defines {
            return true;
        }
    }
    false
}

/// Checks each lookup of `query` names processing time and reads no stream
/// (`is_stream`); `view_defines(relation, column)`: whether a view or derived stream
/// of that name selects that column as processing time.
pub(crate) fn check(
    query: &Query,
    lookups: &[Lookup],
    is_stream: impl Fn(&str) -> bool,
    view_defines: impl Fn(&str, &str) -> bool,
) -> Result<()> {
    for l in lookups {
        if is_stream(&l.relation) {
            return plan_err!(
                "{} FOR SYSTEM_TIME AS OF {}: {} is a stream; a lookup join reads a table \
                 (as it is when each batch runs). A temporal join with a versioned stream is \
                 not supported: join the two streams over a time bound instead",
                l.relation,
                l.written,
                l.relation
            );
        }
        let processing = match &l.at {
            LookupTime::Proctime => true,
            LookupTime::Column { qualifier, name } => {
                name == BATCH_TIME_COLUMN
                    || defines_proctime(query, qualifier.as_deref(), name, &view_defines)
            }
        };
        if !processing {
            return plan_err!(
                "{} FOR SYSTEM_TIME AS OF {}: Flumen joins a table as it is when each batch \
                 runs (a lookup at processing time), so the time must be PROCTIME() or a \
                 column the subquery or view it comes from defines as PROCTIME(); a table's version \
                 as of each row's event time (Flink's event-time temporal join) is not \
                 supported",
                l.relation,
                l.written
            );
        }
    }
    Ok(())
}
