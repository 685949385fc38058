//! Flumen's statements on top of sqlparser; anything else is handed to DataFusion.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DataType as SqlType, Expr as SqlExpr, SqlOption, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use flumen_engine::{Error, Result, plan_err};

use crate::duration::{interval_duration, parse_duration};
use crate::query::{ParsedQuery, starts_a_query};

/// `WITH (...)` options: keys lower-cased, values as text.
pub type Options = BTreeMap<String, String>;

/// A declared column of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
}

/// `WATERMARK FOR col AS col - INTERVAL ...`
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub column: String,
    pub delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Stream,
    Table,
    Sink,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Stream => "stream",
            ObjectKind::Table => "table",
            ObjectKind::Sink => "sink",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowKind {
    Streams,
    Tables,
    Sinks,
    Queries,
}

/// One statement of a script.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateStream {
        name: String,
        columns: Vec<ColumnDef>,
        watermark: Option<Watermark>,
        options: Options,
    },
    CreateStreamAs {
        name: String,
        options: Options,
        query: ParsedQuery,
    },
    CreateSink {
        name: String,
        options: Options,
        query: Option<ParsedQuery>,
    },
    /// `CREATE TABLE name AS SELECT ...`: a continuously maintained result when the
    /// query reads streams, an ordinary DataFusion table otherwise.
    CreateTableAs {
        name: String,
        query: ParsedQuery,
        /// `CREATE OR REPLACE TABLE`.
        or_replace: bool,
    },
    /// `CREATE [OR REPLACE] [TEMPORARY] VIEW name AS <query>`: over streams, a derived
    /// stream (as `CREATE STREAM name AS`); otherwise DataFusion's view (`sql`).
    CreateView {
        name: String,
        query: ParsedQuery,
        or_replace: bool,
        sql: String,
    },
    /// `INSERT INTO name ...`: into a sink (starts a query) or a memory stream
    /// (rows for the next batch); otherwise DataFusion's.
    InsertInto {
        target: String,
        sql: String,
        /// The rows: a query, or why it is not one (then only DataFusion's tables
        /// take the statement, e.g. with a column list).
        query: std::result::Result<ParsedQuery, String>,
    },
    Set {
        key: String,
        value: String,
        sql: String,
    },
    Show(ShowKind),
    /// `SHOW PROGRESS [query]`: the newest batch of every query, or the recent
    /// batches of one (by id or by the sink/table it writes).
    ShowProgress(Option<String>),
    Describe(String),
    Explain(String),
    StopQuery(u64),
    Drop {
        kind: ObjectKind,
        name: String,
        if_exists: bool,
    },
    /// `ADVANCE n BATCHES`: with a manual clock, run the next `n` batches.
    Advance(u64),
    /// A query: over streams, a continuous query; otherwise DataFusion's.
    Query(ParsedQuery),
    /// `CREATE [OR REPLACE] FUNCTION name(params) RETURNS type RETURN expr`.
    CreateFunction(crate::sql_function::Definition),
    /// `DROP FUNCTION [IF EXISTS] name [(types)]`.
    DropFunction {
        name: String,
        if_exists: bool,
    },
    /// Anything else: DataFusion's SQL.
    Other(String),
}

/// A statement's text and the line (from 1) where it starts in its script.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptStatement {
    pub sql: String,
    pub line: u64,
}

/// Splits a script at top-level `;`, keeping each statement's first line.
pub fn split_statements(script: &str) -> Result<Vec<ScriptStatement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, script)
        .tokenize_with_location()
        .map_err(|e| Error::Plan(format!("syntax error: {e}")))?;
    let mut out = Vec::new();
    let mut start: Option<(usize, u64)> = None;
    for tok in &tokens {
        let offset = byte_offset(script, tok.span.start.line, tok.span.start.column);
        match &tok.token {
            Token::SemiColon => {
                if let Some((s, line)) = start.take() {
                    push_statement(&mut out, &script[s..offset], line);
                }
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => {
                if start.is_none() {
                    start = Some((offset, tok.span.start.line));
                }
            }
        }
    }
    if let Some((s, line)) = start {
        push_statement(&mut out, &script[s..], line);
    }
    Ok(out)
}

fn push_statement(out: &mut Vec<ScriptStatement>, text: &str, line: u64) {
    let sql = text.trim().to_string();
    if !sql.is_empty() {
        out.push(ScriptStatement { sql, line });
    }
}

