//! The `postgres` sink: each partition of a batch is one transaction holding its rows
//! and its commit record `flumen_commits(query, batch_time, partition)` (the seed's
//! transactional update); a replayed batch finds its record and writes nothing.
//!
//! ```text
//!  write(T, p): BEGIN
//!               SELECT 1 FROM flumen_commits WHERE (query, batch_time, partition) = (q, T, p)
//!                 found: ROLLBACK (already written)
//!               DELETE one row equal to each retracted row (a changelog's `-D`)
//!               INSERT INTO table (cols) VALUES ($1, $2, ...), ...   [ON CONFLICT (key) DO UPDATE]
//!               INSERT INTO flumen_commits VALUES (q, T, p)
//!               COMMIT
//! ```
//!
//! Values are bound parameters, identifiers quoted; one pooled connection per
//! concurrently written partition at most. Tables are created when missing, typed from
//! the query's schema (upsert: primary key `key`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::{Result, WriteKey};
use tokio_postgres::types::ToSql;

use crate::db_sink::{DbSink, DbSinkFactory, Dialect, Mode, primary_key_clause, statement_ranges};

/// Bound parameters per statement stay under PostgreSQL's 65,535.
const MAX_PARAMS: usize = 30_000;

/// A column as one of the types bound to PostgreSQL.
enum Col {
    I(Int64Array),
    F(Float64Array),
    S(StringArray),
    B(BooleanArray),
    T(Vec<Option<SystemTime>>),
}

