//! The side-by-side comparison (`benchmarks/compare/run.sh`): the shared input files
//! every system reads, and Flumen's and DataFusion's runs over them.
//!
//! ```text
//!  export --dir D     D/wordcount/part-<i>.txt         lines of words
//!                     D/nexmark/{bid,person,auction}/part-<i>.csv   no header,
//!                                                       date_time as epoch ms
//!  files --dir D --workload W
//!     Flumen:     the `files` source, one file per micro-batch, `available_now`,
//!                 the query planned once, into a blackhole sink
//!     DataFusion: one batch query over all the files (the ceiling)
//!                 → one JSON line per system
//! ```
//!
//! Spark Structured Streaming and Flink SQL read the same files with the same
//! micro-batching (one file per trigger for Spark; Flink reads them as one bounded
//! stream), from `benchmarks/compare/{spark,flink}_bench.py`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{CsvReadOptions, SessionContext};
use flumen_connectors::nexmark::Table;
use flumen_engine::SystemClock;
use flumen_sql::FlumenSession;

use crate::flag;

/// A workload: its input, the streaming query (Flumen's dialect) and the batch query
/// that computes the same over all input (DataFusion).
struct Workload {
    name: &'static str,
    /// What one unit of throughput counts: `lines` or `events`.
    unit: &'static str,
    /// The input folders read (under `wordcount/` or `nexmark/`); their lines are the units.
    inputs: &'static [&'static str],
    output_mode: &'static str,
    streaming: &'static str,
    batch: &'static str,
}

const HOP: &str = "INTERVAL '10' SECOND, INTERVAL '2' SECOND";

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "wordcount",
            unit: "lines",
            inputs: &["wordcount"],
            output_mode: "update",
            streaming: "SELECT word, count(*) AS n FROM \
                        (SELECT unnest(string_to_array(line, ' ')) AS word FROM lines) GROUP BY word",
            batch: "SELECT word, count(*) AS n FROM \
                    (SELECT unnest(string_to_array(line, ' ')) AS word FROM lines) GROUP BY word",
        },
        Workload {
            name: "q0",
            unit: "events",
            inputs: &["bid"],
            output_mode: "append",
            streaming: "SELECT auction, bidder, price, date_time, extra FROM bid",
            batch: "SELECT auction, bidder, price, date_time, extra FROM bid",
        },
        Workload {
            name: "q1",
            unit: "events",
            inputs: &["bid"],
            output_mode: "append",
            streaming: "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
            batch: "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
        },
        Workload {
            name: "q2",
            unit: "events",
            inputs: &["bid"],
            output_mode: "append",
            streaming: "SELECT auction, price FROM bid WHERE auction % 123 = 0",
            batch: "SELECT auction, price FROM bid WHERE auction % 123 = 0",
        },
        Workload {
            name: "q5",
            unit: "events",
            inputs: &["bid"],
            output_mode: "append",
            streaming: "SELECT auction, window(ts, INTERVAL '10' SECOND, INTERVAL '2' SECOND)['start'] AS ws, \
                        count(*) AS num FROM bidt \
                        GROUP BY auction, window(ts, INTERVAL '10' SECOND, INTERVAL '2' SECOND)",
            batch: "SELECT auction, w['start'] AS ws, count(*) AS num FROM \
                    (SELECT auction, unnest(flumen_hop_windows(to_timestamp_millis(date_time), HOPARGS)) AS w FROM bid) \
                    GROUP BY auction, w['start']",
        },
        Workload {
            name: "q7",
            unit: "events",
            inputs: &["bid"],
            output_mode: "append",
            streaming: "SELECT b.auction, b.price, b.bidder, b.ts FROM bidt b \
                        JOIN (SELECT max(price) AS maxprice, window(ts, INTERVAL '10' SECOND)['end'] AS window_end \
                              FROM bidt GROUP BY window(ts, INTERVAL '10' SECOND)) m \
                        ON b.price = m.maxprice AND b.ts >= m.window_end - INTERVAL '10' SECOND \
                           AND b.ts < m.window_end",
            batch: "SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b \
                    JOIN (SELECT max(price) AS maxprice, date_time / 10000 AS w FROM bid GROUP BY date_time / 10000) m \
                    ON b.price = m.maxprice AND b.date_time / 10000 = m.w",
        },
        // q8: people who opened an auction in the 10 s window they registered in; the
        // units are the person and auction rows read.
        Workload {
            name: "q8",
            unit: "events",
            inputs: &["person", "auction"],
            output_mode: "append",
            streaming: "SELECT p.id, p.name, p.starttime FROM \
                        (SELECT id, name, window(ts, INTERVAL '10' SECOND)['start'] AS starttime \
                           FROM persont GROUP BY id, name, window(ts, INTERVAL '10' SECOND)) p \
                        JOIN (SELECT seller, window(ts, INTERVAL '10' SECOND)['start'] AS starttime \
                           FROM auctiont GROUP BY seller, window(ts, INTERVAL '10' SECOND)) a \
                        ON p.id = a.seller AND p.starttime = a.starttime",
            batch: "SELECT p.id, p.name, p.w FROM \
                    (SELECT id, name, date_time / 10000 AS w FROM person GROUP BY id, name, date_time / 10000) p \
                    JOIN (SELECT seller, date_time / 10000 AS w FROM auction GROUP BY seller, date_time / 10000) a \
                    ON p.id = a.seller AND p.w = a.w",
        },
    ]
}