/// Byte offset of a 1-based (line, column) location, columns counted in chars.
fn byte_offset(text: &str, line: u64, column: u64) -> usize {
    if line == 0 {
        return text.len();
    }
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            return offset
                + l.char_indices()
                    .nth(column.saturating_sub(1) as usize)
                    .map_or(l.len(), |(b, _)| b);
        }
        offset += l.len();
    }
    text.len()
}

fn syntax(e: impl std::fmt::Display) -> Error {
    Error::Plan(format!("syntax error: {e}"))
}

/// The word at the parser's position, upper-cased, if it is one.
fn peek_word(p: &Parser) -> Option<String> {
    match p.peek_token().token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn next_word_is(p: &mut Parser, word: &str) -> bool {
    if peek_word(p).as_deref() == Some(word) {
        p.next_token();
        true
    } else {
        false
    }
}

fn ident(p: &mut Parser) -> Result<String> {
    let id = p.parse_identifier().map_err(syntax)?;
    Ok(if id.quote_style.is_some() {
        id.value
    } else {
        id.value.to_ascii_lowercase()
    })
}

/// Everything from the parser's position to the end of `sql`.
fn rest(sql: &str, p: &Parser) -> String {
    let loc = p.peek_token().span.start;
    sql[byte_offset(sql, loc.line, loc.column)..]
        .trim()
        .to_string()
}

/// Parses one statement (without its `;`).
/// The most operators one statement may hold: a chain of them nests as deep as it is
/// long in the plan (`1+1+...+1`), and planning walks it recursively.
pub const MAX_OPERATORS: usize = 2000;

/// Refuses a statement nested so deep that planning it would overflow the stack: more
/// than [`MAX_OPERATORS`] operators (parentheses are limited by the parser itself).
/// Counted on the tokens, without recursion.
pub fn check_nesting(sql: &str) -> Result<()> {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return Ok(()); // the parser reports it
    };
    let operators = tokens
        .iter()
        .filter(|t| {
            matches!(
                t,
                Token::Plus
                    | Token::Minus
                    | Token::Mul
                    | Token::Div
                    | Token::Mod
                    | Token::StringConcat
                    | Token::Eq
                    | Token::Neq
                    | Token::Lt
                    | Token::Gt
                    | Token::LtEq
                    | Token::GtEq
            ) || matches!(t, Token::Word(w) if matches!(w.keyword, Keyword::AND | Keyword::OR))
        })
        .count();
    if operators > MAX_OPERATORS {
        return plan_err!(
            "the statement holds {operators} operators; at most {MAX_OPERATORS} are allowed \
             (a chain that long nests too deep to plan): split it, or use a table"
        );
    }
    Ok(())
}

pub fn parse_statement(sql: &str) -> Result<Statement> {
    check_nesting(sql)?;
    let dialect = GenericDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(sql).map_err(syntax)?;
    let first = peek_word(&p).unwrap_or_default();
    match first.as_str() {
        "CREATE" if creates_function(sql) => Ok(Statement::CreateFunction(
            crate::sql_function::parse_create_function(sql)?,
        )),
        "CREATE" => parse_create(sql, &mut p),
        "INSERT" => parse_insert(sql, &mut p),
        "SET" => parse_set(sql, &mut p),
        "SHOW" => parse_show(sql, &mut p),
        "DESCRIBE" | "DESC" => {
            p.next_token();
            let name = ident(&mut p)?;
            expect_end(&mut p)?;
            Ok(Statement::Describe(name))
        }
        "EXPLAIN" => {
            p.next_token();
            Ok(Statement::Explain(rest(sql, &p)))
        }
        "STOP" => {
            p.next_token();
            if !next_word_is(&mut p, "QUERY") {
                return plan_err!("syntax error: expected STOP QUERY <id>");
            }
            let id = p.parse_literal_uint().map_err(syntax)?;
            expect_end(&mut p)?;
            Ok(Statement::StopQuery(id))
        }
        "DROP" => {
            p.next_token();
            if next_word_is(&mut p, "FUNCTION") {
                let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
                let name = ident(&mut p)?;
                // PostgreSQL's parameter types, which tell overloads apart: one
                // function per name here.
                if p.consume_token(&Token::LParen) {
                    let mut depth = 1;
                    while depth > 0 {
                        match p.next_token().token {
                            Token::LParen => depth += 1,
                            Token::RParen => depth -= 1,
                            Token::EOF => return plan_err!("syntax error: expected )"),
                            _ => {}
                        }
                    }
                }
                expect_end(&mut p)?;
                return Ok(Statement::DropFunction { name, if_exists });
            }
            let kind = match peek_word(&p).as_deref() {
                Some("STREAM") => ObjectKind::Stream,
                Some("SINK") => ObjectKind::Sink,
                Some("TABLE") => ObjectKind::Table,
                _ => return Ok(Statement::Other(sql.to_string())),
            };
            p.next_token();
            let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = ident(&mut p)?;
            expect_end(&mut p)?;
            Ok(Statement::Drop {
                kind,
                name,
                if_exists,
            })
        }
        "ADVANCE" => {
            p.next_token();
            let n = p.parse_literal_uint().map_err(syntax)?;
            if !(next_word_is(&mut p, "BATCHES") || next_word_is(&mut p, "BATCH")) {
                return plan_err!("syntax error: expected ADVANCE <n> BATCHES");
            }
            expect_end(&mut p)?;
            Ok(Statement::Advance(n))
        }
        _ if starts_a_query(sql) => Ok(Statement::Query(ParsedQuery::parse(sql)?)),
        _ => Ok(Statement::Other(sql.to_string())),
    }
}

