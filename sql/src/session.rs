//! [`FlumenSession`]: executes SQL scripts — Flumen's statements, and DataFusion's for
//! everything else.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::{LogicalPlanBuilder, ScalarUDF};
use flumen_engine::registry::{ConnectorOptions, bool_option};
use flumen_engine::stream::replace_default_schema;
use flumen_engine::{
    Clock, ConnectorRegistry, Error, MemorySink, QueryMetrics, QueueSource, Result, Sink,
    SourceOptions, StreamingContext, StreamingContextState, SystemClock, Time, Trigger,
    lifecycle_err, plan_err,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use flumen_engine::checkpoint::CheckpointLocation;

use crate::batch_time::{BATCH_TIME_COLUMN, BatchTimeCell, batch_time_udf};
use crate::catalog::{Catalog, MemorySinkTable, SinkDef, StreamDef, StreamKind, StreamPlaceholder};
use crate::planner::{OperatorOutputs, OutputMode, QueryScope, plan_query, reads_stream};
use crate::statement::{
    ObjectKind, Options, ShowKind, Statement, parse_setting_duration, parse_statement,
    split_statements,
};

/// Session settings (`SET ...`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_interval: Duration,
    pub output_mode: OutputMode,
    pub checkpoint_location: Option<String>,
    /// Snapshot state every this many batches.
    pub checkpoint_interval: u64,
    /// Append each batch's progress record (JSON lines) to this file.
    pub progress_log: Option<String>,
    pub trigger: Trigger,
    /// `SET restart = 'on-failure'`: a failed query starts again from its checkpoint
    /// (`restart_attempts` times at most, after `restart_delay`, doubling).
    pub restart: Option<flumen_engine::RestartPolicy>,
    pub restart_attempts: u32,
    pub restart_delay: Duration,
    /// How console sinks print when they do not say (`SET console_format`).
    pub console_format: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_interval: Duration::from_secs(1),
            output_mode: OutputMode::default(),
            checkpoint_location: None,
            checkpoint_interval: 1,
            progress_log: None,
            trigger: Trigger::ProcessingTime,
            restart: None,
            restart_attempts: 3,
            restart_delay: Duration::from_secs(1),
            console_format: None,
        }
    }
}

/// What a statement produced.
#[derive(Debug)]
pub enum StatementResult {
    /// A statement without rows, with a message for the user.
    Done(String),
    /// Rows.
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    /// A continuous query was started; its batches arrive on `batches`.
    Continuous {
        query_id: u64,
        schema: SchemaRef,
        batches: mpsc::UnboundedReceiver<(Time, Vec<RecordBatch>)>,
    },
}

/// A query the session started.
#[derive(Clone)]
pub struct QueryInfo {
    pub id: u64,
    pub sql: String,
    /// The sink or table it writes to, or `console` for a bare SELECT.
    pub target: String,
    pub ctx: StreamingContext,
    pub streams: HashSet<String>,
    pub explain: Vec<String>,
    /// Its totals since it started (the web UI's `/metrics`).
    pub metrics: Arc<QueryMetrics>,
}

impl QueryInfo {
    /// Whether `key` names this query: its id, or the sink/table it writes.
    pub fn answers_to(&self, key: &str) -> bool {
        self.id.to_string() == key || self.target.eq_ignore_ascii_case(key)
    }
}