/// Writes the shared input files.
pub async fn export(args: &[String]) -> Result<()> {
    let dir = dir_arg(args)?;
    let lines = flag(args, "--lines", 1_000_000)?;
    let events = flag(args, "--events", 2_000_000)?;
    let files = flag(args, "--files", 10)?;
    let words = std::path::PathBuf::from(&dir).join("wordcount");
    std::fs::create_dir_all(&words)?;
    let (_, batches) = crate::generate(lines, 10, 10_000, files);
    for (i, b) in batches.iter().enumerate() {
        let text = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .context("lines are text")?;
        let mut out = String::with_capacity(text.value_data().len() + text.len());
        for l in text.iter().flatten() {
            out.push_str(l);
            out.push('\n');
        }
        std::fs::write(words.join(format!("part-{i:05}.txt")), out)?;
    }
    for (table, name) in [
        (Table::Bid, "bid"),
        (Table::Person, "person"),
        (Table::Auction, "auction"),
    ] {
        let folder = std::path::PathBuf::from(&dir).join("nexmark").join(name);
        std::fs::create_dir_all(&folder)?;
        let all = crate::nexmark::generate(table, events, 8192);
        let per_file = all.len().div_ceil(files).max(1);
        for (i, chunk) in all.chunks(per_file).enumerate() {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(false)
                .build(std::fs::File::create(
                    folder.join(format!("part-{i:05}.csv")),
                )?);
            for b in chunk {
                w.write(&millis_as_int(b)?)?;
            }
        }
    }
    std::fs::write(
        Path::new(&dir).join("nexmark").join("ddl.sql"),
        files_ddl(&dir),
    )?;
    println!("exported {lines} lines and {events} Nexmark events to {dir} in {files} files each");
    Ok(())
}

/// The Nexmark streams of `benchmarks/nexmark/ddl.sql` over the exported files, for the
/// query files (`benchmarks/compare/nexmark_suite.sh`): each table's files as
/// `<table>_csv` (one file a batch), and `<table>` with its times as timestamps and
/// the watermark 4 s behind, as `ddl.sql` declares it.
fn files_ddl(dir: &str) -> String {
    let mut out = String::from(
        "-- Written by `flumen-benchmarks export`: the Nexmark streams over the exported files.\n",
    );
    for (table, name) in [
        (Table::Person, "person"),
        (Table::Auction, "auction"),
        (Table::Bid, "bid"),
    ] {
        let columns: Vec<String> = table
            .schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(..) => format!("to_timestamp_millis({0}) AS {0}", f.name()),
                _ => f.name().to_string(),
            })
            .collect();
        out.push_str(&format!(
            "CREATE STREAM {name}_csv ({}) WITH (connector = 'files', \
             path = '{dir}/nexmark/{name}', format = 'csv', include_existing = 'true', \
             max_files_per_batch = '1');\n\
             CREATE STREAM {name} WITH (timestamp = 'date_time', watermark_delay = '4 seconds') \
             AS SELECT {} FROM {name}_csv;\n",
            csv_columns(name),
            columns.join(", ")
        ));
    }
    out
}

/// `b` with its timestamp columns as Int64 epoch ms (every peer parses those alike).
fn millis_as_int(b: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if matches!(f.data_type(), DataType::Timestamp(_, _)) {
            fields.push(Field::new(f.name(), DataType::Int64, false));
            cols.push(cast(c, &DataType::Int64)?);
        } else {
            fields.push(f.as_ref().clone());
            cols.push(Arc::clone(c));
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

fn dir_arg(args: &[String]) -> Result<String> {
    crate::text_flag(args, "--dir")
        .map(str::to_string)
        .context("--dir DIR is required")
}

/// The folder of input `name` (`wordcount`, or a Nexmark table).
fn input_dir(dir: &str, name: &str) -> std::path::PathBuf {
    if name == "wordcount" {
        Path::new(dir).join(name)
    } else {
        Path::new(dir).join("nexmark").join(name)
    }
}

/// Lines or events in the input of `w`.
fn units(dir: &str, w: &Workload) -> Result<usize> {
    let mut n = 0;
    for input in w.inputs {
        for e in std::fs::read_dir(input_dir(dir, input))? {
            let bytes = std::fs::read(e?.path())?;
            n += bytes.iter().filter(|b| **b == b'\n').count();
        }
    }
    Ok(n)
}

/// The fields of Nexmark table `name` as the exported CSV files hold them: the
/// generator's columns, times as epoch milliseconds, texts nullable (an empty CSV field
/// reads as null).
fn csv_fields(name: &str) -> Vec<Field> {
    let table = match name {
        "bid" => Table::Bid,
        "person" => Table::Person,
        _ => Table::Auction,
    };
    table
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(..) => Field::new(f.name(), DataType::Int64, false),
            DataType::Utf8 => Field::new(f.name(), DataType::Utf8, true),
            t => Field::new(f.name(), t.clone(), false),
        })
        .collect()
}