/// `CREATE STREAM | SINK | TABLE ... AS`, else DataFusion's CREATE.
/// Whether `sql` is `CREATE [OR REPLACE] [TEMPORARY [SYSTEM]] FUNCTION ...`.
fn creates_function(sql: &str) -> bool {
    let dialect = GenericDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize() else {
        return false;
    };
    let words = tokens.iter().filter_map(|t| match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        Token::Whitespace(_) => None,
        _ => Some(String::new()),
    });
    for w in words.skip(1) {
        match w.as_str() {
            "OR" | "REPLACE" | "TEMPORARY" | "TEMP" | "SYSTEM" => continue,
            "FUNCTION" => return true,
            _ => return false,
        }
    }
    false
}

fn parse_create(sql: &str, p: &mut Parser) -> Result<Statement> {
    p.next_token();
    let or_replace = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    match peek_word(p).as_deref() {
        Some("STREAM") if !or_replace => {
            p.next_token();
            parse_create_stream(sql, p)
        }
        Some("SINK") if !or_replace => {
            p.next_token();
            let name = ident(p)?;
            let options = parse_with(p)?;
            let query = if p.parse_keyword(Keyword::AS) {
                Some(ParsedQuery::parse(&rest(sql, p))?)
            } else {
                expect_end(p)?;
                None
            };
            Ok(Statement::CreateSink {
                name,
                options,
                query,
            })
        }
        Some("VIEW") | Some("TEMPORARY") => {
            // Flink's `CREATE TEMPORARY VIEW` is a view of this session, as every view is.
            if peek_word(p).as_deref() == Some("TEMPORARY") {
                p.next_token();
                if peek_word(p).as_deref() != Some("VIEW") {
                    return Ok(Statement::Other(sql.to_string()));
                }
            }
            p.next_token();
            let name = ident(p)?;
            match as_query(sql, p) {
                Some(query) => Ok(Statement::CreateView {
                    sql: format!(
                        "CREATE {}VIEW {name} AS {}",
                        if or_replace { "OR REPLACE " } else { "" },
                        query.text
                    ),
                    name,
                    query,
                    or_replace,
                }),
                None => Ok(Statement::Other(sql.to_string())),
            }
        }
        Some("TABLE") => {
            p.next_token();
            let name = ident(p)?;
            // Not a query we can parse: DataFusion's CREATE TABLE, and its error.
            match as_query(sql, p) {
                Some(query) => Ok(Statement::CreateTableAs {
                    name,
                    query,
                    or_replace,
                }),
                None => Ok(Statement::Other(sql.to_string())),
            }
        }
        _ => Ok(Statement::Other(sql.to_string())),
    }
}

/// `AS <query>` next in `p`, if it is a query Flumen parses (otherwise the statement
/// is DataFusion's, with its own error).
fn as_query(sql: &str, p: &mut Parser) -> Option<ParsedQuery> {
    p.parse_keyword(Keyword::AS)
        .then(|| ParsedQuery::parse(&rest(sql, p)).ok())
        .flatten()
}

/// `INSERT INTO name <query>`.
fn parse_insert(sql: &str, p: &mut Parser) -> Result<Statement> {
    p.next_token();
    if !p.parse_keyword(Keyword::INTO) {
        return Ok(Statement::Other(sql.to_string()));
    }
    let target = ident(p)?;
    Ok(Statement::InsertInto {
        target,
        query: ParsedQuery::parse(&rest(sql, p)).map_err(|e| e.to_string()),
        sql: sql.to_string(),
    })
}

