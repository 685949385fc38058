//! The `flumen` command. Today: `flumen demo`, a self-contained streaming demo. The
//! SQL REPL and scripts come with the SQL layer.

mod demo;

use std::process::ExitCode;

const HELP: &str = "\
flumen — a SQL-first micro-batch stream processing engine

USAGE:
    flumen demo [--seconds N]    run a self-contained streaming demo (no server needed)
    flumen --help                print this help
    flumen --version             print the version

The demo generates lines of words, counts words per batch and over a sliding window
of 3 batches, prints every batch as it arrives, and stops by itself.
";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]).await,
        Some("--version" | "-V") => {
            println!("flumen {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("--help" | "-h") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!(
            "unknown command '{other}'; run `flumen --help` for the commands"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
