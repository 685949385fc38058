//! A query, parsed once. Flumen's additions to a `SELECT` are taken off its tokens —
//! ksqlDB's `EMIT CHANGES | FINAL` at the end and its `WINDOW TUMBLING | HOPPING |
//! SESSION (...)` clause — so that a string literal or a subquery never looks like
//! one; the rest is parsed into a syntax tree, kept with the statement. Before
//! planning, [`ParsedQuery::bind`] rewrites the tree: the ksqlDB window onto
//! `window()` (ksql.rs) and the window table functions (tvf.rs), both as passes over
//! the tree. DataFusion then plans the tree, never the text again.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Query, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use flumen_engine::{Error, Result, plan_err};

use crate::ksql::KsqlWindow;
use crate::planner::OutputMode;

/// A query as a statement carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedQuery {
    /// The query as written, without a trailing `EMIT` (SHOW QUERIES shows it).
    pub text: String,
    /// Its syntax tree, without the ksqlDB window clause.
    pub query: Box<Query>,
    /// `EMIT CHANGES` (update) or `EMIT FINAL` (append), if written.
    pub emit: Option<OutputMode>,
    /// ksqlDB's `WINDOW ... (...)` clause, applied by [`ParsedQuery::bind`].
    pub window: Option<KsqlWindow>,
    /// Flink's `FOR SYSTEM_TIME AS OF` clauses (lookup joins), taken off the tree.
    pub lookups: Vec<crate::lookup::Lookup>,
}

impl ParsedQuery {
    /// Parses `text` as a query (`SELECT`, `WITH`, `VALUES`, ...), with Flumen's
    /// additions.
    pub fn parse(text: &str) -> Result<ParsedQuery> {
        let dialect = GenericDialect {};
        let mut tokens = Tokenizer::new(&dialect, text)
            .tokenize_with_location()
            .map_err(|e| Error::Plan(format!("syntax error: {e}")))?;
        trim_end(&mut tokens);
        let emit = take_emit(&mut tokens);
        trim_end(&mut tokens);
        let window = KsqlWindow::take(&mut tokens)?;
        unwrap_flink_tvfs(&mut tokens)?;
        let lookups = crate::lookup::take_lookups(&mut tokens)?;
        let end = tokens.last().map(|t| t.span.end);
        let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
        let query = parser
            .parse_query()
            .map_err(|e| Error::Plan(format!("syntax error: {e}")))?;
        match parser.peek_token().token {
            Token::EOF => {}
            other => {
                return plan_err!("syntax error: unexpected '{other}' after the query");
            }
        }
        let text = match end {
            Some(end) => text_until(text, end.line, end.column),
            None => String::new(),
        };
        Ok(ParsedQuery {
            text,
            query,
            emit,
            window,
            lookups,
        })
    }

    /// The output mode: the query's `EMIT`, else `default` (the session's).
    pub fn mode(&self, default: OutputMode) -> OutputMode {
        self.emit.unwrap_or(default)
    }

    /// The statement DataFusion plans: the ksqlDB window onto `window()` (its time
    /// column from `event_time_of(stream)`), the window table functions and Flink's
    /// legacy group windows (`group_windows.rs`) rewritten.
    pub fn bind(
        &self,
        event_time_of: impl Fn(&str) -> Option<String>,
    ) -> Result<datafusion::sql::parser::Statement> {
        let mut query = self.query.clone();
        if let Some(w) = &self.window {
            w.apply(&mut query, event_time_of)?;
        }
        let mut statement = ast::Statement::Query(query);
        crate::tvf::rewrite_statement(&mut statement)?;
        crate::group_windows::rewrite_statement(&mut statement)?;
        crate::flink::rewrite_proctime(&mut statement);
        Ok(datafusion::sql::parser::Statement::Statement(Box::new(
            statement,
        )))
    }
}