/// `csv_fields(name)` as the column list of a `CREATE STREAM`.
fn csv_columns(name: &str) -> String {
    csv_fields(name)
        .iter()
        .map(|f| {
            let ty = if *f.data_type() == DataType::Int64 {
                "BIGINT"
            } else {
                "TEXT"
            };
            let null = if f.is_nullable() { "" } else { " NOT NULL" };
            format!("{} {ty}{null}", f.name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs one workload on Flumen and on DataFusion over the files in `--dir`.
pub async fn files(args: &[String]) -> Result<()> {
    let dir = dir_arg(args)?;
    let only = crate::text_flag(args, "--workload");
    let system = crate::text_flag(args, "--system");
    for w in workloads() {
        if only.is_some_and(|o| o != w.name) {
            continue;
        }
        let n = units(&dir, &w)?;
        let mut results = Vec::new();
        // Each system in its own process when asked (`--system`), so neither runs on
        // memory the other's run already faulted in.
        if system != Some("datafusion") {
            let (secs, out_rows) = flumen_run(&dir, &w).await?;
            results.push(("flumen", secs, out_rows));
        }
        if system != Some("flumen") {
            results.push(("datafusion", datafusion_run(&dir, &w).await?, 0));
        }
        for (system, secs, out_rows) in results {
            println!(
                "{{\"system\":\"{system}\",\"workload\":\"{}\",\"unit\":\"{}\",\"units\":{n},\"seconds\":{secs:.4},\"per_s\":{:.0}{}}}",
                w.name,
                w.unit,
                n as f64 / secs,
                if system == "flumen" {
                    format!(",\"rows_out\":{out_rows}")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(())
}

async fn flumen_run(dir: &str, w: &Workload) -> Result<(f64, u64)> {
    let (registry, rows) = crate::nexmark::blackhole_registry();
    let mut session = FlumenSession::new(registry, Arc::new(SystemClock));
    let csv = |name: &str, keep: &str| {
        let columns = csv_columns(name);
        format!(
            "CREATE STREAM {name} ({columns}) WITH (connector = 'files', path = '{dir}/nexmark/{name}',
               format = 'csv', include_existing = 'true', max_files_per_batch = '1');
             CREATE STREAM {name}t WITH (timestamp = 'ts', watermark_delay = '4 seconds') AS
               SELECT {keep}, to_timestamp_millis(date_time) AS ts FROM {name};"
        )
    };
    let streams = match w.inputs {
        ["wordcount"] => format!(
            "CREATE STREAM lines (line TEXT) WITH (connector = 'files', path = '{dir}/wordcount',
               format = 'text', include_existing = 'true', max_files_per_batch = '1');"
        ),
        ["bid"] => csv("bid", "auction, bidder, price"),
        _ => csv("person", "id, name") + &csv("auction", "seller"),
    };
    session
        .execute_script(&format!(
            "SET trigger = 'available_now'; SET batch_interval = '100 ms';
             SET output_mode = '{}';
             {streams}
             CREATE SINK out WITH (connector = 'blackhole');",
            w.output_mode
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    session
        .execute(&format!("INSERT INTO out {}", w.streaming))
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", w.name))?;
    session
        .await_all()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", w.name))?;
    let secs = started.elapsed().as_secs_f64();
    if std::env::var_os("FLUMEN_BENCH_BATCHES").is_some()
        && let Some(q) = session.queries().next()
    {
        for b in q.ctx.recent_batches() {
            eprintln!(
                "  batch {}: {} rows in, processing {:?}, scheduling delay {:?}",
                b.batch_id,
                b.num_input_rows(),
                b.processing_time,
                b.scheduling_delay
            );
        }
    }
    Ok((secs, rows.load(Ordering::Relaxed)))
}

async fn datafusion_run(dir: &str, w: &Workload) -> Result<f64> {
    let ctx = SessionContext::new();
    ctx.register_udf(flumen_sql::window::hop_windows_udf());
    if w.unit == "lines" {
        let schema = Schema::new(vec![Field::new("line", DataType::Utf8, true)]);
        ctx.register_csv(
            "lines",
            &format!("{dir}/wordcount/"),
            CsvReadOptions::new()
                .has_header(false)
                .delimiter(b'\t')
                .file_extension(".txt")
                .schema(&schema),
        )
        .await?;
    } else {
        for table in w.inputs {
            let fields = csv_fields(table);
            ctx.register_csv(
                *table,
                &format!("{}/", input_dir(dir, table).display()),
                CsvReadOptions::new()
                    .has_header(false)
                    .schema(&Schema::new(fields)),
            )
            .await?;
        }
    }
    let sql = w.batch.replace("HOPARGS", HOP);
    let started = Instant::now();
    let out = ctx.sql(&sql).await?.collect().await?;
    let secs = started.elapsed().as_secs_f64();
    if out.iter().map(|b| b.num_rows()).sum::<usize>() == 0 {
        bail!("{}: the batch query returned nothing", w.name);
    }
    Ok(secs)
}