/// `SET key = value` / `SET key TO value`.
fn parse_set(sql: &str, p: &mut Parser) -> Result<Statement> {
    p.next_token();
    let mut key = ident(p)?;
    // A dotted key is DataFusion's (`datafusion.<section>.<name>`: it gets the
    // statement whole) or Flumen's (`kafka.bootstrap_servers`; a misspelled one is
    // refused naming the nearest setting).
    while p.consume_token(&Token::Period) {
        key = format!("{key}.{}", ident(p)?);
    }
    if key.to_ascii_lowercase().starts_with("datafusion.") {
        return Ok(Statement::Other(sql.to_string()));
    }
    if !(p.consume_token(&Token::Eq) || p.parse_keyword(Keyword::TO)) {
        return Ok(Statement::Other(sql.to_string()));
    }
    let value = rest(sql, p);
    let value = value.trim().trim_matches('\'').to_string();
    Ok(Statement::Set {
        key,
        value,
        sql: sql.to_string(),
    })
}

/// `SHOW STREAMS | SINKS | TABLES | QUERIES`, `SHOW PROGRESS [query]`.
fn parse_show(sql: &str, p: &mut Parser) -> Result<Statement> {
    p.next_token();
    if peek_word(p).as_deref() == Some("PROGRESS") {
        p.next_token();
        let query = match p.next_token().token {
            Token::EOF | Token::SemiColon => None,
            Token::Word(w) => Some(w.value),
            Token::Number(n, _) => Some(n),
            other => return plan_err!("SHOW PROGRESS [query id or name], got {other}"),
        };
        expect_end(p)?;
        return Ok(Statement::ShowProgress(query));
    }
    let kind = match peek_word(p).as_deref() {
        Some("STREAMS") => ShowKind::Streams,
        Some("TABLES") => ShowKind::Tables,
        Some("SINKS") => ShowKind::Sinks,
        Some("QUERIES") => ShowKind::Queries,
        _ => return Ok(Statement::Other(sql.to_string())),
    };
    p.next_token();
    expect_end(p)?;
    Ok(Statement::Show(kind))
}

fn expect_end(p: &mut Parser) -> Result<()> {
    match p.peek_token().token {
        Token::EOF => Ok(()),
        other => plan_err!("syntax error: unexpected '{other}' at the end of the statement"),
    }
}

fn parse_create_stream(sql: &str, p: &mut Parser) -> Result<Statement> {
    let name = ident(p)?;
    let mut columns = Vec::new();
    let mut watermark = None;
    let mut ksql_key = false;
    if p.consume_token(&Token::LParen) {
        loop {
            if next_word_is(p, "WATERMARK") {
                p.expect_keyword(Keyword::FOR).map_err(syntax)?;
                let column = ident(p)?;
                p.expect_keyword(Keyword::AS).map_err(syntax)?;
                let expr = p.parse_expr().map_err(syntax)?;
                watermark = Some(Watermark {
                    delay: watermark_delay(&column, &expr)?,
                    column,
                });
            } else {
                let col_name = ident(p)?;
                let sql_type = p.parse_data_type().map_err(syntax)?;
                let data_type = sql_to_arrow(&col_name, &sql_type)?;
                let mut nullable = true;
                loop {
                    if p.parse_keywords(&[Keyword::NOT, Keyword::NULL]) {
                        nullable = false;
                    } else if p.parse_keyword(Keyword::NULL) {
                    } else if next_word_is(p, "KEY")
                        || p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY])
                    {
                        ksql_key = true;
                    } else {
                        break;
                    }
                }
                if columns
                    .iter()
                    .any(|c: &ColumnDef| c.name.eq_ignore_ascii_case(&col_name))
                {
                    return plan_err!(
                        "CREATE STREAM {name}: column {col_name} is declared twice; column names must differ"
                    );
                }
                columns.push(ColumnDef {
                    name: col_name,
                    data_type,
                    nullable,
                });
            }
            if p.consume_token(&Token::Comma) {
                continue;
            }
            p.expect_token(&Token::RParen).map_err(syntax)?;
            break;
        }
    }
    let _ = ksql_key;
    let mut options = parse_with(p)?;
    if p.parse_keyword(Keyword::AS) {
        if !columns.is_empty() {
            return plan_err!(
                "CREATE STREAM {name} (...) AS SELECT: a derived stream takes its columns from the query; remove the column list"
            );
        }
        // A derived stream's options (timestamp, watermark_delay) are the session's.
        return Ok(Statement::CreateStreamAs {
            name,
            options,
            query: ParsedQuery::parse(&rest(sql, p))?,
        });
    }
    normalize_ksql_options(&mut options, &mut watermark);
    expect_end(p)?;
    Ok(Statement::CreateStream {
        name,
        columns,
        watermark,
        options,
    })
}

