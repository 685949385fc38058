//! The `flumen` command: the SQL REPL, scripts (`-f`), statements (`-c`) and a demo.

mod demo;
mod exec;
mod print;
mod repl;

/// mimalloc keeps freed memory for reuse (see benchmarks/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use flumen_engine::SystemClock;
use flumen_sql::FlumenSession;
use tokio::task::JoinSet;

use crate::exec::{PrintOptions, run_script};
use crate::print::Format;

const HELP: &str = "\
flumen — a SQL-first micro-batch stream processing engine

USAGE:
    flumen [OPTIONS]                 interactive SQL REPL
    flumen -f FILE [OPTIONS]         run a script, then keep its queries running
    flumen -c 'SQL; SQL' [OPTIONS]   run statements and exit
    flumen demo [--seconds N]        a self-contained streaming demo (no server needed)

OPTIONS:
    -f, --file FILE              SQL script to run
    -c, --command SQL            statements to run (continuous queries print until
                                 Ctrl-C/SIGTERM, as with -f)
        --keep-going             when a query fails, keep the others running (the exit
                                 code is still 2 at the end)
        --trigger MODE           available-now: process what the sources hold, then
                                 exit; processing-time (default): run until Ctrl-C/SIGTERM
        --batch-interval D       e.g. '1 second' (default), '500 ms'
        --checkpoint DIR         checkpoint location (SET checkpoint_location): each
                                 query resumes where it stopped
        --checkpoint-interval N  snapshot state every N batches (default 1; SET
                                 checkpoint_interval)
        --progress-log FILE      append each batch's progress (JSON lines, as Spark's
                                 StreamingQueryProgress) to FILE (SET progress_log)
        --ui ADDR                serve the web UI and /metrics on ADDR (default
                                 127.0.0.1:4040, or the next free port after it)
        --no-ui                  no web UI
        --format F               print (default: Spark's layout for continuous
                                 queries, tables otherwise), table, csv or json
    -h, --help                   this help
    -V, --version                the version

A script's queries run until SIGINT or SIGTERM, which stops them gracefully (the batch
in flight finishes); with --trigger available-now, until their sources are drained.

Exit codes: 0 when every query ended well (stopped by a signal, or drained); 1 for a
statement that fails (`error: line N: ...` on stderr) or a bad option; 2 when a query
fails while it runs (`error: query N (sink) failed: ...`): the other queries are
stopped gracefully and flumen exits at once, unless --keep-going.
";

