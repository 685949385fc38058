//! The interactive REPL: rustyline with multi-line input until `;`, history in
//! `~/.flumen_history`, completion of keywords and object names, meta commands.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::Result;
use flumen_sql::{FlumenSession, StatementResult};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Editor, Helper, history::DefaultHistory};

use crate::exec::{PrintOptions, print_batches};
use crate::print::{Format, render_with_schema};

const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "LIMIT",
    "HAVING",
    "AS",
    "AND",
    "OR",
    "NOT",
    "JOIN",
    "ON",
    "CREATE",
    "STREAM",
    "SINK",
    "TABLE",
    "WITH",
    "INSERT",
    "INTO",
    "VALUES",
    "SET",
    "SHOW",
    "STREAMS",
    "SINKS",
    "TABLES",
    "QUERIES",
    "DESCRIBE",
    "EXPLAIN",
    "STOP",
    "QUERY",
    "DROP",
    "WATERMARK",
    "FOR",
    "INTERVAL",
    "SECOND",
    "MINUTE",
    "WINDOW",
    "COUNT",
    "SUM",
    "AVG",
    "MIN",
    "MAX",
    "EMIT",
    "CHANGES",
    "FINAL",
    "CONNECTOR",
    "OUTPUT_MODE",
    "BATCH_INTERVAL",
    "TRIGGER",
];

pub const HELP: &str = "\
Statements end with ';' and may span lines. Meta commands:
  \\d            list streams, sinks and tables
  \\d NAME       describe NAME
  \\timing       toggle printing how long each statement took
  \\format F     print (Spark's batch layout, tables for the rest), table, csv, json
  \\help, \\?     this help
  \\q            quit
A SELECT over a stream runs until Ctrl-C, printing each batch; Ctrl-C stops it and
returns to the prompt. CREATE SINK/TABLE ... AS SELECT run in the background
(SHOW QUERIES, STOP QUERY n).
";

struct FlumenHelper {
    names: Arc<parking_names::Names>,
}

mod parking_names {
    use std::sync::Mutex;

    /// Object names for completion, refreshed after every statement.
    #[derive(Default)]
    pub struct Names(pub Mutex<Vec<String>>);
}

impl Helper for FlumenHelper {}

impl Hinter for FlumenHelper {
    type Hint = String;
}

impl Highlighter for FlumenHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        // Keywords in bold blue, string literals in green.
        let mut out = String::with_capacity(line.len() + 16);
        let mut word = String::new();
        let mut in_string = false;
        let flush = |word: &mut String, out: &mut String| {
            if KEYWORDS.contains(&word.to_ascii_uppercase().as_str()) {
                out.push_str("\x1b[1;34m");
                out.push_str(word);
                out.push_str("\x1b[0m");
            } else {
                out.push_str(word);
            }
            word.clear();
        };
        for c in line.chars() {
            if in_string {
                out.push(c);
                if c == '\'' {
                    out.push_str("\x1b[0m");
                    in_string = false;
                }
            } else if c == '\'' {
                flush(&mut word, &mut out);
                out.push_str("\x1b[32m'");
                in_string = true;
            } else if c.is_alphanumeric() || c == '_' {
                word.push(c);
            } else {
                flush(&mut word, &mut out);
                out.push(c);
            }
        }
        flush(&mut word, &mut out);
        if in_string {
            out.push_str("\x1b[0m");
        }
        Cow::Owned(out)
    }

    fn highlight_char(
        &self,
        _line: &str,
        _pos: usize,
        _kind: rustyline::highlight::CmdKind,
    ) -> bool {
        true
    }
}

impl Validator for FlumenHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        let input = ctx.input().trim();
        if input.is_empty() || input.starts_with('\\') || input.ends_with(';') {
            Ok(ValidationResult::Valid(None))
        } else {
            Ok(ValidationResult::Incomplete)
        }
    }
}

impl Completer for FlumenHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let prefix = &line[start..pos];
        if prefix.is_empty() {
            return Ok((pos, Vec::new()));
        }
        let upper = prefix.to_ascii_uppercase();
        // Names of streams, sinks, tables and columns first: what is typed most.
        let mut out: Vec<Pair> = match self.names.0.lock() {
            Ok(names) => names
                .iter()
                .filter(|n| n.starts_with(prefix))
                .map(|n| Pair {
                    display: n.clone(),
                    replacement: n.clone(),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        out.extend(
            KEYWORDS
                .iter()
                .filter(|k| k.starts_with(&upper))
                .map(|k| Pair {
                    display: k.to_string(),
                    replacement: k.to_string(),
                }),
        );
        Ok((start, out))
    }
}

fn history_path() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".flumen_history"))
}