/// `ts` or `ts - INTERVAL '5' SECOND` → the delay.
fn watermark_delay(column: &str, expr: &SqlExpr) -> Result<Duration> {
    match expr {
        SqlExpr::Identifier(id) if id.value.eq_ignore_ascii_case(column) => Ok(Duration::ZERO),
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } => match (left.as_ref(), right.as_ref()) {
            (SqlExpr::Identifier(id), SqlExpr::Interval(i))
                if id.value.eq_ignore_ascii_case(column) =>
            {
                interval_duration(i)
            }
            _ => plan_err!(
                "WATERMARK FOR {column} AS {expr}: write {column} - INTERVAL '<n>' <unit>"
            ),
        },
        _ => plan_err!("WATERMARK FOR {column} AS {expr}: write {column} - INTERVAL '<n>' <unit>"),
    }
}

/// ksqlDB's `KAFKA_TOPIC`, `VALUE_FORMAT`, `TIMESTAMP` spelled as Flumen's options.
fn normalize_ksql_options(options: &mut Options, watermark: &mut Option<Watermark>) {
    if let Some(topic) = options.remove("kafka_topic") {
        options.insert("topic".into(), topic);
        options
            .entry("connector".into())
            .or_insert_with(|| "kafka".into());
    }
    if let Some(format) = options.remove("value_format") {
        options.insert("format".into(), format.to_ascii_lowercase());
    }
    if let Some(ts) = options.remove("timestamp")
        && watermark.is_none()
    {
        *watermark = Some(Watermark {
            column: ts.to_ascii_lowercase(),
            delay: Duration::ZERO,
        });
    }
}

fn parse_with(p: &mut Parser) -> Result<Options> {
    let mut options = Options::new();
    if !matches!(peek_word(p).as_deref(), Some("WITH")) {
        return Ok(options);
    }
    for opt in p.parse_options(Keyword::WITH).map_err(syntax)? {
        let SqlOption::KeyValue { key, value } = opt else {
            return plan_err!("WITH options must be written key = 'value', got {opt}");
        };
        let value = match value {
            SqlExpr::Value(v) => match v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
                Value::Number(n, _) => n,
                Value::Boolean(b) => b.to_string(),
                other => other.to_string(),
            },
            SqlExpr::Identifier(id) => id.value,
            other => other.to_string(),
        };
        let key = key.value.to_ascii_lowercase();
        if let Some(first) = options.get(&key) {
            return plan_err!(
                "option {key} is given twice ('{first}' and '{value}'); give it once"
            );
        }
        options.insert(key, value);
    }
    Ok(options)
}

/// The Arrow type of a declared column type.
pub fn sql_to_arrow(column: &str, t: &SqlType) -> Result<DataType> {
    use datafusion::arrow::datatypes::TimeUnit;
    Ok(match t {
        SqlType::BigInt(_) | SqlType::Int8(_) | SqlType::Int64 => DataType::Int64,
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) | SqlType::Int32 => {
            DataType::Int32
        }
        SqlType::SmallInt(_) | SqlType::Int2(_) | SqlType::Int16 => DataType::Int16,
        SqlType::TinyInt(_) => DataType::Int8,
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 | SqlType::Float64 => {
            DataType::Float64
        }
        SqlType::Float(_) | SqlType::Real | SqlType::Float4 | SqlType::Float32 => DataType::Float32,
        SqlType::Boolean | SqlType::Bool => DataType::Boolean,
        SqlType::Text
        | SqlType::String(_)
        | SqlType::Varchar(_)
        | SqlType::Char(_)
        | SqlType::CharVarying(_)
        | SqlType::CharacterVarying(_)
        | SqlType::Character(_) => DataType::Utf8,
        SqlType::Timestamp(_, _) | SqlType::Datetime(_) => {
            DataType::Timestamp(TimeUnit::Millisecond, None)
        }
        SqlType::Date => DataType::Date32,
        SqlType::Bytea | SqlType::Blob(_) | SqlType::Binary(_) | SqlType::Varbinary(_) => {
            DataType::Binary
        }
        SqlType::Decimal(info) | SqlType::Numeric(info) => {
            use datafusion::sql::sqlparser::ast::ExactNumberInfo;
            match info {
                ExactNumberInfo::PrecisionAndScale(p, s) => {
                    DataType::Decimal128(*p as u8, *s as i8)
                }
                ExactNumberInfo::Precision(p) => DataType::Decimal128(*p as u8, 0),
                ExactNumberInfo::None => DataType::Decimal128(38, 10),
            }
        }
        other => {
            return plan_err!(
                "column '{column}' has unsupported type {other}; accepted: BIGINT, INT, SMALLINT, \
                 TINYINT, DOUBLE, FLOAT, REAL, DECIMAL(p,s), BOOLEAN, TEXT, VARCHAR, STRING, \
                 TIMESTAMP, DATE, BYTEA"
            );
        }
    })
}