/// The tables and streams `statement` reads, by their last name (unquoted names
/// lower-cased, as DataFusion resolves them); the names of its own `WITH` tables are
/// left out. Subqueries count.
pub fn relations_read(statement: &ast::Statement) -> HashSet<String> {
    #[derive(Default)]
    struct Names {
        read: HashSet<String>,
        ctes: HashSet<String>,
    }
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.ctes.insert(name_of(&cte.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, relation: &ast::ObjectName) -> ControlFlow<()> {
            if let Some(ident) = relation.0.last().and_then(|p| p.as_ident()) {
                self.read.insert(name_of(ident));
            }
            ControlFlow::Continue(())
        }
    }
    fn name_of(ident: &ast::Ident) -> String {
        if ident.quote_style.is_some() {
            ident.value.clone()
        } else {
            ident.value.to_ascii_lowercase()
        }
    }
    let mut names = Names::default();
    let _ = statement.visit(&mut names);
    names.read.retain(|n| !names.ctes.contains(n));
    names.read
}

/// Whether `text` begins like a query (so a statement that does is parsed as one).
pub fn starts_a_query(text: &str) -> bool {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, text).tokenize() else {
        return false;
    };
    let first = tokens
        .iter()
        .find(|t| !matches!(t, Token::Whitespace(_) | Token::LParen));
    matches!(first, Some(Token::Word(w))
        if w.quote_style.is_none()
            && matches!(w.keyword, Keyword::SELECT | Keyword::WITH | Keyword::VALUES))
}

/// Drops trailing whitespace and `;`.
fn trim_end(tokens: &mut Vec<TokenWithSpan>) {
    while tokens.last().is_some_and(|t| {
        matches!(
            t.token,
            Token::Whitespace(_) | Token::SemiColon | Token::EOF
        )
    }) {
        tokens.pop();
    }
}

/// An unquoted word's value, upper-cased.
pub(crate) fn word(t: &TokenWithSpan) -> Option<String> {
    match &t.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// Takes a final `EMIT CHANGES` / `EMIT FINAL` off `tokens`.
fn take_emit(tokens: &mut Vec<TokenWithSpan>) -> Option<OutputMode> {
    let mut words = tokens
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)));
    let (_, last) = words.next()?;
    let (at, before) = words.next()?;
    let mode = match word(last)?.as_str() {
        "CHANGES" => OutputMode::Update,
        "FINAL" => OutputMode::Append,
        _ => return None,
    };
    if word(before).as_deref() != Some("EMIT") {
        return None;
    }
    tokens.truncate(at);
    Some(mode)
}

