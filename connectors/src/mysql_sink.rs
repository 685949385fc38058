//! The `mysql` sink (MySQL and MariaDB): as the `postgres` sink, each partition of a
//! batch is one transaction holding its rows and its commit record
//! `flumen_commits(query, batch_time, partition)`; a replayed batch finds its record
//! and writes nothing. Values are bound parameters (`?`), identifiers quoted with
//! backticks; tables are created when missing (upsert: primary key `key`, text keys as
//! `VARCHAR(255)`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::registry::{ConnectorOptions, SinkFactory};
use flumen_engine::{Error, Result, Sink, Time, WriteKey};
use mysql_async::Value;
use mysql_async::prelude::Queryable;
use parking_lot::Mutex;

use crate::db_sink::{Mode, check_keys, primary_key_clause, statement_ranges};
use crate::offsets_store::redact;

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

pub struct MySqlSink {
    name: String,
    url: String,
    table: String,
    mode: Mode,
    key: Vec<String>,
    query: Mutex<String>,
    pool: Mutex<Vec<mysql_async::Conn>>,
}

impl std::fmt::Debug for MySqlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlSink")
            .field("name", &self.name)
            .field("url", &redact(&self.url))
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl MySqlSink {
    fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Sink {
            sink_name: self.name.clone(),
            message: format!(
                "mysql {} table {}: {what}: {e}",
                redact(&self.url),
                self.table
            ),
            retryable: true,
        }
    }

    async fn connect(&self) -> Result<mysql_async::Conn> {
        let pooled = self.pool.lock().pop();
        if let Some(c) = pooled {
            return Ok(c);
        }
        let opts =
            crate::tls::mysql_opts(&self.url).map_err(|e| self.error("cannot connect", e))?;
        tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts))
            .await
            .map_err(|_| self.error("cannot connect", "no answer within 10 s"))?
            .map_err(|e| self.error("cannot connect", e))
    }

    fn insert_sql(&self, schema: &SchemaRef, rows: usize) -> String {
        let cols: Vec<String> = schema.fields().iter().map(|f| ident(f.name())).collect();
        let one = format!("({})", vec!["?"; cols.len()].join(", "));
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            ident(&self.table),
            cols.join(", "),
            vec![one.as_str(); rows].join(", ")
        );
        if self.mode == Mode::Upsert {
            let keys: Vec<String> = self.key.iter().map(|k| ident(k)).collect();
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

    async fn write_in(
        &self,
        conn: &mut mysql_async::Conn,
        key: &WriteKey,
        batches: &[RecordBatch],
    ) -> Result<()> {
        let query = self.query.lock().clone();
        let t = key.batch_time.as_millis();
        let p = key.partition as i64;
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .map_err(|e| self.error("BEGIN", e))?;
        let done: Option<i64> = tx
            .exec_first(
                "SELECT 1 FROM flumen_commits WHERE query = ? AND batch_time = ? AND `partition` = ?",
                (query.as_str(), t, p),
            )
            .await
            .map_err(|e| self.error("reading flumen_commits", e))?;
        if done.is_some() {
            // Written before a restart: the replay writes nothing.
            tx.rollback().await.map_err(|e| self.error("ROLLBACK", e))?;
            return Ok(());
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
                tx.exec_drop(self.insert_sql(&schema, end - start), params)
                    .await
                    .map_err(|e| self.error("inserting rows", e))?;
            }
        }
        tx.exec_drop(
            "INSERT INTO flumen_commits (query, batch_time, `partition`) VALUES (?, ?, ?)",
            (query.as_str(), t, p),
        )
        .await
        .map_err(|e| self.error("writing flumen_commits", e))?;
        tx.commit().await.map_err(|e| self.error("COMMIT", e))
    }
}

#[async_trait]
impl Sink for MySqlSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(&self, query_id: &str, schema: SchemaRef) -> Result<()> {
        check_keys(&self.name, &self.key, &schema)?;
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                format!(
                    "{} {}",
                    ident(f.name()),
                    sql_type(f.data_type(), self.key.contains(f.name()))
                )
            })
            .collect();
        let pk = primary_key_clause(self.mode, &self.key, ident);
        let mut conn = self.connect().await?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} ({}{pk})",
            ident(&self.table),
            cols.join(", ")
        ))
        .await
        .map_err(|e| self.error("creating the table", e))?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS flumen_commits (query VARCHAR(255) NOT NULL, batch_time BIGINT NOT NULL, \
             `partition` INT NOT NULL, PRIMARY KEY (query, batch_time, `partition`))",
        )
        .await
        .map_err(|e| self.error("creating flumen_commits", e))?;
        self.pool.lock().push(conn);
        // The pipeline (its checkpoint's id, in `query_id`) and the target table: two
        // pipelines never skip each other's batches, a replay of one does.
        *self.query.lock() = format!("{query_id}/{}", self.table);
        Ok(())
    }

    async fn write(&self, key: &WriteKey, batches: Vec<RecordBatch>) -> Result<()> {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        let mut conn = self.connect().await?;
        let result = self.write_in(&mut conn, key, &batches).await;
        if result.is_ok() {
            self.pool.lock().push(conn);
        }
        result
    }

    async fn commit(&self, _query_id: &str, _batch_time: Time, _partitions: usize) -> Result<()> {
        Ok(())
    }
}

/// `connector = 'mysql'`.
#[derive(Debug)]
pub struct MySqlSinkFactory;

impl SinkFactory for MySqlSinkFactory {
    fn options(&self) -> &[&'static str] {
        &crate::db_sink::OPTIONS
    }

    fn create(&self, name: &str, options: &ConnectorOptions) -> Result<Arc<dyn Sink>> {
        let o = crate::db_sink::parse(
            "mysql",
            name,
            options,
            &["mysql", "mariadb"],
            "mysql://user:password@host:port/db",
        )?;
        Ok(Arc::new(MySqlSink {
            name: name.to_string(),
            url: o.url,
            table: o.table,
            mode: o.mode,
            key: o.key,
            query: Mutex::default(),
            pool: Mutex::default(),
        }))
    }
}