/// `1 (out), 2 (totals)`: the queries, for messages that name the ones there are.
pub fn list_queries(queries: &[QueryInfo]) -> String {
    queries
        .iter()
        .map(|q| format!("{} ({})", q.id, q.target))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Executes Flumen SQL.
pub struct FlumenSession {
    base: SessionContext,
    registry: ConnectorRegistry,
    clock: Arc<dyn Clock>,
    settings: Settings,
    catalog: Arc<Mutex<Catalog>>,
    /// Shared with [`SessionView`]s (the web UI reads them while the session runs).
    queries: Arc<Mutex<BTreeMap<u64, QueryInfo>>>,
    next_query: u64,
}

/// What a session holds — its queries, streams and sinks — readable from another task
/// while the session goes on (the web UI's view). Cheap to clone.
#[derive(Clone)]
pub struct SessionView {
    catalog: Arc<Mutex<Catalog>>,
    queries: Arc<Mutex<BTreeMap<u64, QueryInfo>>>,
}

impl SessionView {
    /// Every query the session started, running or stopped, by id.
    pub fn queries(&self) -> Vec<QueryInfo> {
        self.queries.lock().values().cloned().collect()
    }

    /// One query, by id or by the sink/table it writes.
    pub fn query(&self, key: &str) -> Option<QueryInfo> {
        self.queries
            .lock()
            .values()
            .find(|q| q.answers_to(key))
            .cloned()
    }

    /// Streams: name, kind (`source` with its connector, or `derived`), columns.
    pub fn streams(&self) -> Vec<(String, String, SchemaRef)> {
        self.catalog
            .lock()
            .streams
            .values()
            .map(|s| {
                let kind = match &s.kind {
                    StreamKind::Source { connector } => format!("source ({connector})"),
                    StreamKind::Derived { .. } => "derived".to_string(),
                };
                (s.name.clone(), kind, Arc::clone(&s.schema))
            })
            .collect()
    }

    /// Sinks and tables: name, connector (`table` for a table), the query writing it.
    pub fn sinks(&self) -> Vec<(String, String, Option<u64>)> {
        self.catalog
            .lock()
            .sinks
            .values()
            .map(|s| {
                let connector = if s.is_table {
                    "table".to_string()
                } else {
                    s.options
                        .get("connector")
                        .cloned()
                        .unwrap_or_else(|| "memory".into())
                };
                (s.name.clone(), connector, s.query)
            })
            .collect()
    }
}

impl Default for FlumenSession {
    fn default() -> Self {
        Self::new(ConnectorRegistry::with_builtins(), Arc::new(SystemClock))
    }
}

enum Target {
    Sink(String),
    Console(mpsc::UnboundedSender<(Time, Vec<RecordBatch>)>),
}

impl FlumenSession {
    /// A session with the connectors of `registry`, on `clock`.
    pub fn new(registry: ConnectorRegistry, clock: Arc<dyn Clock>) -> Self {
        let base = SessionContext::new_with_config(
            datafusion::execution::context::SessionConfig::new().with_information_schema(true),
        );
        base.register_udf(crate::window::window_udf());
        base.register_udf(crate::window::hop_windows_udf());
        base.register_udf(crate::window::hop_window_ends_udf());
        base.register_udf(crate::window::window_end_udf());
        base.register_udf(crate::window::session_window_udf());
        // `date_format` is Flumen's (Flink's patterns), not DataFusion's alias of to_char.
        base.deregister_udf("date_format");
        base.register_udf(crate::functions::to_char_udf());
        base.register_udf(crate::functions::date_format_udf());
        Self {
            base,
            registry,
            clock,
            settings: Settings::default(),
            catalog: Arc::new(Mutex::new(Catalog::default())),
            queries: Arc::default(),
            next_query: 1,
        }
    }

    /// A view of the session's queries, streams and sinks for another task.
    pub fn view(&self) -> SessionView {
        SessionView {
            catalog: Arc::clone(&self.catalog),
            queries: Arc::clone(&self.queries),
        }
    }

    /// The DataFusion session holding static tables.
    pub fn session(&self) -> &SessionContext {
        &self.base
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every query the session started, by id (cheap clones: the contexts are shared).
    pub fn queries(&self) -> impl Iterator<Item = QueryInfo> + use<> {
        self.queries
            .lock()
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// How many queries are running.
    pub fn active_queries(&self) -> usize {
        self.queries
            .lock()
            .values()
            .filter(|q| q.ctx.state() == StreamingContextState::Active)
            .count()
    }

    /// Stop one query; with `graceful`, its batch in flight finishes first.
    pub async fn stop_query(&self, id: u64, graceful: bool) -> Result<()> {
        let query = self.queries.lock().get(&id).cloned();
        match query {
            Some(q) => q.ctx.stop(graceful).await,
            None => plan_err!("no query {id}; SHOW QUERIES lists them"),
        }
    }

    /// Stop every query gracefully (the batch in flight finishes and commits).
    pub async fn stop_all(&self) -> Result<()> {
        for q in self.queries() {
            q.ctx.stop(true).await?;
        }
        Ok(())
    }

    /// Wait until every query has stopped by itself (e.g. drained under
    /// `available_now`); the first failure, naming its query.
    pub async fn await_all(&self) -> Result<()> {
        let mut first_error = None;
        for q in self.queries() {
            if let Err(e) = q.ctx.await_termination().await
                && first_error.is_none()
            {
                first_error = Some(Error::Plan(format!("query {}: {e}", q.id)));
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Names of streams, sinks and tables, and of their columns (for completion).
    pub fn object_names(&self) -> Vec<String> {
        let c = self.catalog.lock();
        let mut names: Vec<String> = c.streams.keys().chain(c.sinks.keys()).cloned().collect();
        let columns = c
            .streams
            .values()
            .map(|s| s.schema.clone())
            .chain(c.sinks.values().filter_map(|s| s.schema.clone()));
        for schema in columns {
            names.extend(schema.fields().iter().map(|f| f.name().clone()));
        }
        names.sort();
        names.dedup();
        names
    }

    /// Runs every statement of `script`, stopping at the first error, which names the
    /// line where the failing statement starts.
    pub async fn execute_script(&mut self, script: &str) -> Result<Vec<StatementResult>> {
        let mut out = Vec::new();
        for st in split_statements(script)? {
            match self.execute(&st.sql).await {
                Ok(r) => out.push(r),
                Err(e) => {
                    return Err(Error::Plan(format!("line {}: {e}", st.line)));
                }
            }
        }
        Ok(out)
    }

    /// Runs one statement (a trailing `;` is allowed).
    pub async fn execute(&mut self, sql: &str) -> Result<StatementResult> {
        let statements = split_statements(sql)?;
        let sql = match statements.as_slice() {
            [one] => one.sql.as_str(),
            [] => return Ok(StatementResult::Done(String::new())),
            _ => return plan_err!("execute() takes one statement; use execute_script for several"),
        };
        match parse_statement(sql)? {
            Statement::CreateStream {
                name,
                columns,
                watermark,
                options,
            } => self.create_stream(name, columns, watermark, options),
            Statement::CreateStreamAs {
                name,
                options,
                query,
            } => self.create_derived_stream(name, options, query).await,
            Statement::CreateSink {
                name,
                options,
                query,
            } => {
                self.create_sink(&name, options, false)?;
                match query {
                    Some(q) => {
                        let id = self.start_query_or_forget(&q, &name).await?;
                        Ok(StatementResult::Done(format!(
                            "Sink '{name}' created; query {id} writes to it{}",
                            self.state_warnings(id)
                        )))
                    }
                    None => Ok(StatementResult::Done(format!("Sink '{name}' created"))),
                }
            }
            Statement::CreateTableAs { name, sql, query } => {
                if !self.reads_streams(&query).await? {
                    return self.datafusion(&sql).await;
                }
                let mut options = Options::new();
                options.insert("connector".into(), "memory".into());
                self.create_sink(&name, options, true)?;
                let id = self.start_query_or_forget(&query, &name).await?;
                Ok(StatementResult::Done(format!(
                    "Table '{name}' created; query {id} maintains it{}",
                    self.state_warnings(id)
                )))
            }
            Statement::InsertInto { target, sql, query } => {
                self.insert(&target, &sql, &query).await
            }
            Statement::Set { key, value, sql } => self.set(&key, &value, &sql).await,
            Statement::Show(kind) => self.show(kind),
            Statement::ShowProgress(query) => self.show_progress(query.as_deref()),
            Statement::Describe(name) => self.describe(&name).await,
            Statement::Explain(query) => self.explain(&query).await,
            Statement::StopQuery(id) => {
                self.stop_query(id, true).await?;
                Ok(StatementResult::Done(format!("Query {id} stopped")))
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => self.drop(kind, &name, if_exists).await,
            Statement::Advance(n) => self.advance(n).await,
            Statement::Other(sql) => {
                if self.reads_streams(&sql).await? {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let (id, schema) = self.start_query(&sql, Target::Console(tx)).await?;
                    Ok(StatementResult::Continuous {
                        query_id: id,
                        schema,
                        batches: rx,
                    })
                } else {
                    self.datafusion(&sql).await
                }
            }
        }
    }

    /// EXPLAIN's warnings about state that grows without bound, for the message that
    /// says query `id` started (one `warning: ...` line each).
    fn state_warnings(&self, id: u64) -> String {
        let queries = self.queries.lock();
        let Some(q) = queries.get(&id) else {
            return String::new();
        };
        q.explain
            .iter()
            .filter(|l| l.contains("WARNING") || l.contains("grows without bound"))
            .map(|l| format!("\nwarning: {}", l.replace("WARNING: ", "")))
            .collect()
    }

    fn watermarks(&self) -> HashMap<String, Duration> {
        watermarks_of(&self.catalog.lock())
    }

    async fn datafusion(&self, sql: &str) -> Result<StatementResult> {
        let df = self.base.sql(sql).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        if schema.fields().is_empty() {
            return Ok(StatementResult::Done("OK".into()));
        }
        Ok(StatementResult::Rows { schema, batches })
    }

    /// ksqlDB's `WINDOW TUMBLING/HOPPING (...)` clause and the `TUMBLE/HOP/SESSION`
    /// table functions onto `window()`.
    fn rewrite_ksql(&self, sql: &str) -> Result<String> {
        let sql = {
            let catalog = self.catalog.lock();
            crate::ksql::rewrite_window_clause(sql, |stream| {
                catalog
                    .streams
                    .get(stream)
                    .and_then(|s| s.watermark.as_ref().map(|w| w.column.clone()))
            })?
        };
        crate::tvf::rewrite_table_functions(&sql)
    }

    /// Whether `sql` (a query) reads one of the session's streams.
    async fn reads_streams(&self, sql: &str) -> Result<bool> {
        let (sql, _) = strip_emit(sql, self.settings.output_mode);
        let sql = match self.rewrite_ksql(&sql) {
            Ok(s) => s,
            Err(_) => sql,
        };
        let sql = sql.as_str();
        let streams: HashSet<String> = self.catalog.lock().streams.keys().cloned().collect();
        if streams.is_empty() {
            return Ok(false);
        }
        let plan = match self.base.state().create_logical_plan(sql).await {
            Ok(p) => p,
            // Not a query DataFusion can plan: let DataFusion report it.
            Err(_) => return Ok(false),
        };
        Ok(plan_reads(&plan, &streams))
    }

    fn check_free(&self, name: &str) -> Result<()> {
        if let Some(kind) = self.catalog.lock().kind_of(name) {
            return plan_err!(
                "a {kind} named '{name}' already exists; DROP {} {name} first",
                kind.to_uppercase()
            );
        }
        if self.base.table_exist(name).unwrap_or(false) {
            return plan_err!("a table named '{name}' already exists");
        }
        Ok(())
    }

    fn create_stream(
        &mut self,
        name: String,
        columns: Vec<crate::statement::ColumnDef>,
        watermark: Option<crate::statement::Watermark>,
        options: Options,
    ) -> Result<StatementResult> {
        self.check_free(&name)?;
        let Some(connector) = options.get("connector").cloned() else {
            return plan_err!(
                "CREATE STREAM {name} needs WITH (connector = '...'); available: {}",
                self.source_connectors().join(", ")
            );
        };
        let schema: SchemaRef = if columns.is_empty() {
            let factory = self.registry.source(&connector)?;
            match factory.default_schema(&source_options(&options)) {
                Some(s) => s,
                None => {
                    // The connector's own complaint about its options comes first.
                    let empty = Arc::new(datafusion::arrow::datatypes::Schema::empty());
                    factory.create(&name, empty, &source_options(&options))?;
                    return plan_err!(
                        "CREATE STREAM {name}: declare its columns, e.g. (line TEXT)"
                    );
                }
            }
        } else {
            Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                    .collect::<Vec<_>>(),
            ))
        };
        if schema.field_with_name(BATCH_TIME_COLUMN).is_ok() {
            return plan_err!(
                "column name {BATCH_TIME_COLUMN} is reserved: every stream has it (the time of the batch a row arrives in)"
            );
        }
        if let Some(w) = &watermark {
            match schema.field_with_name(&w.column) {
                Ok(f) if matches!(f.data_type(), DataType::Timestamp(_, _)) => {}
                Ok(f) => {
                    return plan_err!(
                        "WATERMARK FOR {}: the column is {}, it must be a TIMESTAMP",
                        w.column,
                        f.data_type()
                    );
                }
                Err(_) => {
                    return plan_err!(
                        "WATERMARK FOR {}: no such column in stream {name}",
                        w.column
                    );
                }
            }
        }
        let dead_letter = self.dead_letter_of(&name, watermark.as_ref(), &options)?;
        let errors_dead_letter = options
            .get("on_error")
            .is_some_and(|p| p.eq_ignore_ascii_case("dead_letter"));
        if errors_dead_letter {
            self.check_free(&format!("{name}_errors"))?;
        }
        // Validate the connector and its options now, not at the first query.
        let source = self.registry.source(&connector)?.create(
            &name,
            schema.clone(),
            &receiver_options(
                &name,
                &options,
                self.settings.checkpoint_location.as_deref(),
            ),
        )?;
        let (max_records, backpressure) = rate_options(&name, &options)?;
        if (max_records.is_some() || backpressure) && !source.honours_record_limit() {
            return plan_err!(
                "stream {name}: connector '{connector}' cannot cap the records of a batch (max_records_per_batch, backpressure){}",
                source.record_limit_hint()
            );
        }
        self.base.register_table(
            name.as_str(),
            Arc::new(StreamPlaceholder {
                name: name.clone(),
                schema: with_batch_time(&schema),
            }),
        )?;
        self.catalog.lock().streams.insert(
            name.clone(),
            StreamDef {
                name: name.clone(),
                schema: schema.clone(),
                watermark,
                options,
                kind: StreamKind::Source { connector },
            },
        );
        if errors_dead_letter {
            // Records the connector cannot decode go to `<stream>_errors`.
            self.create_dead_letter(
                &format!("{name}_errors"),
                flumen_engine::source::rejected_schema(),
            )?;
        }
        if let Some(sink_name) = dead_letter {
            self.create_dead_letter(&sink_name, schema.clone())?;
        }
        Ok(StatementResult::Done(format!("Stream '{name}' created")))
    }

    /// A dead letter: a memory sink of `schema`, appended to, readable with SELECT.
    fn create_dead_letter(&mut self, name: &str, schema: SchemaRef) -> Result<()> {
        self.create_sink(
            name,
            Options::from([("connector".into(), "memory".into())]),
            false,
        )?;
        let memory = {
            let mut c = self.catalog.lock();
            c.sinks.get_mut(name).and_then(|def| {
                def.schema = Some(schema.clone());
                def.mode = OutputMode::Append;
                def.memory.clone()
            })
        };
        if let Some(m) = memory {
            self.register_memory_table(name, m, schema, OutputMode::Append)?;
        }
        Ok(())
    }

    /// Makes a memory sink readable with `SELECT * FROM name`.
    fn register_memory_table(
        &self,
        name: &str,
        sink: Arc<MemorySink>,
        schema: SchemaRef,
        mode: OutputMode,
    ) -> Result<()> {
        let _ = self.base.deregister_table(name);
        self.base
            .register_table(name, Arc::new(MemorySinkTable { sink, schema, mode }))?;
        Ok(())
    }

    /// Checks `late_rows` / `dead_letter`; returns the memory sink to create for a
    /// stream whose late rows go to a default dead letter (`<stream>_late`).
    fn dead_letter_of(
        &self,
        name: &str,
        watermark: Option<&crate::statement::Watermark>,
        options: &Options,
    ) -> Result<Option<String>> {
        let policy = options
            .get("late_rows")
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_else(|| "drop".into());
        match policy.as_str() {
            "drop" => {
                if options.contains_key("dead_letter") {
                    return plan_err!(
                        "CREATE STREAM {name}: dead_letter names where late rows go; it needs late_rows = 'dead_letter'"
                    );
                }
                return Ok(None);
            }
            "dead_letter" => {}
            other => {
                return plan_err!(
                    "CREATE STREAM {name}: late_rows = '{other}' is not accepted; use 'drop' (count them) or 'dead_letter' (count them and write them to a sink)"
                );
            }
        }
        if watermark.is_none() {
            return plan_err!(
                "CREATE STREAM {name}: late_rows = 'dead_letter' needs a watermark (WATERMARK FOR ts AS ts - INTERVAL '<n>' SECOND): rows are late only against one"
            );
        }
        match options.get("dead_letter") {
            Some(sink) => {
                let c = self.catalog.lock();
                match c.sinks.get(sink) {
                    Some(d) if !d.is_table => {
                        if let Some(other) = c
                            .streams
                            .values()
                            .find(|s| s.options.get("dead_letter") == Some(sink))
                        {
                            return plan_err!(
                                "CREATE STREAM {name}: sink '{sink}' is already the dead letter of stream {}",
                                other.name
                            );
                        }
                        Ok(None)
                    }
                    _ => plan_err!(
                        "CREATE STREAM {name}: no sink '{sink}' for its late rows; create it first with CREATE SINK {sink} WITH (connector = '...')"
                    ),
                }
            }
            None => {
                let sink = format!("{name}_late");
                self.check_free(&sink)?;
                Ok(Some(sink))
            }
        }
    }

    fn source_connectors(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .source_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    async fn create_derived_stream(
        &mut self,
        name: String,
        options: Options,
        query: String,
    ) -> Result<StatementResult> {
        self.check_free(&name)?;
        let mut rest = options.clone();
        let column = rest.remove("timestamp");
        let delay = rest
            .remove("watermark_delay")
            .map(|d| crate::duration::parse_duration(&d))
            .transpose()?;
        if let Some(key) = rest.keys().next() {
            return plan_err!(
                "CREATE STREAM {name} AS SELECT: unknown option '{key}'; accepted: timestamp \
                 (the event-time column), watermark_delay (e.g. '5 seconds')"
            );
        }
        if delay.is_some() && column.is_none() {
            return plan_err!(
                "CREATE STREAM {name} AS SELECT: watermark_delay needs timestamp = '<column>'"
            );
        }
        // Plan it once now so errors show at CREATE time, and to learn its schema.
        let probe = self.build_query_context(0, None, Trigger::ProcessingTime)?;
        let df = probe.ctx.session().sql(&query).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let watermark = match column {
            Some(c) => {
                let c = c.to_ascii_lowercase();
                match schema.field_with_name(&c) {
                    Ok(f) if matches!(f.data_type(), DataType::Timestamp(_, _)) => {}
                    Ok(f) => {
                        return plan_err!(
                            "CREATE STREAM {name}: timestamp column {c} is {}, it must be a TIMESTAMP",
                            f.data_type()
                        );
                    }
                    Err(_) => {
                        return plan_err!(
                            "CREATE STREAM {name}: timestamp column {c} is not in its SELECT list"
                        );
                    }
                }
                Some(crate::statement::Watermark {
                    column: c,
                    delay: delay.unwrap_or(Duration::ZERO),
                })
            }
            None => None,
        };
        self.base.register_table(
            name.as_str(),
            Arc::new(StreamPlaceholder {
                name: name.clone(),
                schema: schema.clone(),
            }),
        )?;
        self.catalog.lock().streams.insert(
            name.clone(),
            StreamDef {
                name: name.clone(),
                schema,
                watermark,
                options,
                kind: StreamKind::Derived { query },
            },
        );
        Ok(StatementResult::Done(format!("Stream '{name}' created")))
    }

    fn create_sink(&mut self, name: &str, options: Options, is_table: bool) -> Result<()> {
        self.check_free(name)?;
        let Some(connector) = options.get("connector").cloned() else {
            return plan_err!(
                "CREATE SINK {name} needs WITH (connector = '...'); available: {}",
                self.registry.sink_names().join(", ")
            );
        };
        let (sink, memory): (Arc<dyn Sink>, Option<Arc<MemorySink>>) =
            if connector.eq_ignore_ascii_case("memory") {
                let mut rest = options.clone();
                rest.remove("connector");
                if let Some(k) = rest.keys().next() {
                    return plan_err!("unknown option '{k}' for connector 'memory'; it takes none");
                }
                let m = MemorySink::new(name);
                (m.clone(), Some(m))
            } else {
                let mut sink_options = connector_options(&options);
                // `SET console_format` (the command's --format): how console sinks print.
                if connector.eq_ignore_ascii_case("console")
                    && let Some(f) = &self.settings.console_format
                {
                    sink_options
                        .entry("format".into())
                        .or_insert_with(|| f.clone());
                }
                (
                    self.registry
                        .sink(&connector)?
                        .create(name, &sink_options)?,
                    None,
                )
            };
        self.catalog.lock().sinks.insert(
            name.to_string(),
            SinkDef {
                name: name.to_string(),
                options,
                sink,
                memory,
                mode: self.settings.output_mode,
                schema: None,
                query: None,
                is_table,
            },
        );
        Ok(())
    }

    /// A query context whose session resolves stream names to this query's sources.
    /// `name` is the sink or table the query writes, the key of its offsets in an
    /// `offsets_store`.
    fn build_query_context(
        &self,
        id: u64,
        name: Option<&str>,
        trigger: Trigger,
    ) -> Result<QueryContext> {
        let cell = Arc::new(BatchTimeCell::default());
        let batch_time = batch_time_udf(Arc::clone(&cell));
        let schema = Arc::new(QuerySchema {
            batch_time: batch_time.clone(),
            catalog: Arc::clone(&self.catalog),
            registry: self.registry.clone(),
            ctx: OnceLock::new(),
            created: Mutex::new(HashMap::new()),
            read: Mutex::new(HashSet::new()),
            outputs: OperatorOutputs::default(),
            derived_explain: Mutex::new(Vec::new()),
            trigger,
            query_id: id,
            mode: self.settings.output_mode,
            checkpoint: self.settings.checkpoint_location.clone(),
            name: name.map(str::to_string),
        });
        let state = self.base.state();
        let for_list = Arc::clone(&schema);
        let list = replace_default_schema(&state, move |inner| {
            // QuerySchema needs the original default schema for static tables.
            Arc::new(QuerySchemaHandle {
                inner: for_list,
                base: inner,
            })
        })?;
        let state = SessionStateBuilder::new_from_existing(state)
            .with_catalog_list(list)
            .build();
        let session = SessionContext::new_with_state(state);
        session.register_udf(batch_time);
        let mut builder = StreamingContext::builder(self.settings.batch_interval)
            .with_session(session)
            .with_clock(Arc::clone(&self.clock))
            .with_exclusive(false)
            .with_trigger(trigger)
            // The sink's name keys the query's writes, so a restarted query rewrites
            // the same keys.
            .with_name(name.map_or_else(|| format!("query-{id}"), str::to_string));
        if let (Some(location), Some(name)) = (&self.settings.checkpoint_location, name) {
            builder = builder
                .with_checkpoint_location(checkpoint_dir(location, name)?)
                .with_checkpoint_interval(self.settings.checkpoint_interval);
        }
        // Queries writing a sink or table restart (from their checkpoint); a console
        // query has no checkpoint to restart from.
        if let (Some(policy), Some(_)) = (self.settings.restart, name) {
            builder = builder.with_restart(policy);
        }
        let ctx = builder.build()?;
        ctx.add_listener(cell);
        let metrics = Arc::new(QueryMetrics::default());
        ctx.add_listener(Arc::clone(&metrics) as Arc<dyn flumen_engine::StreamingListener>);
        if let Some(path) = &self.settings.progress_log {
            let query = name.map_or_else(|| format!("query-{id}"), str::to_string);
            ctx.add_listener(Arc::new(flumen_engine::ProgressLog::open(path, &query)?));
        }
        let _ = schema.ctx.set(ctx.clone());
        Ok(QueryContext {
            ctx,
            schema,
            metrics,
        })
    }

    /// Starts the query of a `CREATE SINK/TABLE ... AS`; if it cannot start, the
    /// sink or table the statement created is removed again.
    async fn start_query_or_forget(&mut self, sql: &str, name: &str) -> Result<u64> {
        match self.start_query(sql, Target::Sink(name.to_string())).await {
            Ok((id, _)) => Ok(id),
            Err(e) => {
                self.catalog.lock().sinks.remove(name);
                let _ = self.base.deregister_table(name);
                Err(e)
            }
        }
    }

    /// Plans and starts a query; its id and the schema of its rows.
    async fn start_query(&mut self, sql: &str, target: Target) -> Result<(u64, SchemaRef)> {
        let (sql, mut mode) = strip_emit(sql, self.settings.output_mode);
        let sql = self.rewrite_ksql(&sql)?;
        if let Target::Sink(name) = &target
            && self
                .catalog
                .lock()
                .sinks
                .get(name)
                .is_some_and(|s| s.is_table)
        {
            // A table holds the current result: the whole of it every batch.
            mode = OutputMode::Complete;
        }
        let id = self.next_query;
        let target_name = match &target {
            Target::Sink(name) => Some(name.as_str()),
            Target::Console(_) => None,
        };
        let qc = self.build_query_context(id, target_name, self.settings.trigger)?;
        let df = qc.ctx.session().sql(&sql).await?;
        let df = crate::hidden::drop_hidden_columns(df, &sql)?;
        let streams = qc.schema.read.lock().clone();
        if streams.is_empty() {
            return plan_err!("this query reads no stream; run it as an ordinary SELECT");
        }
        let planned = plan_query(
            &qc.ctx,
            df,
            &QueryScope {
                streams: &streams,
                watermarks: &self.watermarks(),
                mode,
                outputs: &qc.schema.outputs,
                derived: false,
            },
        )?;
        let schema = planned.stream.schema();
        let target_name = match target {
            Target::Sink(name) => {
                let (sink, memory, sink_mode) = {
                    let mut c = self.catalog.lock();
                    let Some(def) = c.sinks.get_mut(&name) else {
                        return plan_err!("no sink named '{name}'");
                    };
                    if let Some(q) = def.query
                        && self
                            .queries
                            .lock()
                            .get(&q)
                            .is_some_and(|q| q.ctx.state() == StreamingContextState::Active)
                    {
                        return plan_err!("sink '{name}' already has query {q} writing to it");
                    }
                    def.query = Some(id);
                    def.schema = Some(schema.clone());
                    if def.is_table {
                        def.mode = if planned.stateful {
                            OutputMode::Complete
                        } else {
                            OutputMode::Append
                        };
                    } else {
                        def.mode = mode;
                    }
                    // How the rows written are read back (memory sinks and tables): the
                    // newest batch when each holds the whole result, every row otherwise.
                    let read = match planned.emits {
                        flumen_engine::ops::Emits::WholeResult => OutputMode::Complete,
                        flumen_engine::ops::Emits::Appends => OutputMode::Append,
                        flumen_engine::ops::Emits::Changes { .. } => OutputMode::Update,
                    };
                    (Arc::clone(&def.sink), def.memory.clone(), read)
                };
                if let Some(memory) = memory {
                    self.register_memory_table(&name, memory, schema.clone(), sink_mode)?;
                }
                planned.stream.write_to(sink)?;
                name
            }
            Target::Console(tx) => {
                planned.stream.foreach_batch(move |t, df| {
                    let tx = tx.clone();
                    async move {
                        let batches = df.collect().await?;
                        let _ = tx.send((t, batches));
                        Ok(())
                    }
                })?;
                "console".into()
            }
        };
        qc.ctx.start().await?;
        self.next_query += 1;
        let info = QueryInfo {
            id,
            sql,
            target: target_name,
            ctx: qc.ctx,
            streams,
            explain: {
                let mut lines: Vec<String> = qc.schema.derived_explain.lock().drain(..).collect();
                lines.extend(planned.explain);
                lines
            },
            metrics: qc.metrics,
        };
        self.queries.lock().insert(id, info);
        Ok((id, schema))
    }

    async fn insert(&mut self, target: &str, sql: &str, query: &str) -> Result<StatementResult> {
        let kind = self.catalog.lock().kind_of(target);
        match kind {
            Some("sink") => {
                let (id, _) = self
                    .start_query(query, Target::Sink(target.to_string()))
                    .await?;
                Ok(StatementResult::Done(format!(
                    "Query {id} writes to sink '{target}'{}",
                    self.state_warnings(id)
                )))
            }
            Some("table") => {
                plan_err!("'{target}' is maintained by a query; it cannot be inserted into")
            }
            Some(_) => self.insert_into_stream(target, query).await,
            None => self.datafusion(sql).await,
        }
    }

    /// Rows into a memory stream: every query reading it gets them in its next batch.
    async fn insert_into_stream(&mut self, name: &str, query: &str) -> Result<StatementResult> {
        let (schema, memory) = {
            let c = self.catalog.lock();
            let def = &c.streams[name];
            let memory = matches!(&def.kind, StreamKind::Source { connector } if is_memory_connector(connector));
            (def.schema.clone(), memory)
        };
        if !memory {
            return plan_err!(
                "INSERT INTO {name}: only memory streams take rows from SQL; this one reads its connector"
            );
        }
        let rows_of = async { self.base.sql(query).await?.collect().await };
        let batches = rows_of.await.map_err(|e| {
            Error::Plan(format!(
                "INSERT INTO {name}: {}; nothing of this INSERT was accepted",
                e.find_root()
            ))
        })?;
        let mut rows = 0;
        let mut converted = Vec::new();
        for b in batches {
            if b.num_columns() != schema.fields().len() {
                return plan_err!(
                    "INSERT INTO {name}: {} values per row, the stream has {} columns",
                    b.num_columns(),
                    schema.fields().len()
                );
            }
            let cols = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| {
                    // Exactly or not at all: 'x' is not a BIGINT, 1.5 not an INT.
                    flumen_engine::exact::cast_exact(c, f.data_type()).map_err(|e| {
                        Error::Plan(format!(
                            "INSERT INTO {name}: column '{}': {}; nothing of this INSERT was accepted",
                            f.name(),
                            e.message
                        ))
                    })
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            let b = RecordBatch::try_new(schema.clone(), cols)?;
            rows += b.num_rows();
            converted.push(b);
        }
        let feeds: Vec<Arc<QueueSource>> = {
            let mut c = self.catalog.lock();
            let feeds = c.feeds.entry(name.to_string()).or_default();
            feeds.retain(|w| w.strong_count() > 0);
            feeds.iter().filter_map(|w| w.upgrade()).collect()
        };
        let live = feeds;
        let readers = self
            .queries
            .lock()
            .values()
            .filter(|q| q.streams.contains(name) && q.ctx.state() == StreamingContextState::Active)
            .count();
        if readers == 0 || live.is_empty() {
            return plan_err!(
                "no running query reads stream '{name}', so these rows would be lost; start one \
                 first (CREATE SINK ... AS SELECT ... FROM {name})"
            );
        }
        for q in &live {
            q.push(converted.clone())?;
        }
        Ok(StatementResult::Done(format!(
            "{rows} rows into stream '{name}' for the next batch"
        )))
    }

    async fn set(&mut self, key: &str, value: &str, sql: &str) -> Result<StatementResult> {
        match key {
            "batch_interval" => self.settings.batch_interval = parse_setting_duration(key, value)?,
            "output_mode" => self.settings.output_mode = OutputMode::parse(value)?,
            "checkpoint_location" => self.settings.checkpoint_location = Some(value.to_string()),
            "progress_log" => self.settings.progress_log = Some(value.to_string()),
            "checkpoint_interval" => {
                self.settings.checkpoint_interval = match value.trim().parse::<u64>() {
                    Ok(n) if (1..=100).contains(&n) => n,
                    _ => {
                        return plan_err!(
                            "checkpoint_interval '{value}': give a number of batches from 1 to 100 (state is snapshotted every that many batches)"
                        );
                    }
                }
            }
            "restart" => {
                self.settings.restart = match value.to_ascii_lowercase().as_str() {
                    "on-failure" | "on_failure" => Some(flumen_engine::RestartPolicy {
                        max_restarts: self.settings.restart_attempts,
                        delay: self.settings.restart_delay,
                    }),
                    "never" | "no" => None,
                    other => {
                        return plan_err!("unknown restart '{other}'; accepted: on-failure, never");
                    }
                }
            }
            "restart_attempts" => {
                self.settings.restart_attempts = match value.trim().parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => {
                        return plan_err!(
                            "restart_attempts '{value}': give the number of restarts allowed, from 1 to 1000"
                        );
                    }
                };
                if let Some(p) = &mut self.settings.restart {
                    p.max_restarts = self.settings.restart_attempts;
                }
            }
            "console_format" => {
                let f = value.to_ascii_lowercase();
                if !matches!(f.as_str(), "print" | "csv" | "json") {
                    return plan_err!(
                        "unknown console_format '{value}'; accepted: print, csv, json"
                    );
                }
                self.settings.console_format = Some(f);
            }
            "restart_delay" => {
                self.settings.restart_delay = parse_setting_duration(key, value)?;
                if let Some(p) = &mut self.settings.restart {
                    p.delay = self.settings.restart_delay;
                }
            }
            "trigger" => {
                self.settings.trigger = match value.to_ascii_lowercase().as_str() {
                    "available_now" | "availablenow" => Trigger::AvailableNow,
                    "processing_time" | "processingtime" => Trigger::ProcessingTime,
                    other => {
                        return plan_err!(
                            "unknown trigger '{other}'; accepted: available_now, processing_time"
                        );
                    }
                }
            }
            _ => return self.datafusion(sql).await,
        }
        Ok(StatementResult::Done(format!("{key} = {value}")))
    }

    fn show(&self, kind: ShowKind) -> Result<StatementResult> {
        let c = self.catalog.lock();
        let (names, cols): (Vec<&str>, Vec<Vec<String>>) = match kind {
            ShowKind::Streams => (
                vec!["name", "connector", "columns", "watermark"],
                c.streams
                    .values()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            match &s.kind {
                                StreamKind::Source { connector } => connector.clone(),
                                StreamKind::Derived { .. } => "derived".into(),
                            },
                            s.schema
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            s.watermark
                                .as_ref()
                                .map(|w| {
                                    format!(
                                        "{} - {}",
                                        w.column,
                                        flumen_engine::time::format_duration(w.delay)
                                    )
                                })
                                .unwrap_or_default(),
                        ]
                    })
                    .collect(),
            ),
            ShowKind::Sinks | ShowKind::Tables => (
                vec!["name", "connector", "mode", "query"],
                c.sinks
                    .values()
                    .filter(|s| s.is_table == (kind == ShowKind::Tables))
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.options.get("connector").cloned().unwrap_or_default(),
                            s.mode.to_string(),
                            s.query.map(|q| q.to_string()).unwrap_or_default(),
                        ]
                    })
                    .collect(),
            ),
            ShowKind::Queries => (
                vec![
                    "id",
                    "state",
                    "target",
                    "batches",
                    "last_input_rows",
                    "late_rows",
                    "rejected_rows",
                    "restarts",
                    "error",
                    "sql",
                ],
                self.queries()
                    .map(|q| {
                        // Totals since the start (the kept batches are only the last 1,000).
                        let m = q.metrics.snapshot();
                        let last = q.ctx.last_batches(1).pop();
                        let failure = q.ctx.failure();
                        vec![
                            q.id.to_string(),
                            if failure.is_some() {
                                "failed".to_string()
                            } else {
                                format!("{:?}", q.ctx.state()).to_lowercase()
                            },
                            q.target.clone(),
                            m.batches.to_string(),
                            last.map(|b| b.num_input_rows().to_string())
                                .unwrap_or_default(),
                            m.late_rows.to_string(),
                            m.rejected_rows.to_string(),
                            m.restarts.to_string(),
                            failure.map(|e| e.to_string()).unwrap_or_default(),
                            // One line, whatever the script's layout.
                            q.sql.split_whitespace().collect::<Vec<_>>().join(" "),
                        ]
                    })
                    .collect(),
            ),
        };
        string_table(&names, cols)
    }

    /// `SHOW PROGRESS [query]`: every query's newest batch, or one query's recent
    /// batches (by id or by the sink/table it writes).
    fn show_progress(&self, query: Option<&str>) -> Result<StatementResult> {
        let names = [
            "query",
            "target",
            "batch_id",
            "batch_time_ms",
            "input_rows",
            "processed_rows_per_s",
            "scheduling_delay_ms",
            "processing_ms",
            "total_delay_ms",
            "output_rows",
            "state_rows",
            "late_rows",
            "rejected_rows",
        ];
        let all: Vec<QueryInfo> = self.queries().collect();
        let chosen: Vec<&QueryInfo> = match query {
            None => all.iter().collect(),
            Some(q) => {
                let found: Vec<&QueryInfo> = all.iter().filter(|i| i.answers_to(q)).collect();
                if found.is_empty() {
                    return plan_err!(
                        "SHOW PROGRESS {q}: no such query; running: {}",
                        list_queries(&all)
                    );
                }
                found
            }
        };
        let mut rows = Vec::new();
        for q in chosen {
            let batches = q
                .ctx
                .last_batches(if query.is_some() { usize::MAX } else { 1 });
            for b in &batches {
                let p = b.progress(&q.target);
                let ms = |d: std::time::Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
                rows.push(vec![
                    q.id.to_string(),
                    q.target.clone(),
                    b.batch_id.to_string(),
                    b.batch_time.as_millis().to_string(),
                    b.num_input_rows().to_string(),
                    p["processedRowsPerSecond"].to_string(),
                    ms(b.scheduling_delay),
                    ms(b.processing_time),
                    ms(b.total_delay),
                    b.output_rows.to_string(),
                    b.state_rows.to_string(),
                    b.late_rows.to_string(),
                    b.rejected_rows.to_string(),
                ]);
            }
        }
        string_table(&names, rows)
    }

    async fn describe(&self, name: &str) -> Result<StatementResult> {
        let schema = {
            let c = self.catalog.lock();
            if let Some(s) = c.streams.get(name) {
                Some(s.schema.clone())
            } else if let Some(s) = c.sinks.get(name) {
                match &s.schema {
                    Some(schema) => Some(schema.clone()),
                    None => {
                        return plan_err!(
                            "sink '{name}' has no query writing to it yet, so no columns"
                        );
                    }
                }
            } else {
                None
            }
        };
        let schema = match schema {
            Some(s) => s,
            None => return self.datafusion(&format!("DESCRIBE {name}")).await,
        };
        let rows = schema
            .fields()
            .iter()
            .map(|f| {
                vec![
                    f.name().clone(),
                    f.data_type().to_string(),
                    if f.is_nullable() { "YES" } else { "NO" }.to_string(),
                ]
            })
            .collect();
        string_table(&["column_name", "data_type", "is_nullable"], rows)
    }

    async fn explain(&mut self, query: &str) -> Result<StatementResult> {
        if !self.reads_streams(query).await? {
            return self.datafusion(&format!("EXPLAIN {query}")).await;
        }
        let (query, mode) = strip_emit(query, self.settings.output_mode);
        let query = self.rewrite_ksql(&query)?;
        let qc = self.build_query_context(0, None, Trigger::ProcessingTime)?;
        let df = qc.ctx.session().sql(&query).await?;
        let df = crate::hidden::drop_hidden_columns(df, &query)?;
        let streams = qc.schema.read.lock().clone();
        let planned = plan_query(
            &qc.ctx,
            df.clone(),
            &QueryScope {
                streams: &streams,
                watermarks: &self.watermarks(),
                mode,
                outputs: &qc.schema.outputs,
                derived: false,
            },
        )?;
        let mut lines = vec![format!(
            "Streaming query: batch interval {}, output mode {mode}",
            flumen_engine::time::format_duration(self.settings.batch_interval)
        )];
        {
            let c = self.catalog.lock();
            let mut names: Vec<&String> = streams.iter().collect();
            names.sort();
            for s in names {
                if let Some(def) = c.streams.get(s) {
                    lines.push(format!(
                        "Source: {s} ({}){}",
                        match &def.kind {
                            StreamKind::Source { connector } => connector.clone(),
                            StreamKind::Derived { .. } => "derived stream".into(),
                        },
                        def.watermark
                            .as_ref()
                            .map(|w| format!(
                                ", watermark {} - {}",
                                w.column,
                                flumen_engine::time::format_duration(w.delay)
                            ))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        lines.extend(qc.schema.derived_explain.lock().drain(..));
        lines.extend(planned.explain);
        lines.push("Per-batch plan:".into());
        let plan = planned.stream.dataframe().clone().into_optimized_plan()?;
        lines.extend(
            plan.display_indent()
                .to_string()
                .lines()
                .map(|l| format!("  {}", crate::duration::readable_intervals(l))),
        );
        string_table(&["plan"], lines.into_iter().map(|l| vec![l]).collect())
    }

    async fn drop(
        &mut self,
        kind: ObjectKind,
        name: &str,
        if_exists: bool,
    ) -> Result<StatementResult> {
        let actual = self.catalog.lock().kind_of(name);
        match (kind, actual) {
            (ObjectKind::Table, None) => {
                return self
                    .datafusion(&format!(
                        "DROP TABLE {}{name}",
                        if if_exists { "IF EXISTS " } else { "" }
                    ))
                    .await;
            }
            (_, None) if if_exists => {
                return Ok(StatementResult::Done(format!(
                    "no {} '{name}'",
                    kind.as_str()
                )));
            }
            (_, None) => return plan_err!("no {} named '{name}'", kind.as_str()),
            (_, Some(k)) if k != kind.as_str() => {
                return plan_err!(
                    "'{name}' is a {k}, not a {}; use DROP {} {name}",
                    kind.as_str(),
                    k.to_uppercase()
                );
            }
            _ => {}
        }
        if kind == ObjectKind::Stream {
            let users: Vec<String> = self
                .queries
                .lock()
                .values()
                .filter(|q| {
                    q.streams.contains(name) && q.ctx.state() == StreamingContextState::Active
                })
                .map(|q| q.id.to_string())
                .collect();
            if !users.is_empty() {
                return plan_err!(
                    "stream '{name}' is read by running queries {}; STOP QUERY them first",
                    users.join(", ")
                );
            }
            self.catalog.lock().streams.remove(name);
        } else {
            let query = self.catalog.lock().sinks.remove(name).and_then(|s| s.query);
            if let Some(q) = query {
                self.stop_query(q, true).await?;
            }
        }
        let _ = self.base.deregister_table(name);
        Ok(StatementResult::Done(format!(
            "{} '{name}' dropped",
            capitalize(kind.as_str())
        )))
    }

    /// With a manual clock: run the next `n` batches of every running query.
    async fn advance(&mut self, n: u64) -> Result<StatementResult> {
        let Some(clock) = self.clock.as_manual().cloned() else {
            return lifecycle_err!(
                "ADVANCE needs the manual clock (tests); this session runs on the system clock"
            );
        };
        let queries: Vec<QueryInfo> = self.queries().collect();
        let step = queries
            .iter()
            .filter(|q| q.ctx.state() == StreamingContextState::Active)
            .map(|q| q.ctx.batch_interval())
            .min()
            .unwrap_or(self.settings.batch_interval);
        for _ in 0..n {
            clock.advance(step);
            let now = clock.now().as_millis();
            for q in &queries {
                if q.ctx.state() != StreamingContextState::Active {
                    continue;
                }
                let i = q.ctx.batch_interval().as_millis() as i64;
                let due = Time::from_millis(now - now.rem_euclid(i));
                if q.ctx.started_at().is_some_and(|s| due > s) {
                    q.ctx
                        .await_batch(due)
                        .await
                        .map_err(|e| Error::Plan(format!("query {}: {e}", q.id)))?;
                }
            }
        }
        Ok(StatementResult::Done(format!("advanced {n} batches")))
    }
}

struct QueryContext {
    ctx: StreamingContext,
    schema: Arc<QuerySchema>,
    metrics: Arc<QueryMetrics>,
}

/// `schema` plus the `_batch_time` column every source stream has.
fn with_batch_time(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        BATCH_TIME_COLUMN,
        DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
        false,
    ));
    Arc::new(Schema::new(fields))
}

/// Event-time columns with their watermark delay, keyed `stream.column`.
fn watermarks_of(catalog: &Catalog) -> HashMap<String, Duration> {
    catalog
        .streams
        .values()
        .filter_map(|s| {
            s.watermark
                .as_ref()
                .map(|w| (format!("{}.{}", s.name, w.column), w.delay))
        })
        .collect()
}

fn is_memory_connector(c: &str) -> bool {
    c.eq_ignore_ascii_case("memory") || c.eq_ignore_ascii_case("queue")
}

/// Options of a stream that Flumen handles itself, not its connector.
const STREAM_OPTIONS: [&str; 4] = [
    "late_rows",
    "dead_letter",
    "max_records_per_batch",
    "backpressure",
];

/// A source stream's `max_records_per_batch` and `backpressure`.
fn rate_options(name: &str, options: &Options) -> Result<(Option<u64>, bool)> {
    let what = format!("stream {name}");
    let opts = connector_options(options);
    Ok((
        flumen_engine::registry::positive_option(&what, &opts, "max_records_per_batch")?,
        bool_option(&what, &opts, "backpressure", false)?,
    ))
}

/// A source stream's options minus Flumen's own.
fn source_options(options: &Options) -> ConnectorOptions {
    options
        .iter()
        .filter(|(k, _)| !STREAM_OPTIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// [`source_options`], plus the directory of a receiver's write-ahead log
/// (`wal = 'true'`) under the checkpoint location, when the user gave none.
fn receiver_options(name: &str, options: &Options, checkpoint: Option<&str>) -> ConnectorOptions {
    let mut out = source_options(options);
    if out
        .get("wal")
        .is_some_and(|w| w.eq_ignore_ascii_case("true"))
        && !out.contains_key("wal_dir")
        && let Some(dir) = checkpoint
        && is_local(dir)
    {
        let dir = dir.strip_prefix("file://").unwrap_or(dir);
        out.insert(
            "wal_dir".into(),
            format!("{}/sources/{name}/wal", dir.trim_end_matches('/')),
        );
    }
    out
}

/// Where the query writing `name` keeps its checkpoint under `checkpoint_location`
/// (a local directory or an object-store URL).
fn checkpoint_dir(location: &str, name: &str) -> Result<CheckpointLocation> {
    Ok(CheckpointLocation::parse(location)?
        .child("queries")
        .child(name))
}

/// Whether `location` is a local directory (a receiver's write-ahead log can live
/// under it).
fn is_local(location: &str) -> bool {
    matches!(location.split_once("://"), None | Some(("file", _)))
}

fn connector_options(options: &Options) -> ConnectorOptions {
    options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn plan_reads(plan: &LogicalPlan, streams: &HashSet<String>) -> bool {
    if reads_stream(plan, streams) {
        return true;
    }
    // Subqueries too.
    let mut found = false;
    let _ = plan.apply_subqueries(|sub| {
        found |= plan_reads(sub, streams);
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// ksqlDB's `EMIT CHANGES` (update) and `EMIT FINAL` (append) at the end of a query.
fn strip_emit(sql: &str, default: OutputMode) -> (String, OutputMode) {
    let trimmed = sql.trim().trim_end_matches(';').trim_end();
    let upper = trimmed.to_ascii_uppercase();
    for (suffix, mode) in [
        ("EMIT CHANGES", OutputMode::Update),
        ("EMIT FINAL", OutputMode::Append),
    ] {
        if let Some(stripped) = upper.strip_suffix(suffix)
            && stripped.ends_with(char::is_whitespace)
        {
            return (trimmed[..stripped.len()].trim_end().to_string(), mode);
        }
    }
    (trimmed.to_string(), default)
}

fn string_table(names: &[&str], rows: Vec<Vec<String>>) -> Result<StatementResult> {
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let cols: Vec<ArrayRef> = (0..names.len())
        .map(|i| {
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|r| r.get(i).cloned().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(StatementResult::Rows {
        schema,
        batches: vec![batch],
    })
}

/// Resolves stream names, inside one query, to that query's own sources (created on
/// first use) and derived streams (planned on first use); other names go to the
/// session's tables.
#[derive(Debug)]
struct QuerySchema {
    /// `flumen_batch_time()` of this query.
    batch_time: ScalarUDF,
    catalog: Arc<Mutex<Catalog>>,
    registry: ConnectorRegistry,
    ctx: OnceLock<StreamingContext>,
    created: Mutex<HashMap<String, Arc<dyn TableProvider>>>,
    /// Streams this query reads.
    read: Mutex<HashSet<String>>,
    /// The stateful operators planned into this query's context so far.
    outputs: OperatorOutputs,
    /// EXPLAIN lines of the derived streams planned into this query.
    derived_explain: Mutex<Vec<String>>,
    /// When the query's batches run.
    trigger: Trigger,
    /// The query's id (a socket consumer's name when it writes no sink).
    query_id: u64,
    mode: OutputMode,
    /// `checkpoint_location` when the query started (receivers' write-ahead logs).
    checkpoint: Option<String>,
    /// The sink or table the query writes, if any.
    name: Option<String>,
}

#[derive(Debug)]
struct QuerySchemaHandle {
    inner: Arc<QuerySchema>,
    base: Option<Arc<dyn SchemaProvider>>,
}

impl QuerySchema {
    /// For a stream with `late_rows = 'dead_letter'`: its late rows leave the query
    /// where the stream enters it, for the dead-letter sink.
    fn with_dead_letter(
        &self,
        ctx: &StreamingContext,
        def: &StreamDef,
        stream: flumen_engine::Stream,
    ) -> Result<flumen_engine::Stream> {
        let dead = def
            .options
            .get("late_rows")
            .is_some_and(|p| p.eq_ignore_ascii_case("dead_letter"));
        let (true, Some(w)) = (dead, def.watermark.as_ref()) else {
            return Ok(stream);
        };
        let sink_name = def
            .options
            .get("dead_letter")
            .cloned()
            .unwrap_or_else(|| format!("{}_late", def.name));
        let Some(sink) = self
            .catalog
            .lock()
            .sinks
            .get(&sink_name)
            .map(|d| Arc::clone(&d.sink))
        else {
            return plan_err!(
                "stream {}: its dead-letter sink '{sink_name}' was dropped; create it again with CREATE SINK",
                def.name
            );
        };
        let index = def.schema.index_of(&w.column)?;
        let op = flumen_engine::ops::LateRowsExec::try_new(
            &def.name,
            def.schema.clone(),
            index,
            w.delay,
            sink,
        )?;
        stream.with_operator(Box::new(op), ctx.batch_interval())
    }

    /// `<stream>_errors` read by a query: the records `<stream>` rejects, as a stream
    /// (so that bad records can be archived by any sink). Outside queries the same
    /// name is the dead-letter table, read with an ordinary SELECT.
    async fn resolve_errors(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(of) = name.strip_suffix("_errors") else {
            return Ok(None);
        };
        let def = self.catalog.lock().streams.get(of).cloned();
        let Some(def) = def else {
            return Ok(None);
        };
        let dead_letter = def
            .options
            .get("on_error")
            .is_some_and(|p| p.eq_ignore_ascii_case("dead_letter"));
        if !dead_letter || !matches!(def.kind, StreamKind::Source { .. }) {
            return Ok(None);
        }
        // The source itself runs in this query (once, however many names read it).
        if self.resolve(of).await?.is_none() {
            return Ok(None);
        }
        let Some(ctx) = self.ctx.get() else {
            return Err(Error::Internal("query context not set".into()));
        };
        let stream = ctx.rejected_stream(of)?;
        let provider = match stream.dataframe().logical_plan() {
            LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)?,
            other => {
                return Err(Error::Internal(format!(
                    "an errors stream's plan should be a scan, got {}",
                    other.display()
                )));
            }
        };
        let mut columns: Vec<datafusion::logical_expr::Expr> =
            flumen_engine::source::rejected_schema()
                .fields()
                .iter()
                .map(|f| {
                    datafusion::prelude::col(datafusion::common::Column::new(Some(name), f.name()))
                })
                .collect();
        columns.push(self.batch_time.call(vec![]).alias(BATCH_TIME_COLUMN));
        let plan = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?
            .project(columns)?
            .build()?;
        let provider: Arc<dyn TableProvider> = Arc::new(ViewTable::new(plan, None));
        self.read.lock().insert(name.to_string());
        self.created
            .lock()
            .insert(name.to_string(), Arc::clone(&provider));
        Ok(Some(provider))
    }

    async fn resolve(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.created.lock().get(name) {
            return Ok(Some(Arc::clone(t)));
        }
        let def = self.catalog.lock().streams.get(name).cloned();
        let Some(def) = def else {
            return Box::pin(self.resolve_errors(name)).await;
        };
        let Some(ctx) = self.ctx.get() else {
            return Err(Error::Internal("query context not set".into()));
        };
        let provider: Arc<dyn TableProvider> = match &def.kind {
            StreamKind::Source { connector } => {
                let stream = if is_memory_connector(connector) {
                    // From SQL, a batch takes every row inserted since the last one,
                    // unless one_at_a_time = 'true' (then one INSERT per batch).
                    let one = bool_option(
                        connector,
                        &source_options(&def.options),
                        "one_at_a_time",
                        false,
                    )?;
                    let queue = QueueSource::new(name, def.schema.clone(), one);
                    self.catalog
                        .lock()
                        .feeds
                        .entry(name.to_string())
                        .or_default()
                        .push(Arc::downgrade(&queue));
                    ctx.source(queue)?
                } else {
                    let checkpoint = self.checkpoint.clone();
                    let mut options = receiver_options(name, &def.options, checkpoint.as_deref());
                    // Queries over one socket stream share its receiver, each reading
                    // every line from its own position, kept under its sink's name.
                    if connector == "socket" && !options.contains_key("consumer") {
                        options.insert(
                            "consumer".into(),
                            self.name
                                .clone()
                                .unwrap_or_else(|| format!("query-{}", self.query_id)),
                        );
                    }
                    // Under available-now a files stream reads what the folder holds
                    // (Spark's availableNow), unless told otherwise.
                    if connector == "files"
                        && self.trigger == Trigger::AvailableNow
                        && !options.contains_key("include_existing")
                    {
                        options.insert("include_existing".into(), "true".into());
                    }
                    // Offsets kept in a database are keyed by the query's sink.
                    if options.contains_key("offsets_store")
                        && !options.contains_key("offsets_query")
                        && let Some(query) = &self.name
                    {
                        options.insert("offsets_query".into(), query.clone());
                    }
                    let source = self.registry.source(connector)?.create(
                        name,
                        def.schema.clone(),
                        &options,
                    )?;
                    let errors = def
                        .options
                        .get("on_error")
                        .is_some_and(|p| p.eq_ignore_ascii_case("dead_letter"))
                        .then(|| {
                            self.catalog
                                .lock()
                                .sinks
                                .get(&format!("{name}_errors"))
                                .map(|d| Arc::clone(&d.sink))
                        })
                        .flatten();
                    let (max_records_per_batch, backpressure) = rate_options(name, &def.options)?;
                    ctx.source_with(
                        source,
                        SourceOptions {
                            dead_letter: errors,
                            max_records_per_batch,
                            backpressure,
                        },
                    )?
                };
                let stream = self.with_dead_letter(ctx, &def, stream)?;
                // The slot's table scanned under the stream's name (so the planner
                // sees which streams a plan reads), plus `_batch_time`.
                let provider = match stream.dataframe().logical_plan() {
                    LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)?,
                    other => {
                        return Err(Error::Internal(format!(
                            "a source stream's plan should be a scan, got {}",
                            other.display()
                        )));
                    }
                };
                let mut columns: Vec<datafusion::logical_expr::Expr> = def
                    .schema
                    .fields()
                    .iter()
                    .map(|f| {
                        datafusion::prelude::col(datafusion::common::Column::new(
                            Some(name),
                            f.name(),
                        ))
                    })
                    .collect();
                columns.push(self.batch_time.call(vec![]).alias(BATCH_TIME_COLUMN));
                let plan = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?
                    .project(columns)?
                    .build()?;
                Arc::new(ViewTable::new(plan, None))
            }
            StreamKind::Derived { query } => {
                let df = ctx.session().sql(query).await?;
                let streams = self.read.lock().clone();
                let watermarks = watermarks_of(&self.catalog.lock());
                let planned = plan_query(
                    ctx,
                    df,
                    &QueryScope {
                        streams: &streams,
                        watermarks: &watermarks,
                        mode: self.mode,
                        outputs: &self.outputs,
                        derived: true,
                    },
                )?;
                self.derived_explain.lock().extend(
                    planned
                        .explain
                        .into_iter()
                        .filter(|l| !l.starts_with("Stateless")),
                );
                planned.stream.dataframe().clone().into_view()
            }
        };
        self.read.lock().insert(name.to_string());
        self.created
            .lock()
            .insert(name.to_string(), Arc::clone(&provider));
        Ok(Some(provider))
    }
}

#[async_trait]
impl SchemaProvider for QuerySchemaHandle {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.catalog.lock().streams.keys().cloned().collect();
        if let Some(b) = &self.base {
            names.extend(b.table_names());
        }
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        match self.inner.resolve(name).await {
            Ok(Some(t)) => return Ok(Some(t)),
            Ok(None) => {}
            Err(e) => return Err(DataFusionError::External(Box::new(e))),
        }
        match &self.base {
            Some(b) => b.table(name).await,
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.catalog.lock().streams.contains_key(name)
            || self.base.as_ref().is_some_and(|b| b.table_exist(name))
    }
}