/// Flink's window table functions as Flink writes them,
/// `TABLE(TUMBLE(TABLE bid, DESCRIPTOR(ts), size))`, made the form `tvf.rs` reads,
/// `TUMBLE(bid, DESCRIPTOR(ts), size)`, on the tokens: SQL's `TABLE t` argument is not
/// an expression sqlparser reads. Only a `TABLE(` directly around `TUMBLE`, `HOP` or
/// `SESSION` whose first argument is `TABLE name` is touched; a session's
/// `PARTITION BY` is refused, naming what to write instead.
fn unwrap_flink_tvfs(tokens: &mut Vec<TokenWithSpan>) -> Result<()> {
    let significant = |tokens: &[TokenWithSpan], from: usize| {
        (from..tokens.len()).find(|i| !matches!(tokens[*i].token, Token::Whitespace(_)))
    };
    let mut i = 0;
    while let Some(at) = significant(tokens, i) {
        i = at + 1;
        if word(&tokens[at]).as_deref() != Some("TABLE") {
            continue;
        }
        // TABLE ( FN ( TABLE name
        let Some(open) = significant(tokens, at + 1).filter(|o| tokens[*o].token == Token::LParen)
        else {
            continue;
        };
        let Some(func) = significant(tokens, open + 1) else {
            continue;
        };
        let Some(kind) = word(&tokens[func])
            .filter(|w| ["TUMBLE", "HOP", "SESSION", "CUMULATE"].contains(&w.as_str()))
        else {
            continue;
        };
        let Some(inner_open) =
            significant(tokens, func + 1).filter(|o| tokens[*o].token == Token::LParen)
        else {
            continue;
        };
        let Some(inner_table) = significant(tokens, inner_open + 1)
            .filter(|t| word(&tokens[*t]).as_deref() == Some("TABLE"))
        else {
            continue;
        };
        // The `)` closing `TABLE(`.
        let mut depth = 0usize;
        let mut close = None;
        for (j, t) in tokens.iter().enumerate().skip(open) {
            match t.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(close) = close else {
            return plan_err!("syntax error: TABLE({kind}(...)) is not closed");
        };
        // The `)` closing the function's own arguments.
        let mut depth = 0usize;
        let mut inner_close = close;
        for (j, t) in tokens.iter().enumerate().take(close).skip(inner_open) {
            match t.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        inner_close = j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let partition_at = (inner_table..inner_close).find(|i| {
            word(&tokens[*i]).as_deref() == Some("PARTITION")
                && significant(tokens, i + 1)
                    .is_some_and(|b| word(&tokens[b]).as_deref() == Some("BY"))
        });
        if kind != "SESSION" && partition_at.is_some() {
            return plan_err!(
                "{kind}(TABLE t PARTITION BY ...) is not supported: Flink partitions only \
                 SESSION windows; write {kind}(TABLE t, ...)"
            );
        }
        // FN ( args ), without the inner TABLE keyword.
        let mut args: Vec<TokenWithSpan> = tokens[inner_table + 1..inner_close].to_vec();
        if kind == "SESSION" {
            // Flink's session TVF keeps sessions per PARTITION BY columns (one over the
            // whole table without them): carried as a last argument `PARTITION_BY(cols)`,
            // which tvf.rs checks against the GROUP BY.
            let mut columns = Vec::new();
            if let Some(p) = partition_at.map(|p| p - (inner_table + 1)) {
                let by = significant(&args, p + 1).expect("BY follows PARTITION");
                let Some(descriptor) =
                    (by..args.len()).find(|i| word(&args[*i]).as_deref() == Some("DESCRIPTOR"))
                else {
                    return plan_err!(
                        "SESSION(TABLE t PARTITION BY ..., DESCRIPTOR(time_column), gap): \
                         DESCRIPTOR(...) is missing"
                    );
                };
                // The columns run to the last comma before DESCRIPTOR.
                let Some(comma) = (by..descriptor)
                    .rev()
                    .find(|i| args[*i].token == Token::Comma)
                else {
                    return plan_err!(
                        "SESSION(TABLE t PARTITION BY ..., DESCRIPTOR(time_column), gap): a \
                         comma must come before DESCRIPTOR"
                    );
                };
                columns = args[by + 1..comma]
                    .iter()
                    .filter(|t| !matches!(t.token, Token::LParen | Token::RParen))
                    .cloned()
                    .collect();
                args.drain(p..comma);
            }
            args.push(TokenWithSpan::wrap(Token::Comma));
            args.push(TokenWithSpan::wrap(Token::make_word("PARTITION_BY", None)));
            args.push(TokenWithSpan::wrap(Token::LParen));
            args.extend(columns);
            args.push(TokenWithSpan::wrap(Token::RParen));
        }
        let mut call = vec![tokens[func].clone(), TokenWithSpan::wrap(Token::LParen)];
        call.extend(args);
        call.push(TokenWithSpan::wrap(Token::RParen));
        tokens.splice(at..=close, call);
        i = at;
    }
    Ok(())
}

/// `text` up to (and including) the character at 1-based `line`/`column`.
fn text_until(text: &str, line: u64, column: u64) -> String {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            let chars = l.char_indices().nth(column.saturating_sub(1) as usize);
            let end = chars.map_or(l.len(), |(b, _)| b);
            return text[..offset + end].trim().to_string();
        }
        offset += l.len();
    }
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_is_taken_off_the_tokens_not_the_text() {
        let q = ParsedQuery::parse("SELECT k, count(*) FROM s GROUP BY k emit changes;").unwrap();
        assert_eq!(q.emit, Some(OutputMode::Update));
        assert_eq!(q.text, "SELECT k, count(*) FROM s GROUP BY k");
        let q = ParsedQuery::parse("SELECT 'EMIT FINAL' AS t FROM s").unwrap();
        assert_eq!(q.emit, None);
        assert_eq!(q.text, "SELECT 'EMIT FINAL' AS t FROM s");
        let q = ParsedQuery::parse("SELECT k FROM s EMIT FINAL").unwrap();
        assert_eq!(
            (q.emit, q.text.as_str()),
            (Some(OutputMode::Append), "SELECT k FROM s")
        );
    }

    #[test]
    fn flinks_table_form_of_a_window_function_is_read_as_the_plain_call() {
        let q = ParsedQuery::parse(
            "SELECT window_start, count(*) FROM TABLE(\n  TUMBLE(TABLE bid, DESCRIPTOR(ts), INTERVAL '10' SECOND))\n GROUP BY window_start, window_end",
        )
        .unwrap();
        assert_eq!(
            q.query.to_string(),
            "SELECT window_start, count(*) FROM TUMBLE(bid, DESCRIPTOR(ts), INTERVAL '10' SECOND) GROUP BY window_start, window_end"
        );
        // Other uses of TABLE are left alone.
        let q = ParsedQuery::parse("SELECT * FROM t WHERE x = 1").unwrap();
        assert_eq!(q.query.to_string(), "SELECT * FROM t WHERE x = 1");
        // Flink's session TVF: its PARTITION BY columns, or none, as a last argument.
        let q = ParsedQuery::parse(
            "SELECT 1 FROM TABLE(SESSION(TABLE bid PARTITION BY auction, bidder, DESCRIPTOR(ts), INTERVAL '5' SECOND))",
        )
        .unwrap();
        assert_eq!(
            q.query.to_string(),
            "SELECT 1 FROM SESSION(bid, DESCRIPTOR(ts), INTERVAL '5' SECOND, PARTITION_BY(auction, bidder))"
        );
        let q = ParsedQuery::parse(
            "SELECT 1 FROM TABLE(SESSION(TABLE bid, DESCRIPTOR(ts), INTERVAL '5' SECOND))",
        )
        .unwrap();
        assert_eq!(
            q.query.to_string(),
            "SELECT 1 FROM SESSION(bid, DESCRIPTOR(ts), INTERVAL '5' SECOND, PARTITION_BY())"
        );
        let e = ParsedQuery::parse(
            "SELECT 1 FROM TABLE(HOP(TABLE bid PARTITION BY auction, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND))",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Flink partitions only SESSION windows"), "{e}");
        let q = ParsedQuery::parse(
            "SELECT 1 FROM TABLE(CUMULATE(TABLE bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))",
        )
        .unwrap();
        assert_eq!(
            q.query.to_string(),
            "SELECT 1 FROM CUMULATE(bid, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
        );
    }

    #[test]
    fn text_keeps_the_lines_as_written() {
        let q = ParsedQuery::parse("SELECT a,\n  b  -- two\nFROM s\nEMIT CHANGES\n").unwrap();
        assert_eq!(q.text, "SELECT a,\n  b  -- two\nFROM s");
    }

    #[test]
    fn queries_are_recognised_by_their_first_word() {
        assert!(starts_a_query("select 1"));
        assert!(starts_a_query("(SELECT 1)"));
        assert!(starts_a_query("WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(!starts_a_query("CREATE VIEW v AS SELECT 1"));
        assert!(!starts_a_query("\"select\""));
    }

    #[test]
    fn relations_read_count_subqueries_and_leave_out_with_tables() {
        let read = |sql: &str| {
            let q = ParsedQuery::parse(sql).unwrap();
            let mut names: Vec<String> = relations_read(&ast::Statement::Query(q.query))
                .into_iter()
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            read("SELECT * FROM Clicks c JOIN (SELECT * FROM public.views) v ON c.k = v.k"),
            ["clicks", "views"]
        );
        assert_eq!(
            read(
                "WITH clicks AS (SELECT 1 AS k) SELECT * FROM clicks WHERE k IN (SELECT k FROM \"Pages\")"
            ),
            ["Pages"]
        );
        assert!(read("SELECT 'FROM clicks' AS t").is_empty());
    }

    #[test]
    fn a_syntax_error_says_so() {
        let e = ParsedQuery::parse("SELECT (1 + ").unwrap_err().to_string();
        assert!(e.starts_with("syntax error: "), "{e}");
        let e = ParsedQuery::parse("SELECT 1 garbage garbage")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("syntax error: "), "{e}");
    }
}
