//! What the `postgres` and `mysql` sinks share: their options and checks, and one
//! [`DbSink`] — the connection pool, the tables created at open, one transaction per
//! (batch time, partition) — over a [`Dialect`] that holds what differs (the driver,
//! quoting, column types, the statements).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::registry::ConnectorOptions;
use flumen_engine::{Error, Result, Sink, Time, WriteKey, plan_err};
use parking_lot::Mutex;

use crate::offsets_store::redact;

/// What tells one database sink from another.
#[async_trait]
pub trait Dialect: Send + Sync + Sized + 'static {
    /// The connector's name, first in every message (`postgres`, `mysql`).
    const CONNECTOR: &'static str;
    /// The URL schemes it takes (`postgres`, `postgresql`).
    const SCHEMES: &'static [&'static str];
    /// A URL to show in messages.
    const EXAMPLE_URL: &'static str;
    /// A connection of the driver.
    type Conn: Send + 'static;

    /// A new connection to the sink's URL (TLS as the URL says); errors made with
    /// `sink.error("cannot connect", ..)`.
    async fn connect(sink: &DbSink<Self>) -> Result<Self::Conn>;

    /// Whether a pooled connection can still be used.
    fn usable(_conn: &Self::Conn) -> bool {
        true
    }

    /// Creates the sink's table (typed from `schema`) and `flumen_commits` when
    /// missing.
    async fn create_tables(
        sink: &DbSink<Self>,
        conn: &mut Self::Conn,
        schema: &SchemaRef,
    ) -> Result<()>;

    /// In one transaction: when `flumen_commits` has no record of (query, batch time,
    /// partition), deletes for each row of `retracted` one row of the table equal to
    /// it in every column (none when no row is: an upsert replaced it), writes the
    /// rows of `batches` and that record; otherwise nothing (a replay).
    async fn write_partition(
        sink: &DbSink<Self>,
        conn: &mut Self::Conn,
        key: &WriteKey,
        batches: &[RecordBatch],
        retracted: &[RecordBatch],
    ) -> Result<()>;
}

/// The factory of a database sink (`connector = 'postgres' | 'mysql'`).
#[derive(Debug)]
pub struct DbSinkFactory<D: Dialect>(std::marker::PhantomData<D>);

impl<D: Dialect> Default for DbSinkFactory<D> {
    fn default() -> Self {
        DbSinkFactory(std::marker::PhantomData)
    }
}

impl<D: Dialect + std::fmt::Debug> flumen_engine::registry::SinkFactory for DbSinkFactory<D> {
    fn options(&self) -> &[&'static str] {
        &OPTIONS
    }

    fn create(&self, name: &str, options: &ConnectorOptions) -> Result<Arc<dyn Sink>> {
        let o = parse(D::CONNECTOR, name, options, D::SCHEMES, D::EXAMPLE_URL)?;
        Ok(DbSink::<D>::create(name, o))
    }
}

/// A database sink: each partition of a batch is one transaction holding its rows
/// and its commit record, so a replayed batch writes nothing twice.
pub struct DbSink<D: Dialect> {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) table: String,
    pub(crate) mode: Mode,
    pub(crate) key: Vec<String>,
    /// The pipeline and the table, as `flumen_commits` records them (set at open).
    query: Mutex<String>,
    pool: Mutex<Vec<D::Conn>>,
    /// The column of a changelog's row kinds, when the query writes one.
    changelog: Mutex<Option<usize>>,
}

impl<D: Dialect> std::fmt::Debug for DbSink<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSink")
            .field("connector", &D::CONNECTOR)
            .field("name", &self.name)
            .field("url", &redact(&self.url))
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl<D: Dialect> DbSink<D> {
    pub(crate) fn create(name: &str, options: DbOptions) -> Arc<dyn Sink> {
        Arc::new(DbSink::<D> {
            name: name.to_string(),
            url: options.url,
            table: options.table,
            mode: options.mode,
            key: options.key,
            query: Mutex::default(),
            pool: Mutex::default(),
            changelog: Mutex::default(),
        })
    }

    /// An error of this sink: `<connector> <url> table <t>: <what>: <e>`, retryable.
    pub(crate) fn error(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Sink {
            sink_name: self.name.clone(),
            message: format!(
                "{} {} table {}: {what}: {e}",
                D::CONNECTOR,
                redact(&self.url),
                self.table
            ),
            retryable: true,
        }
    }

    /// The pipeline and the table, as `flumen_commits` records them.
    pub(crate) fn query(&self) -> String {
        self.query.lock().clone()
    }

    /// A pooled connection, or a new one (within 10 s).
    async fn connect(&self) -> Result<D::Conn> {
        let pooled = self.pool.lock().pop();
        if let Some(c) = pooled
            && D::usable(&c)
        {
            return Ok(c);
        }
        tokio::time::timeout(Duration::from_secs(10), D::connect(self))
            .await
            .map_err(|_| self.error("cannot connect", "no answer within 10 s"))?
    }
}

