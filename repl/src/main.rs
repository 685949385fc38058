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
use clap::error::ErrorKind;
use clap::{Parser, Subcommand, ValueEnum};
use flumen_engine::{SystemClock, Trigger};
use flumen_sql::{ConsoleFormat, FlumenSession, Setting};
use tokio::task::JoinSet;

use crate::exec::{PrintOptions, run_script};
use crate::print::Format;

/// What follows the options in `flumen --help`.
const AFTER_HELP: &str = "\
A script's queries run until SIGINT or SIGTERM, which stops them gracefully (the batch
in flight finishes); with --trigger available-now, until their sources are drained.

Exit codes: 0 when every query ended well (stopped by a signal, or drained); 1 for a
statement that fails (`error: line N: ...` on stderr) or a bad option; 2 when a query
fails while it runs (`error: query N (sink) failed: ...`): the other queries are
stopped gracefully and flumen exits at once, unless --keep-going.";

/// flumen — a SQL-first micro-batch stream processing engine.
///
/// Without -f, -c or a subcommand: the interactive SQL REPL.
#[derive(Debug, Parser)]
#[command(name = "flumen", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// SQL script to run, then keep its queries running (repeatable: the scripts run
    /// in order in one session)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Vec<String>,
    /// Statements to run (continuous queries print until Ctrl-C/SIGTERM, as with -f)
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    sql: Option<String>,
    /// When a query fails, keep the others running (the exit code is still 2 at the end)
    #[arg(long)]
    keep_going: bool,
    /// available-now: process what the sources hold, then exit; processing-time
    /// (default): run until Ctrl-C/SIGTERM
    #[arg(long, value_enum, value_name = "MODE")]
    trigger: Option<TriggerArg>,
    /// Batch interval, e.g. '1 second' (default), '500 ms'
    #[arg(long, value_name = "D", value_parser = parse_interval)]
    batch_interval: Option<std::time::Duration>,
    /// Checkpoint location (SET checkpoint_location): each query resumes where it stopped
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<String>,
    /// Snapshot state every N batches (default 1; SET checkpoint_interval)
    #[arg(long, value_name = "N")]
    checkpoint_interval: Option<u64>,
    /// Append each batch's progress (JSON lines, as Spark's StreamingQueryProgress) to
    /// FILE (SET progress_log)
    #[arg(long, value_name = "FILE")]
    progress_log: Option<String>,
    /// Serve the web UI and /metrics on ADDR (default 127.0.0.1:4040, or the next free
    /// port after it)
    #[arg(long, value_name = "ADDR")]
    ui: Option<String>,
    /// No web UI
    #[arg(long)]
    no_ui: bool,
    /// print (default: Spark's layout for continuous queries, tables otherwise),
    /// table, csv or json
    #[arg(long, value_name = "F")]
    format: Option<Format>,
    /// Run the queries' batches on the Ballista cluster whose scheduler is at URL,
    /// e.g. df://127.0.0.1:50050 (SET cluster)
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A self-contained streaming demo (no server needed)
    Demo {
        /// How long it runs, in seconds
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// A cluster's scheduler (Apache Ballista's, with Flumen's plan nodes and functions)
    Scheduler {
        /// The address it listens on
        #[arg(long, default_value = "127.0.0.1:50050", value_name = "ADDR")]
        bind: String,
    },
    /// A cluster's executor: registers with the scheduler and runs its tasks
    Executor {
        /// The scheduler, host:port (or df://host:port)
        #[arg(long, default_value = "127.0.0.1:50050", value_name = "ADDR")]
        scheduler: String,
        /// The address it listens on: PORT for task results (Arrow Flight), PORT + 1
        /// for the tasks the scheduler sends
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
        bind: String,
        /// Tasks it runs at once (default: the machine's cores)
        #[arg(long, value_name = "N")]
        slots: Option<usize>,
        /// Where its tasks' shuffle files go (default: a folder of the system's
        /// temporary folder named after the port)
        #[arg(long, value_name = "DIR")]
        work_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TriggerArg {
    AvailableNow,
    ProcessingTime,
}

fn parse_interval(s: &str) -> std::result::Result<std::time::Duration, String> {
    flumen_sql::duration::parse_duration(s).map_err(|e| e.to_string())
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
    // Output (or errors) piped into a reader that stopped (`flumen -c ... | head`) is
    // not a bug: Rust's printing panics on the broken pipe, where a Unix tool would
    // die of SIGPIPE; exit quietly with the shell's code for that (128 + 13).
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr(),
            format_args!("error: internal error (a bug in Flumen, please report it): {info}\n"),
        );
    }));
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` print and succeed; a bad option is exit code 1
            // (2 is a query failing while it runs).
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            };
        }
    };
    let result = match cli.command {
        Some(Command::Demo { seconds }) => demo::run(seconds).await,
        Some(Command::Scheduler { bind }) => scheduler(&bind).await,
        Some(Command::Executor {
            scheduler,
            bind,
            slots,
            work_dir,
        }) => executor(&scheduler, &bind, slots, work_dir).await,
        None => run(cli).await,
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

/// `flumen scheduler`: serves until the process is stopped.
async fn scheduler(bind: &str) -> Result<()> {
    flumen_connectors::register_cluster_scans();
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("scheduler: cannot listen on {bind}"))?;
    eprintln!(
        "flumen scheduler listening on {} (SET cluster = 'df://{}')",
        listener.local_addr()?,
        listener.local_addr()?
    );
    tokio::select! {
        served = flumen_engine::cluster::node::serve_scheduler(listener, flumen_sql::functions::udfs()) => {
            Ok(served?)
        }
        _ = shutdown_signal() => Ok(()),
    }
}

/// `flumen executor`: runs tasks until the process is stopped.
async fn executor(
    scheduler: &str,
    bind: &str,
    slots: Option<usize>,
    work_dir: Option<std::path::PathBuf>,
) -> Result<()> {
    use flumen_engine::cluster::ClusterUrl;
    flumen_connectors::register_cluster_scans();
    let url = if scheduler.starts_with("df://") {
        scheduler.to_string()
    } else {
        format!("df://{scheduler}")
    };
    let scheduler = ClusterUrl::parse(&url).map_err(|e| anyhow!("--scheduler: {e}"))?;
    let (host, port) = bind
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .filter(|(h, p)| !h.is_empty() && *p > 0 && *p < u16::MAX)
        .ok_or_else(|| anyhow!("--bind '{bind}': give host:port, e.g. 127.0.0.1:50051"))?;
    let slots = slots.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if slots == 0 {
        bail!("--slots: give at least 1");
    }
    eprintln!(
        "flumen executor on {host}:{port} (tasks on port {}), {slots} slots, scheduler {scheduler}",
        port + 1
    );
    let options = flumen_engine::cluster::node::ExecutorOptions {
        scheduler,
        host,
        port,
        grpc_port: port + 1,
        slots,
        work_dir,
    };
    flumen_engine::cluster::node::run_executor(options, flumen_sql::functions::udfs()).await?;
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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

async fn run(args: Cli) -> Result<()> {
    let mut session = FlumenSession::new(flumen_connectors::registry(), Arc::new(SystemClock));
    let options = PrintOptions {
        format: args.format.unwrap_or(Format::Print),
        timing: false,
    };
    let available_now = matches!(args.trigger, Some(TriggerArg::AvailableNow));
    let mut settings = Vec::new();
    if available_now {
        settings.push(Setting::Trigger(Trigger::AvailableNow));
    }
    // Data only on stdout with --format csv|json: console sinks print rows alone.
    match args.format {
        Some(Format::Csv) => settings.push(Setting::ConsoleFormat(ConsoleFormat::Csv)),
        Some(Format::Json) => settings.push(Setting::ConsoleFormat(ConsoleFormat::Json)),
        _ => {}
    }
    if let Some(d) = args.batch_interval {
        settings.push(Setting::BatchInterval(d));
    }
    if let Some(c) = &args.checkpoint {
        settings.push(Setting::CheckpointLocation(c.clone()));
    }
    if let Some(n) = args.checkpoint_interval {
        settings.push(Setting::CheckpointInterval(n));
    }
    if let Some(f) = &args.progress_log {
        settings.push(Setting::ProgressLog(f.clone()));
    }
    if let Some(url) = &args.cluster {
        match Setting::parse("cluster", url)? {
            Some(s) => settings.push(s),
            None => bail!("--cluster: not a setting"),
        }
    }
    for s in settings {
        session.set(s)?;
    }
    let mut printers = JoinSet::new();
    // The scripts, each with the name its errors give (when there are several).
    let scripts: Vec<(Option<&str>, String)> = match (args.file.as_slice(), &args.sql) {
        ([_, ..], Some(_)) => bail!("give either -f FILE or -c SQL, not both"),
        ([], Some(c)) => vec![(None, c.clone())],
        ([], None) => Vec::new(),
        (files, None) => files
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read script {f}"))?;
                Ok(((files.len() > 1).then_some(f.as_str()), text))
            })
            .collect::<Result<_>>()?,
    };
    if args.no_ui && args.ui.is_some() {
        bail!("give either --ui ADDR or --no-ui, not both");
    }
    // The web UI, for the REPL and scripts (not -c, which exits when it is done); a
    // script's once its statements ran, so a script with an error prints only that.
    let serve_ui = !args.no_ui && args.sql.is_none();
    if scripts.is_empty() {
        let _ui = if serve_ui {
            start_ui(args.ui.as_deref(), &session).await?
        } else {
            None
        };
        return repl::run(&mut session, options).await;
    }
    let mut outcome = Ok(());
    for (name, script) in &scripts {
        outcome = run_script(
            &mut session,
            script,
            options,
            &mut printers,
            args.sql.is_some(),
        )
        .await
        .map_err(|e| match name {
            Some(f) => anyhow!("{f}: {e}"),
            None => e,
        });
        if outcome.is_err() {
            break;
        }
    }
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