/// Runs the REPL until `\q` or end of input.
pub async fn run(session: &mut FlumenSession, mut options: PrintOptions) -> Result<()> {
    let names = Arc::new(parking_names::Names::default());
    let mut editor: Editor<FlumenHelper, DefaultHistory> = Editor::new()?;
    editor.set_helper(Some(FlumenHelper {
        names: names.clone(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "flumen {} — type \\help for help, \\q to quit",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        let line = tokio::task::block_in_place(|| editor.readline("flumen> "));
        let line = match line {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(text);
        // Saved after every statement: a killed REPL keeps its history.
        if let Some(h) = &history {
            let _ = editor.save_history(h);
        }
        if let Some(meta) = text.strip_prefix('\\') {
            let mut parts = meta.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("q" | "quit"), _) => break,
                (Some("help" | "?"), _) => print!("{HELP}"),
                (Some("timing"), _) => {
                    options.timing = !options.timing;
                    println!("Timing is {}", if options.timing { "on" } else { "off" });
                }
                (Some("format"), Some(f)) => match f.parse::<Format>() {
                    Ok(f) => {
                        options.format = f;
                        println!("Output format is {f:?}");
                    }
                    Err(e) => eprintln!("error: {e}"),
                },
                (Some("d"), None) => {
                    for (title, stmt) in [
                        ("Streams", "SHOW STREAMS"),
                        ("Sinks", "SHOW SINKS"),
                        ("Tables", "SHOW TABLES"),
                    ] {
                        println!("{title}");
                        print_rows(session, stmt, options.format).await;
                    }
                }
                (Some("d"), Some(name)) => {
                    print_rows(session, &format!("DESCRIBE {name}"), options.format).await
                }
                _ => eprintln!("error: unknown command \\{meta}; \\help lists them"),
            }
            continue;
        }
        let started = std::time::Instant::now();
        let result = session.execute(text).await;
        let took = started.elapsed();
        let print_time = |options: &PrintOptions| {
            if options.timing {
                println!("Time: {:.3} ms", took.as_secs_f64() * 1000.0);
            }
        };
        match result {
            Ok(StatementResult::Continuous {
                query_id, batches, ..
            }) => {
                println!("Query {query_id} running; press Ctrl-C to stop it");
                let printer = tokio::spawn(print_batches(batches, options.format));
                let ctx = session.queries().find(|q| q.id == query_id).map(|q| q.ctx);
                // Until Ctrl-C, or until the query ends by itself (it failed, or its
                // sources are drained): then its error, and the prompt again.
                let ended = async {
                    match &ctx {
                        Some(ctx) => ctx.await_termination().await,
                        None => std::future::pending().await,
                    }
                };
                let outcome = tokio::select! {
                    _ = tokio::signal::ctrl_c() => None,
                    r = ended => Some(r),
                };
                if let Err(e) = session.stop_query(query_id, false).await {
                    eprintln!("error: {e}");
                }
                let _ = printer.await;
                match outcome {
                    None => println!("\nQuery {query_id} stopped"),
                    Some(Ok(())) => println!("Query {query_id} finished"),
                    Some(Err(e)) => eprintln!("error: query {query_id} failed: {e}"),
                }
            }
            Ok(other) => {
                if let Err(e) = print_result(other, options) {
                    eprintln!("error: {e:#}");
                }
                print_time(&options);
            }
            Err(e) => {
                eprintln!("error: {e}");
                print_time(&options);
            }
        }
        if let Ok(mut n) = names.0.lock() {
            *n = session.object_names();
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    session.stop_all().await?;
    Ok(())
}

fn print_result(result: StatementResult, options: PrintOptions) -> Result<()> {
    match result {
        StatementResult::Done(msg) => println!("{msg}"),
        StatementResult::Rows { schema, batches } => {
            print!("{}", render_with_schema(options.format, &schema, &batches)?)
        }
        StatementResult::Continuous { query_id, .. } => println!("Query {query_id} started"),
    }
    Ok(())
}

async fn print_rows(session: &mut FlumenSession, sql: &str, format: Format) {
    match session.execute(sql).await {
        Ok(StatementResult::Rows { schema, batches }) => {
            match render_with_schema(format, &schema, &batches) {
                Ok(s) => print!("{s}"),
                Err(e) => eprintln!("error: {e:#}"),
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("error: {e}"),
    }
}
