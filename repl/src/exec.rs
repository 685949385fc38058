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

/// A continuous query's batches, printed as they arrive: Spark's layout, or the
/// chosen format with a header line per batch.
pub async fn print_batches(
    mut rx: UnboundedReceiver<(Time, Vec<datafusion::arrow::record_batch::RecordBatch>)>,
    format: Format,
) {
    while let Some((t, batches)) = rx.recv().await {
        let text = match format {
            Format::Print => {
                flumen_engine::print::format_print(t, &batches, 20).map_err(|e| anyhow!(e))
            }
            _ if batches.iter().all(|b| b.num_rows() == 0) => Ok(format!("Batch: {t} (no rows)\n")),
            other => render(other, &batches).map(|s| format!("Batch: {t}\n{s}")),
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
pub async fn run_script(
    session: &mut FlumenSession,
    script: &str,
    options: PrintOptions,
    printers: &mut JoinSet<()>,
) -> Result<()> {
    let statements = split_statements(script).map_err(|e| anyhow!("{e}"))?;
    for st in statements {
        run_statement(session, &st.sql, options, printers)
            .await
            .map_err(|e| anyhow!("line {}: {e}", st.line))?;
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
        StatementResult::Done(msg) => {
            if !msg.is_empty() {
                println!("{msg}");
            }
        }
        StatementResult::Rows { batches, .. } => {
            print!("{}", render(options.format, &batches)?);
        }
        StatementResult::Continuous {
            query_id, batches, ..
        } => {
            println!("Query {query_id} started; its batches print as they arrive");
            printers.spawn(print_batches(batches, options.format));
        }
    }
    if options.timing {
        println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}