/// `SET batch_interval = '1 second'` etc.: the settings Flumen owns.
pub fn parse_setting_duration(key: &str, value: &str) -> Result<Duration> {
    parse_duration(value).map_err(|e| Error::Plan(format!("SET {key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_scripts_keeping_lines() {
        let s = split_statements("SET a = 1;\n\nSELECT ';'\n  FROM t;\n-- end\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].sql, "SELECT ';'\n  FROM t");
        assert_eq!(s[1].line, 3);
    }

    #[test]
    fn create_stream_with_watermark_and_options() {
        let st = parse_statement(
            "CREATE STREAM bids (auction BIGINT, price BIGINT NOT NULL, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '4' SECOND) \
             WITH (connector = 'queue', format = 'json')",
        )
        .unwrap();
        let Statement::CreateStream {
            name,
            columns,
            watermark,
            options,
        } = st
        else {
            panic!("{st:?}")
        };
        assert_eq!(name, "bids");
        assert_eq!(columns.len(), 3);
        assert!(!columns[1].nullable);
        assert_eq!(watermark.unwrap().delay, Duration::from_secs(4));
        assert_eq!(options["connector"], "queue");
    }

    #[test]
    fn ksql_alias_form() {
        let st = parse_statement(
            "CREATE STREAM s (id BIGINT KEY, ts TIMESTAMP) WITH (KAFKA_TOPIC = 't', VALUE_FORMAT = 'JSON', TIMESTAMP = 'ts')",
        )
        .unwrap();
        let Statement::CreateStream {
            options, watermark, ..
        } = st
        else {
            panic!()
        };
        assert_eq!(options["connector"], "kafka");
        assert_eq!(options["topic"], "t");
        assert_eq!(options["format"], "json");
        assert_eq!(watermark.unwrap().column, "ts");
    }

    #[test]
    fn statements_with_queries_keep_the_query_parsed() {
        let st = parse_statement(
            "CREATE SINK out WITH (connector = 'memory') AS SELECT a FROM s EMIT CHANGES",
        )
        .unwrap();
        let Statement::CreateSink {
            name,
            options,
            query: Some(query),
        } = st
        else {
            panic!("a CREATE SINK with a query: {st:?}");
        };
        assert_eq!(
            (name.as_str(), options["connector"].as_str()),
            ("out", "memory")
        );
        assert_eq!(query.text, "SELECT a FROM s");
        assert_eq!(query.query.to_string(), "SELECT a FROM s");
        assert_eq!(query.emit, Some(crate::OutputMode::Update));
        assert_eq!(
            parse_statement("ADVANCE 3 BATCHES").unwrap(),
            Statement::Advance(3)
        );
        assert_eq!(
            parse_statement("show streams").unwrap(),
            Statement::Show(ShowKind::Streams)
        );
        assert!(matches!(
            parse_statement("SELECT 1").unwrap(),
            Statement::Query(_)
        ));
        // A view carries its query parsed (over streams it is a derived stream), and
        // the text DataFusion takes otherwise.
        match parse_statement("CREATE TEMPORARY VIEW v AS SELECT 1").unwrap() {
            Statement::CreateView {
                name,
                query,
                or_replace,
                sql,
            } => {
                assert_eq!((name.as_str(), or_replace), ("v", false));
                assert_eq!(query.text, "SELECT 1");
                assert_eq!(sql, "CREATE VIEW v AS SELECT 1");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_statement("CREATE VIEW v (a) AS SELECT 1").unwrap(),
            Statement::Other(_)
        ));
        let err = parse_statement("CREATE STREAM s (a BLOB2)")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unsupported type") || err.contains("syntax error"),
            "{err}"
        );
    }
}