impl Col {
    fn sql_type(dt: &DataType) -> &'static str {
        match dt {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => "BIGINT",
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..) => "DOUBLE PRECISION",
            DataType::Boolean => "BOOLEAN",
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => "TIMESTAMP",
            _ => "TEXT",
        }
    }

    /// Every column of `batch`.
    fn of_batch(batch: &RecordBatch) -> Result<Vec<Col>> {
        batch
            .columns()
            .iter()
            .map(|c| Col::from_array(c.as_ref()))
            .collect()
    }

    fn from_array(a: &dyn Array) -> Result<Col> {
        let a = datafusion::arrow::array::make_array(a.to_data());
        Ok(match Self::sql_type(a.data_type()) {
            "BIGINT" => Col::I(
                cast(&a, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            "DOUBLE PRECISION" => Col::F(
                cast(&a, &DataType::Float64)?
                    .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                    .clone(),
            ),
            "BOOLEAN" => Col::B(a.as_boolean().clone()),
            "TIMESTAMP" => {
                let t = cast(&a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
                let t = t
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .expect("cast to timestamp");
                Col::T(
                    t.iter()
                        .map(|v| {
                            v.map(|us| {
                                if us >= 0 {
                                    UNIX_EPOCH + Duration::from_micros(us as u64)
                                } else {
                                    UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
                                }
                            })
                        })
                        .collect(),
                )
            }
            _ => Col::S(cast(&a, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }
}

/// Parameter values of one column, row by row; text is borrowed from the Arrow array.
enum Values<'a> {
    I(Vec<Option<i64>>),
    F(Vec<Option<f64>>),
    S(Vec<Option<&'a str>>),
    B(Vec<Option<bool>>),
    T(&'a [Option<SystemTime>]),
}

impl<'a> Values<'a> {
    fn of(c: &'a Col) -> Values<'a> {
        match c {
            Col::I(a) => Values::I(a.iter().collect()),
            Col::F(a) => Values::F(a.iter().collect()),
            Col::S(a) => Values::S(a.iter().collect()),
            Col::B(a) => Values::B(a.iter().collect()),
            Col::T(v) => Values::T(v),
        }
    }

    fn param(&self, row: usize) -> &(dyn ToSql + Sync) {
        match self {
            Values::I(v) => &v[row],
            Values::F(v) => &v[row],
            Values::S(v) => &v[row],
            Values::B(v) => &v[row],
            Values::T(v) => &v[row],
        }
    }
}

/// `"name"` with inner quotes doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// PostgreSQL, through pooled `tokio-postgres` clients.
#[derive(Debug)]
pub struct Postgres;

/// The `postgres` sink.
pub type PostgresSink = DbSink<Postgres>;

impl Postgres {
    fn insert_sql(sink: &PostgresSink, schema: &SchemaRef, rows: usize) -> String {
        let cols: Vec<String> = schema.fields().iter().map(|f| ident(f.name())).collect();
        let n = cols.len();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ",
            ident(&sink.table),
            cols.join(", ")
        );
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..n {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", r * n + c + 1));
            }
            sql.push(')');
        }
        if sink.mode == Mode::Upsert {
            let keys: Vec<String> = sink.key.iter().map(|k| ident(k)).collect();
            let updates: Vec<String> = cols
                .iter()
                .filter(|c| !keys.contains(c))
                .map(|c| format!("{c} = EXCLUDED.{c}"))
                .collect();
            sql.push_str(&format!(" ON CONFLICT ({}) ", keys.join(", ")));
            if updates.is_empty() {
                sql.push_str("DO NOTHING");
            } else {
                sql.push_str(&format!("DO UPDATE SET {}", updates.join(", ")));
            }
        }
        sql
    }
}

impl Postgres {
    /// Deletes one row equal to the bound values in every column (nulls equal).
    fn delete_sql(sink: &PostgresSink, schema: &SchemaRef) -> String {
        let table = ident(&sink.table);
        let equal: Vec<String> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{} IS NOT DISTINCT FROM ${}", ident(f.name()), i + 1))
            .collect();
        format!(
            "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {} LIMIT 1)",
            equal.join(" AND ")
        )
    }
}

#[async_trait]
impl Dialect for Postgres {
    const CONNECTOR: &'static str = "postgres";
    const SCHEMES: &'static [&'static str] = &["postgres", "postgresql"];
    const EXAMPLE_URL: &'static str = "postgres://user@host:port/db";
    type Conn = tokio_postgres::Client;

    async fn connect(sink: &PostgresSink) -> Result<tokio_postgres::Client> {
        crate::tls::pg_connect(&sink.url, format!("sink {}", sink.name))
            .await
            .map_err(|e| sink.error("cannot connect", e))
    }

    fn usable(client: &tokio_postgres::Client) -> bool {
        !client.is_closed()
    }

    async fn create_tables(
        sink: &PostgresSink,
        client: &mut tokio_postgres::Client,
        schema: &SchemaRef,
    ) -> Result<()> {
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", ident(f.name()), Col::sql_type(f.data_type())))
            .collect();
        let pk = primary_key_clause(sink.mode, &sink.key, ident);
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} ({}{pk});
                 CREATE TABLE IF NOT EXISTS flumen_commits (query TEXT NOT NULL, batch_time BIGINT NOT NULL,
                   \"partition\" INTEGER NOT NULL, PRIMARY KEY (query, batch_time, \"partition\"))",
                ident(&sink.table),
                cols.join(", ")
            ))
            .await
            .map_err(|e| sink.error("creating the tables", e))
    }

    async fn write_partition(
        sink: &PostgresSink,
        client: &mut tokio_postgres::Client,
        key: &WriteKey,
        batches: &[RecordBatch],
        retracted: &[RecordBatch],
    ) -> Result<()> {
        let query = sink.query();
        let t = key.batch_time.as_millis();
        let p = key.partition as i32;
        let tx = client
            .transaction()
            .await
            .map_err(|e| sink.error("BEGIN", e))?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM flumen_commits WHERE query = $1 AND batch_time = $2 AND \"partition\" = $3",
                &[&query, &t, &p],
            )
            .await
            .map_err(|e| sink.error("reading flumen_commits", e))?;
        if done.is_some() {
            // Written before a restart: the replay writes nothing.
            return Ok(());
        }
        for batch in retracted {
            let cols = Col::of_batch(batch)?;
            let values: Vec<Values> = cols.iter().map(Values::of).collect();
            let statement = tx
                .prepare(&Postgres::delete_sql(sink, &batch.schema()))
                .await
                .map_err(|e| sink.error("deleting retracted rows", e))?;
            for r in 0..batch.num_rows() {
                let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.param(r)).collect();
                tx.execute(&statement, &params)
                    .await
                    .map_err(|e| sink.error("deleting retracted rows", e))?;
            }
        }
        for batch in batches {
            let schema = batch.schema();
            let cols = Col::of_batch(batch)?;
            let values: Vec<Values> = cols.iter().map(Values::of).collect();
            for (start, end) in statement_ranges(batch.num_rows(), values.len(), MAX_PARAMS) {
                let sql = Postgres::insert_sql(sink, &schema, end - start);
                let mut params: Vec<&(dyn ToSql + Sync)> =
                    Vec::with_capacity((end - start) * values.len());
                for r in start..end {
                    for v in &values {
                        params.push(v.param(r));
                    }
                }
                tx.execute(sql.as_str(), &params)
                    .await
                    .map_err(|e| sink.error("inserting rows", e))?;
            }
        }
        tx.execute(
            "INSERT INTO flumen_commits (query, batch_time, \"partition\") VALUES ($1, $2, $3)",
            &[&query, &t, &p],
        )
        .await
        .map_err(|e| sink.error("writing flumen_commits", e))?;
        tx.commit().await.map_err(|e| sink.error("COMMIT", e))
    }
}

/// `connector = 'postgres'`.
pub type PostgresSinkFactory = DbSinkFactory<Postgres>;