#[derive(Default)]
struct Args {
    file: Option<String>,
    command: Option<String>,
    trigger: Option<String>,
    batch_interval: Option<String>,
    checkpoint: Option<String>,
    checkpoint_interval: Option<String>,
    progress_log: Option<String>,
    ui: Option<String>,
    no_ui: bool,
    keep_going: bool,
    format: Option<Format>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args::default();
    let mut i = 0;
    while i < args.len() {
        let value = |i: usize| -> Result<String> {
            args.get(i + 1)
                .cloned()
                .ok_or_else(|| anyhow!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "-f" | "--file" => a.file = Some(value(i)?),
            "-c" | "--command" => a.command = Some(value(i)?),
            "--trigger" => a.trigger = Some(value(i)?),
            "--batch-interval" => a.batch_interval = Some(value(i)?),
            "--checkpoint" => a.checkpoint = Some(value(i)?),
            "--checkpoint-interval" => a.checkpoint_interval = Some(value(i)?),
            "--progress-log" => a.progress_log = Some(value(i)?),
            "--ui" => a.ui = Some(value(i)?),
            "--no-ui" => {
                a.no_ui = true;
                i += 1;
                continue;
            }
            "--keep-going" => {
                a.keep_going = true;
                i += 1;
                continue;
            }
            "--format" => a.format = Some(value(i)?.parse().map_err(|e: String| anyhow!(e))?),
            other => bail!("unknown option '{other}'; run `flumen --help` for the options"),
        }
        i += 2;
    }
    Ok(a)
}

/// Logs (warnings by default) to stderr through `tracing`; the level and per-module
/// filters come from `FLUMEN_LOG`, else `RUST_LOG` (e.g. `FLUMEN_LOG=info`,
/// `FLUMEN_LOG=flumen_connectors=debug`). The engine's `log` records are bridged in.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("FLUMEN_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "warn".into());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: FLUMEN_LOG/RUST_LOG '{spec}' is not a log filter ({e}); using 'warn'");
        EnvFilter::new("warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .try_init();
}

#[tokio::main]
async fn main() -> ExitCode {
    // No raw panic reaches the user: a bug is reported as one, with exit code 101.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (a bug in Flumen, please report it): {info}");
    }));
    init_logging();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]).await,
        Some("--version" | "-V") => {
            println!("flumen {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("--help" | "-h") => {
            print!("{HELP}");
            Ok(())
        }
        _ => run(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<QueriesFailed>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Queries failed while they ran (exit code 2).
#[derive(Debug)]
struct QueriesFailed(String);

impl std::fmt::Display for QueriesFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueriesFailed {}

/// The next query to stop with an error: its id, target and error. Pending while
/// every query runs or ended well.
async fn next_failure(
    session: &FlumenSession,
    seen: &std::collections::HashSet<u64>,
) -> (u64, String, String) {
    let mut ends = JoinSet::new();
    for q in session.queries().filter(|q| !seen.contains(&q.id)) {
        ends.spawn(async move { (q.id, q.target, q.ctx.await_termination().await) });
    }
    while let Some(ended) = ends.join_next().await {
        if let Ok((id, target, Err(e))) = ended {
            return (id, target, e.to_string());
        }
    }
    std::future::pending().await
}

async fn run(args: &[String]) -> Result<()> {
    let args = parse_args(args)?;
    let mut session = FlumenSession::new(flumen_connectors::registry(), Arc::new(SystemClock));
    let options = PrintOptions {
        format: args.format.unwrap_or(Format::Print),
        timing: false,
    };
    let mut setup = Vec::new();
    let available_now = match args.trigger.as_deref() {
        None | Some("processing-time") => false,
        Some("available-now") => true,
        Some(other) => bail!("unknown trigger '{other}'; accepted: available-now, processing-time"),
    };
    if available_now {
        setup.push("SET trigger = 'available_now'".to_string());
    }
    // Data only on stdout with --format csv|json: console sinks print rows alone.
    match args.format {
        Some(Format::Csv) => setup.push("SET console_format = 'csv'".into()),
        Some(Format::Json) => setup.push("SET console_format = 'json'".into()),
        _ => {}
    }
    if let Some(d) = &args.batch_interval {
        setup.push(format!("SET batch_interval = '{d}'"));
    }
    if let Some(c) = &args.checkpoint {
        setup.push(format!("SET checkpoint_location = '{c}'"));
    }
    if let Some(n) = &args.checkpoint_interval {
        setup.push(format!("SET checkpoint_interval = '{n}'"));
    }
    if let Some(f) = &args.progress_log {
        setup.push(format!("SET progress_log = '{f}'"));
    }
    for s in setup {
        session.execute(&s).await?;
    }
    let mut printers = JoinSet::new();
    let script = match (&args.file, &args.command) {
        (Some(_), Some(_)) => bail!("give either -f FILE or -c SQL, not both"),
        (Some(f), None) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("cannot read script {f}"))?)
        }
        (None, Some(c)) => Some(c.clone()),
        (None, None) => None,
    };
    if args.no_ui && args.ui.is_some() {
        bail!("give either --ui ADDR or --no-ui, not both");
    }
    // The web UI, for the REPL and scripts (not -c, which exits when it is done); a
    // script's once its statements ran, so a script with an error prints only that.
    let serve_ui = !args.no_ui && args.command.is_none();
    let Some(script) = script else {
        let _ui = if serve_ui {
            start_ui(args.ui.as_deref(), &session).await?
        } else {
            None
        };
        return repl::run(&mut session, options).await;
    };
    let outcome = run_script(
        &mut session,
        &script,
        options,
        &mut printers,
        args.command.is_some(),
    )
    .await;
    if let Err(e) = outcome {
        session.stop_all().await.ok();
        return Err(e);
    }
    let _ui = if serve_ui {
        match start_ui(args.ui.as_deref(), &session).await {
            Ok(ui) => ui,
            Err(e) => {
                session.stop_all().await.ok();
                return Err(e);
            }
        }
    } else {
        None
    };
    if session.active_queries() == 0 {
        return Ok(());
    }
    // Until a signal (or, under available-now, until every query is drained); a
    // query that fails ends the run with exit code 2, unless --keep-going.
    let mut failed: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        let done = async {
            if available_now {
                let _ = session.await_all().await;
            } else {
                wait_for_shutdown_signal().await;
                eprintln!("stopping: the batch in flight finishes and commits");
            }
        };
        tokio::select! {
            (id, target, error) = next_failure(&session, &seen) => {
                let line = format!("query {id} ({target}) failed: {error}");
                seen.insert(id);
                if args.keep_going {
                    eprintln!("error: {line}; the other queries go on (--keep-going)");
                    failed.push(line);
                    continue;
                }
                failed.push(line);
                eprintln!("stopping the other queries: the batch in flight finishes and commits");
            }
            () = done => {}
        }
        break;
    }
    session.stop_all().await?;
    drain(printers).await;
    // Failures while stopping or draining count too.
    for q in session.queries() {
        if let Some(e) = q.ctx.failure()
            && !seen.contains(&q.id)
        {
            failed.push(format!("query {} ({}) failed: {e}", q.id, q.target));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(QueriesFailed(failed.join("; ")).into())
    }
}

/// Serves the web UI on `addr`, or on the default address (the next free port when
/// another process holds it; a warning, not an error, when none is free).
async fn start_ui(
    addr: Option<&str>,
    session: &FlumenSession,
) -> Result<Option<flumen_sql::ui::UiServer>> {
    let server = match addr {
        Some(a) => {
            let parsed: std::net::SocketAddr = a
                .parse()
                .map_err(|e| anyhow!("--ui '{a}': not an address like 127.0.0.1:4040 ({e})"))?;
            let server = flumen_sql::ui::serve(parsed, session.view())
                .await
                .map_err(|e| anyhow!("--ui {a}: cannot listen there: {e}"))?;
            if !parsed.ip().is_loopback() {
                eprintln!(
                    "warning: the web UI on {a} can be reached from other machines; it has no authentication"
                );
            }
            server
        }
        None => match flumen_sql::ui::serve_default(session.view()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "warning: no web UI: cannot listen on {} or the 15 ports after it ({e}); use --ui ADDR",
                    flumen_sql::ui::DEFAULT_ADDR
                );
                return Ok(None);
            }
        },
    };
    eprintln!("Web UI: http://{}/", server.addr());
    Ok(Some(server))
}

async fn drain(mut printers: JoinSet<()>) {
    while printers.join_next().await.is_some() {}
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
