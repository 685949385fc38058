//! The `mysql` sink (MySQL and MariaDB): as the `postgres` sink, each partition of a
//! batch is one transaction holding its rows and its commit record
//! `flumen_commits(query, batch_time, partition)`; a replayed batch finds its record
//! and writes nothing. Values are bound parameters (`?`), identifiers quoted with
//! backticks; tables are created when missing (upsert: primary key `key`, text keys as
//! `VARCHAR(255)`).

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::{Result, WriteKey};
use mysql_async::Value;
use mysql_async::prelude::Queryable;

use crate::db_sink::{DbSink, DbSinkFactory, Dialect, Mode, primary_key_clause, statement_ranges};

/// Placeholders per statement stay under MySQL's 65,535.
const MAX_PARAMS: usize = 30_000;

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn sql_type(dt: &DataType, key: bool) -> &'static str {
    match dt {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => "BIGINT",
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            "DOUBLE"
        }
        DataType::Boolean => "BOOLEAN",
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => "DATETIME(6)",
        _ if key => "VARCHAR(255)",
        _ => "TEXT",
    }
}

/// A column's values as MySQL parameters.
fn values(a: &dyn Array) -> Result<Vec<Value>> {
    let a = datafusion::arrow::array::make_array(a.to_data());
    let n = a.len();
    Ok(match sql_type(a.data_type(), false) {
        "BIGINT" => {
            let c = cast(&a, &DataType::Int64)?;
            let c = c.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| {
                    if c.is_valid(i) {
                        Value::Int(c.value(i))
                    } else {
                        Value::NULL
                    }
                })
                .collect()
        }
        "DOUBLE" => {
            let c = cast(&a, &DataType::Float64)?;
            let c = c.as_primitive::<Float64Type>();
            (0..n)
                .map(|i| {
                    if c.is_valid(i) {
                        Value::Double(c.value(i))
                    } else {
                        Value::NULL
                    }
                })
                .collect()
        }
        "BOOLEAN" => {
            let c = a.as_boolean();
            (0..n)
                .map(|i| {
                    if c.is_valid(i) {
                        Value::Int(c.value(i) as i64)
                    } else {
                        Value::NULL
                    }
                })
                .collect()
        }
        _ => {
            // Text, and timestamps as ISO text (MySQL reads `2024-01-02T03:04:05.123`).
            let c = cast(&a, &DataType::Utf8)?;
            let c = c.as_string::<i32>();
            (0..n)
                .map(|i| {
                    if c.is_valid(i) {
                        Value::Bytes(c.value(i).as_bytes().to_vec())
                    } else {
                        Value::NULL
                    }
                })
                .collect()
        }
    })
}

/// MySQL and MariaDB, through pooled `mysql_async` connections.
#[derive(Debug)]
pub struct MySql;

/// The `mysql` sink.
pub type MySqlSink = DbSink<MySql>;

impl MySql {
    fn insert_sql(sink: &MySqlSink, schema: &SchemaRef, rows: usize) -> String {
        let cols: Vec<String> = schema.fields().iter().map(|f| ident(f.name())).collect();
        let one = format!("({})", vec!["?"; cols.len()].join(", "));
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            ident(&sink.table),
            cols.join(", "),
            vec![one.as_str(); rows].join(", ")
        );
        if sink.mode == Mode::Upsert {
            let keys: Vec<String> = sink.key.iter().map(|k| ident(k)).collect();
            let updates: Vec<String> = cols
                .iter()
                .filter(|c| !keys.contains(c))
                .map(|c| format!("{c} = VALUES({c})"))
                .collect();
            if updates.is_empty() {
                sql = sql.replacen("INSERT INTO", "INSERT IGNORE INTO", 1);
            } else {
                sql.push_str(&format!(" ON DUPLICATE KEY UPDATE {}", updates.join(", ")));
            }
        }
        sql
    }
}

impl MySql {
    /// Deletes one row equal to the bound values in every column (nulls equal).
    fn delete_sql(sink: &MySqlSink, schema: &SchemaRef) -> String {
        let equal: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} <=> ?", ident(f.name())))
            .collect();
        format!(
            "DELETE FROM {} WHERE {} LIMIT 1",
            ident(&sink.table),
            equal.join(" AND ")
        )
    }
}

