//! Running statements and printing what they produce: one path for `-f`, `-c` and the
//! REPL.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, anyhow};
use flumen_engine::Time;
use flumen_sql::statement::split_statements;
use flumen_sql::{FlumenSession, StatementResult};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;

use crate::print::{Format, render};

/// Printing options shared by every mode.
#[derive(Debug, Clone, Copy)]
pub struct PrintOptions {
    pub format: Format,
    pub timing: bool,
}

/// A continuous query's batches, printed as they arrive: Spark's layout, a table per
/// batch, or — for piping — data rows only (CSV with one header line, JSON lines).
pub async fn print_batches(
    mut rx: UnboundedReceiver<(Time, Vec<datafusion::arrow::record_batch::RecordBatch>)>,
    format: Format,
) {
    let mut header_done = false;
    while let Some((t, batches)) = rx.recv().await {
        let empty = batches.iter().all(|b| b.num_rows() == 0);
        let text = match format {
            Format::Print => {
                flumen_engine::print::format_print(t, &batches, 20).map_err(|e| anyhow!(e))
            }
            Format::Csv | Format::Json if empty => Ok(String::new()),
            Format::Csv => {
                let text = render(Format::Csv, &batches);
                if header_done {
                    // The header line once, before the first row.
                    text.map(|s| {
                        s.split_once('\n')
                            .map_or(String::new(), |(_, rows)| rows.to_string())
                    })
                } else {
                    header_done = true;
                    text
                }
            }
            Format::Json => render(Format::Json, &batches),
            Format::Table if empty => Ok(format!("Batch: {t} (no rows)\n")),
            Format::Table => render(Format::Table, &batches).map(|s| format!("Batch: {t}\n{s}")),
        };
        match text {
            Ok(text) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Err(e) => eprintln!("error: printing batch {t}: {e:#}"),
        }
    }
}

/// Runs a script's statements in order. Continuous queries print in the background
/// (their tasks go to `printers`). Stops at the first error, naming its line.
/// Errors name the line (`-f`), or with `by_statement` the statement's place in the
/// command (`-c`, where statements often share one line).
pub async fn run_script(
    session: &mut FlumenSession,
    script: &str,
    options: PrintOptions,
    printers: &mut JoinSet<()>,
    by_statement: bool,
) -> Result<()> {
    let statements = split_statements(script).map_err(|e| anyhow!("{e}"))?;
    for (n, st) in statements.into_iter().enumerate() {
        run_statement(session, &st.sql, options, printers)
            .await
            .map_err(|e| {
                if by_statement {
                    anyhow!("statement {}: {e}", n + 1)
                } else {
                    anyhow!("line {}: {e}", st.line)
                }
            })?;
    }
    Ok(())
}

/// Runs one statement and prints its result.
pub async fn run_statement(
    session: &mut FlumenSession,
    sql: &str,
    options: PrintOptions,
    printers: &mut JoinSet<()>,
) -> Result<()> {
    let started = Instant::now();
    match session.execute(sql).await? {
        // What a statement did goes to stderr: stdout holds only rows.
        StatementResult::Done(msg) => {
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
        }
        StatementResult::Rows { schema, batches } => {
            print!(
                "{}",
                crate::print::render_with_schema(options.format, &schema, &batches)?
            );
        }
        StatementResult::Continuous {
            query_id, batches, ..
        } => {
            eprintln!("Query {query_id} started; its batches print as they arrive");
            printers.spawn(print_batches(batches, options.format));
        }
    }
    if options.timing {
        eprintln!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}
