//! Runs the SQL logic files under `tests/sql/` against a `FlumenSession` on a manual
//! clock. `INSERT INTO <memory stream> VALUES ...` queues rows for the next batch and
//! `ADVANCE n BATCHES` runs batches, so streaming semantics are testable as SQL.
//!
//! Each file is its own test (`cargo test --test main sql_logic::windows` runs `windows.slt`).
//! Regenerate expected output with `FLUMEN_SLT_COMPLETE=1 cargo test --test main sql_logic`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use flumen::datafusion::arrow::datatypes::DataType;
use flumen::datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use flumen::engine::{Error, ManualClock};
use flumen::sql::{FlumenSession, StatementResult};
use sqllogictest::{DBOutput, DefaultColumnType};

struct FlumenDb {
    session: FlumenSession,
    /// Its queries run on a cluster: EXPLAIN's line naming it (which a local run,
    /// whose output the files hold, does not print) is left out.
    on_cluster: bool,
}

#[async_trait]
impl sqllogictest::AsyncDB for FlumenDb {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        match self.session.execute(sql).await? {
            StatementResult::Done(_) | StatementResult::Continuous { .. } => {
                Ok(DBOutput::StatementComplete(0))
            }
            StatementResult::Rows { schema, batches } => {
                let types = schema
                    .fields()
                    .iter()
                    .map(|f| match f.data_type() {
                        t if t.is_integer() => DefaultColumnType::Integer,
                        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                            DefaultColumnType::FloatingPoint
                        }
                        _ => DefaultColumnType::Text,
                    })
                    .collect();
                let options = FormatOptions::default().with_null("NULL");
                let mut rows = Vec::new();
                let cluster_line = |row: &Vec<String>| {
                    self.on_cluster && row.first().is_some_and(|c| c.starts_with("Cluster df://"))
                };
                for b in &batches {
                    let fmts = b
                        .columns()
                        .iter()
                        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                        .collect::<Result<Vec<_>, _>>()?;
                    for r in 0..b.num_rows() {
                        rows.push(
                            fmts.iter()
                                .map(|f| {
                                    let s = f.value(r).to_string();
                                    if s.is_empty() { "(empty)".into() } else { s }
                                })
                                .collect(),
                        );
                    }
                }
                rows.retain(|r| !cluster_line(r));
                Ok(DBOutput::Rows { types, rows })
            }
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "flumen"
    }
}

fn new_db() -> FlumenDb {
    FlumenDb {
        session: FlumenSession::new(
            flumen::connectors::registry(),
            Arc::new(ManualClock::default()),
        ),
        on_cluster: false,
    }
}

/// Runs `tests/sql/<name>.slt`, or rewrites its expected output under
/// `FLUMEN_SLT_COMPLETE`.
async fn run_slt(name: &str) {
    run_slt_on(name, None).await
}

/// Runs `tests/sql/<name>.slt` with its queries' batches on the cluster whose
/// scheduler is at `cluster` (`SET cluster` before the file), or in this process.
pub(crate) async fn run_slt_on(name: &str, cluster: Option<String>) {
    let file = slt_dir().join(format!("{name}.slt"));
    // Expected output is written by local runs only: a cluster's must equal it.
    let local = cluster.is_none();
    let mut runner = sqllogictest::Runner::new(move || {
        let cluster = cluster.clone();
        async move {
            let mut db = new_db();
            db.on_cluster = cluster.is_some();
            if let Some(url) = cluster {
                db.session
                    .execute(&format!("SET cluster = '{url}'"))
                    .await?;
            }
            Ok(db)
        }
    });
    if std::env::var_os("FLUMEN_SLT_COMPLETE").is_some() && local {
        runner
            .update_test_file(
                &file,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            )
            .await
            .unwrap();
    } else if let Err(e) = runner.run_file_async(&file).await {
        panic!("{}:\n{e}", file.display());
    }
}

fn slt_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sql")
}

/// One test per file, named after it: `cargo test windows` runs `windows.slt`.
macro_rules! slt_files {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                run_slt(stringify!($name)).await;
            }
        )*

        /// Every `.slt` file has its test above (a new file cannot be skipped).
        #[test]
        fn every_slt_file_has_a_test() {
            let listed = [$(stringify!($name)),*];
            let mut on_disk: Vec<String> = std::fs::read_dir(slt_dir())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "slt"))
                .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
                .collect();
            on_disk.sort();
            assert_eq!(on_disk, listed, "tests/sql/*.slt and the slt_files! list differ");
        }
    };
}

slt_files!(
    aggregates_over_aggregates,
    batch_time,
    ddl,
    decisions,
    dedup,
    errors,
    functions,
    generators,
    joins,
    ksql,
    nexmark,
    nexmark_standard,
    outer_joins,
    regular_outer_joins,
    silence,
    sql_functions,
    tvf,
    window_top_n,
    windows,
    wordcount,
);

/// `nexmark_standard.slt` is written from `benchmarks/nexmark/qN.sql` by
/// `scripts/nexmark_slt.py`: it must hold each file's query as the file has it now.
#[test]
fn nexmark_standard_slt_holds_the_query_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let slt = std::fs::read_to_string(slt_dir().join("nexmark_standard.slt")).unwrap();
    for n in (0..=22).filter(|n| *n != 12) {
        let file =
            std::fs::read_to_string(root.join(format!("benchmarks/nexmark/q{n}.sql"))).unwrap();
        let insert = format!("INSERT INTO nexmark_q{n}\n");
        let at = file.find(&insert).expect("the file inserts into its sink") + insert.len();
        let query = file[at..].trim().trim_end_matches(';');
        assert!(
            slt.contains(query),
            "nexmark_standard.slt lacks q{n}.sql's query: run scripts/nexmark_slt.py"
        );
    }
}