#[async_trait]
impl<D: Dialect> Sink for DbSink<D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_changelog(&self, op: Option<usize>) -> Result<()> {
        *self.changelog.lock() = op;
        Ok(())
    }

    async fn open(&self, query_id: &str, schema: SchemaRef) -> Result<()> {
        // A changelog's rows are applied: the table has the other columns.
        let schema = match *self.changelog.lock() {
            Some(op) => {
                let mut fields = schema.fields().to_vec();
                fields.remove(op);
                Arc::new(Schema::new(fields))
            }
            None => schema,
        };
        check_keys(&self.name, &self.key, &schema)?;
        let mut conn = self.connect().await?;
        D::create_tables(self, &mut conn, &schema).await?;
        self.pool.lock().push(conn);
        // The pipeline (its checkpoint's id, in `query_id`) and the target table: two
        // pipelines never skip each other's batches, a replay of one does.
        *self.query.lock() = format!("{query_id}/{}", self.table);
        Ok(())
    }

    async fn write(&self, key: &WriteKey, batches: Vec<RecordBatch>) -> Result<()> {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        let op = *self.changelog.lock();
        let (batches, retracted) = match op {
            Some(op) => split_changelog(batches, op)?,
            None => (batches, Vec::new()),
        };
        let mut conn = self.connect().await?;
        let result = D::write_partition(self, &mut conn, key, &batches, &retracted).await;
        if result.is_ok() {
            self.pool.lock().push(conn);
        }
        result
    }

    async fn commit(&self, _query_id: &str, _batch_time: Time, _partitions: usize) -> Result<()> {
        // Each partition committed in its own transaction with its commit record.
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    Append,
    Upsert,
}

/// `url`, `table`, `mode`, `key`.
pub(crate) const OPTIONS: [&str; 4] = ["url", "table", "mode", "key"];

#[derive(Debug)]
pub(crate) struct DbOptions {
    pub url: String,
    pub table: String,
    pub mode: Mode,
    pub key: Vec<String>,
}

/// Checks a database sink's options; `schemes` are the URL schemes it takes, the first
/// shown in messages with `example`.
pub(crate) fn parse(
    connector: &str,
    name: &str,
    options: &ConnectorOptions,
    schemes: &[&str],
    example: &str,
) -> Result<DbOptions> {
    let (Some(url), Some(table)) = (options.get("url"), options.get("table")) else {
        return plan_err!(
            "sink {name}: connector '{connector}' needs url = '{example}' and table = '...'"
        );
    };
    if !schemes.iter().any(|s| url.starts_with(&format!("{s}://"))) {
        return plan_err!(
            "sink {name}: url '{}' is not a {}:// URL",
            redact(url),
            schemes[0]
        );
    }
    let mode = match options
        .get("mode")
        .map(|m| m.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("append") => Mode::Append,
        Some("upsert") => Mode::Upsert,
        Some(other) => return plan_err!("sink {name}: mode '{other}' is not append or upsert"),
    };
    let key: Vec<String> = options
        .get("key")
        .map(|k| {
            k.split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if mode == Mode::Upsert && key.is_empty() {
        return plan_err!("sink {name}: mode 'upsert' needs key = 'col[, col...]'");
    }
    Ok(DbOptions {
        url: url.clone(),
        table: table.clone(),
        mode,
        key,
    })
}

/// Every `key` column is in the query's output.
pub(crate) fn check_keys(sink: &str, key: &[String], schema: &Schema) -> Result<()> {
    for k in key {
        if schema.index_of(k).is_err() {
            return plan_err!(
                "sink {sink}: key column '{k}' is not in the output ({})",
                crate::column_list(schema)
            );
        }
    }
    Ok(())
}

/// `, PRIMARY KEY (k1, k2)` for upserts, nothing for appends.
pub(crate) fn primary_key_clause(mode: Mode, key: &[String], ident: fn(&str) -> String) -> String {
    if mode != Mode::Upsert {
        return String::new();
    }
    let cols: Vec<String> = key.iter().map(|k| ident(k)).collect();
    format!(", PRIMARY KEY ({})", cols.join(", "))
}

/// Row ranges `[start, end)` of `rows` rows, each small enough that one multi-row
/// INSERT of `columns` columns stays under `max_params` bound parameters.
pub(crate) fn statement_ranges(
    rows: usize,
    columns: usize,
    max_params: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let per_statement = (max_params / columns.max(1)).max(1);
    (0..rows)
        .step_by(per_statement)
        .map(move |start| (start, (start + per_statement).min(rows)))
}

/// A changelog's rows (`op` their kind column) as the rows added and the rows
/// retracted, each without the kind column.
pub(crate) fn split_changelog(
    batches: Vec<RecordBatch>,
    op: usize,
) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    use datafusion::arrow::array::{AsArray, BooleanArray};
    use datafusion::arrow::compute::filter_record_batch;
    let (mut added, mut retracted) = (Vec::new(), Vec::new());
    for b in batches {
        let Some(ops) = b.column(op).as_string_opt::<i32>() else {
            return Err(Error::Internal(format!(
                "a changelog's column {op} is not its row kind"
            )));
        };
        let is_delete: BooleanArray = ops
            .iter()
            .map(|v| Some(v == Some(flumen_engine::ops::OP_DELETE)))
            .collect();
        let mut data = b.clone();
        data.remove_column(op);
        let deletes = filter_record_batch(&data, &is_delete)?;
        if deletes.num_rows() == 0 {
            added.push(data);
            continue;
        }
        let inserts = filter_record_batch(&data, &datafusion::arrow::compute::not(&is_delete)?)?;
        retracted.push(deletes);
        if inserts.num_rows() > 0 {
            added.push(inserts);
        }
    }
    Ok((added, retracted))
}