#[async_trait]
impl Dialect for MySql {
    const CONNECTOR: &'static str = "mysql";
    const SCHEMES: &'static [&'static str] = &["mysql", "mariadb"];
    const EXAMPLE_URL: &'static str = "mysql://user:password@host:port/db";
    type Conn = mysql_async::Conn;

    async fn connect(sink: &MySqlSink) -> Result<mysql_async::Conn> {
        let opts =
            crate::tls::mysql_opts(&sink.url).map_err(|e| sink.error("cannot connect", e))?;
        mysql_async::Conn::new(opts)
            .await
            .map_err(|e| sink.error("cannot connect", e))
    }

    async fn create_tables(
        sink: &MySqlSink,
        conn: &mut mysql_async::Conn,
        schema: &SchemaRef,
    ) -> Result<()> {
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    ident(f.name()),
                    sql_type(f.data_type(), sink.key.contains(f.name()))
                )
            })
            .collect();
        let pk = primary_key_clause(sink.mode, &sink.key, ident);
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} ({}{pk})",
            ident(&sink.table),
            cols.join(", ")
        ))
        .await
        .map_err(|e| sink.error("creating the table", e))?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS flumen_commits (query VARCHAR(255) NOT NULL, batch_time BIGINT NOT NULL, \
             `partition` INT NOT NULL, PRIMARY KEY (query, batch_time, `partition`))",
        )
        .await
        .map_err(|e| sink.error("creating flumen_commits", e))
    }

    async fn write_partition(
        sink: &MySqlSink,
        conn: &mut mysql_async::Conn,
        key: &WriteKey,
        batches: &[RecordBatch],
        retracted: &[RecordBatch],
    ) -> Result<()> {
        let query = sink.query();
        let t = key.batch_time.as_millis();
        let p = key.partition as i64;
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .map_err(|e| sink.error("BEGIN", e))?;
        let done: Option<i64> = tx
            .exec_first(
                "SELECT 1 FROM flumen_commits WHERE query = ? AND batch_time = ? AND `partition` = ?",
                (query.as_str(), t, p),
            )
            .await
            .map_err(|e| sink.error("reading flumen_commits", e))?;
        if done.is_some() {
            // Written before a restart: the replay writes nothing.
            tx.rollback().await.map_err(|e| sink.error("ROLLBACK", e))?;
            return Ok(());
        }
        for batch in retracted {
            let mut cols: Vec<Vec<Value>> = batch
                .columns()
                .iter()
                .map(|c| values(c.as_ref()))
                .collect::<Result<_>>()?;
            let sql = MySql::delete_sql(sink, &batch.schema());
            for r in 0..batch.num_rows() {
                let params: Vec<Value> = cols
                    .iter_mut()
                    .map(|c| std::mem::replace(&mut c[r], Value::NULL))
                    .collect();
                tx.exec_drop(sql.as_str(), params)
                    .await
                    .map_err(|e| sink.error("deleting retracted rows", e))?;
            }
        }
        for batch in batches {
            let schema = batch.schema();
            let mut cols: Vec<Vec<Value>> = batch
                .columns()
                .iter()
                .map(|c| values(c.as_ref()))
                .collect::<Result<_>>()?;
            for (start, end) in statement_ranges(batch.num_rows(), cols.len(), MAX_PARAMS) {
                // Row-major, each value moved out (not copied) once.
                let mut params = Vec::with_capacity((end - start) * cols.len());
                for r in start..end {
                    for c in cols.iter_mut() {
                        params.push(std::mem::replace(&mut c[r], Value::NULL));
                    }
                }
                tx.exec_drop(MySql::insert_sql(sink, &schema, end - start), params)
                    .await
                    .map_err(|e| sink.error("inserting rows", e))?;
            }
        }
        tx.exec_drop(
            "INSERT INTO flumen_commits (query, batch_time, `partition`) VALUES (?, ?, ?)",
            (query.as_str(), t, p),
        )
        .await
        .map_err(|e| sink.error("writing flumen_commits", e))?;
        tx.commit().await.map_err(|e| sink.error("COMMIT", e))
    }
}

/// `connector = 'mysql'`.
pub type MySqlSinkFactory = DbSinkFactory<MySql>;
