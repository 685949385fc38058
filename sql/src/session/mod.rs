//! [`FlumenSession`]: executes SQL scripts — Flumen's statements, and DataFusion's for
//! everything else. This file dispatches; each kind of statement lives in its own
//! module: `ddl` (CREATE, DROP), `queries` (the running queries), `show` (SHOW,
//! DESCRIBE, EXPLAIN), `insert`, `settings`, and `resolve` (stream names inside one
//! query).

mod ddl;
mod insert;
mod queries;
mod resolve;
mod settings;
mod show;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use flumen_engine::{Clock, ConnectorRegistry, Result, SystemClock, Time, plan_err};
use tokio::sync::mpsc;

pub use queries::{QueryInfo, QueryRegistry, SessionView, list_queries};
pub use settings::{ConsoleFormat, Setting, Settings};

use crate::catalog::Catalog;
use crate::query::ParsedQuery;
use crate::statement::{Options, Statement, parse_statement, split_statements};
use queries::Target;

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

/// Executes Flumen SQL.
pub struct FlumenSession {
    base: SessionContext,
    registry: ConnectorRegistry,
    clock: Arc<dyn Clock>,
    settings: Settings,
    catalog: Catalog,
    queries: QueryRegistry,
}

impl Default for FlumenSession {
    fn default() -> Self {
        Self::new(ConnectorRegistry::with_builtins(), Arc::new(SystemClock))
    }
}

impl FlumenSession {
    /// A session with the connectors of `registry`, on `clock`.
    pub fn new(registry: ConnectorRegistry, clock: Arc<dyn Clock>) -> Self {
        let base =
            SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        // `date_format` is Flumen's (Flink's patterns), not DataFusion's alias of to_char.
        base.deregister_udf("date_format");
        for f in crate::functions::udfs() {
            base.register_udf(f.as_ref().clone());
        }
        Self {
            base,
            registry,
            clock,
            settings: Settings::default(),
            catalog: Catalog::default(),
            queries: QueryRegistry::default(),
        }
    }

    /// A view of the session's queries, streams and sinks for another task.
    pub fn view(&self) -> SessionView {
        SessionView {
            catalog: self.catalog.clone(),
            queries: self.queries.clone(),
        }
    }

    /// The DataFusion session holding static tables.
    pub fn session(&self) -> &SessionContext {
        &self.base
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes a setting for the queries started from now on (what `SET` does, typed).
    pub fn set(&mut self, setting: Setting) -> Result<()> {
        self.settings.apply(setting)
    }

    /// Every query the session started, by id (cheap clones: the contexts are shared).
    pub fn queries(&self) -> impl Iterator<Item = QueryInfo> + use<> {
        self.queries.all().into_iter()
    }

    /// How many queries are running.
    pub fn active_queries(&self) -> usize {
        self.queries.active()
    }

    /// Names of streams, sinks and tables, and of their columns (for completion).
    pub fn object_names(&self) -> Vec<String> {
        let streams = self.catalog.streams();
        let sinks = self.catalog.sinks();
        let mut names: Vec<String> = streams
            .iter()
            .map(|s| s.name.clone())
            .chain(sinks.iter().map(|s| s.name.clone()))
            .collect();
        let columns = streams
            .iter()
            .map(|s| s.schema.clone())
            .chain(sinks.iter().filter_map(|s| s.schema.clone()));
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
                    return Err(e.context(format!("line {}", st.line)));
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
                            self.queries.state_warnings(id)
                        )))
                    }
                    None => Ok(StatementResult::Done(format!("Sink '{name}' created"))),
                }
            }
            Statement::CreateTableAs {
                name,
                query,
                or_replace,
            } => {
                if !self.reads_streams(&query) {
                    return self
                        .create_table_from_tables(&name, &query, or_replace)
                        .await;
                }
                let mut options = Options::new();
                options.insert("connector".into(), "memory".into());
                self.create_sink(&name, options, true)?;
                let id = self.start_query_or_forget(&query, &name).await?;
                Ok(StatementResult::Done(format!(
                    "Table '{name}' created; query {id} maintains it{}",
                    self.queries.state_warnings(id)
                )))
            }
            Statement::CreateView {
                name,
                query,
                or_replace,
                sql,
            } => {
                if !self.reads_streams(&query) {
                    return self.datafusion(&sql).await;
                }
                // A view over streams (Flink's `CREATE VIEW person AS SELECT ... FROM
                // datagen WHERE event_type = 0`) is a derived stream: every query that
                // reads it reads its query's rows.
                if or_replace {
                    return plan_err!(
                        "CREATE OR REPLACE VIEW {name}: a view over streams is a stream; drop \
                         it (DROP STREAM {name}) and create it again"
                    );
                }
                self.create_derived_stream(name.clone(), Options::new(), query)
                    .await?;
                Ok(StatementResult::Done(format!(
                    "View '{name}' created (a stream: it reads streams)"
                )))
            }
            Statement::InsertInto { target, sql, query } => {
                self.insert(&target, &sql, &query).await
            }
            Statement::Set { key, value, sql } => self.set_sql(&key, &value, &sql).await,
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
            Statement::Query(query) => {
                if self.reads_streams(&query) {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let (id, schema) = self.start_query(&query, Target::Console(tx)).await?;
                    Ok(StatementResult::Continuous {
                        query_id: id,
                        schema,
                        batches: rx,
                    })
                } else {
                    self.batch_query(&query).await
                }
            }
            Statement::CreateFunction(definition) => self.create_function(definition).await,
            Statement::DropFunction { name, if_exists } => self.drop_function(&name, if_exists),
            Statement::Other(sql) => self.datafusion(&sql).await,
        }
    }

    /// `CREATE [OR REPLACE] FUNCTION`: the body planned by DataFusion over the
    /// parameters' types, registered for the queries started from now on (a running
    /// query keeps the functions it started with).
    async fn create_function(
        &mut self,
        definition: crate::sql_function::Definition,
    ) -> Result<StatementResult> {
        use datafusion::logical_expr::{DdlStatement, LogicalPlan};
        let name = definition.name.clone();
        let state = self.base.state();
        match state.scalar_functions().get(&name) {
            Some(f) if !f.inner().is::<crate::sql_function::SqlFunction>() => {
                return plan_err!("'{name}' is a built-in function: give yours another name");
            }
            Some(_) if definition.if_not_exists && !definition.or_replace => {
                return Ok(StatementResult::Done(format!(
                    "Function '{name}' exists: kept"
                )));
            }
            Some(_) if !definition.or_replace => {
                return plan_err!(
                    "function '{name}' already exists (CREATE OR REPLACE FUNCTION replaces it)"
                );
            }
            _ => {}
        }
        if state.aggregate_functions().contains_key(&name)
            || state.window_functions().contains_key(&name)
        {
            return plan_err!("'{name}' is a built-in function: give yours another name");
        }
        let plan = state
            .statement_to_plan(DfStatement::Statement(definition.statement))
            .await
            .map_err(|e| flumen_engine::Error::Plan(format!("function '{name}': {e}")))?;
        let LogicalPlan::Ddl(DdlStatement::CreateFunction(f)) = plan else {
            return plan_err!("function '{name}': not a function definition");
        };
        let params = f
            .args
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.data_type)
            .collect();
        let (Some(returns), Some(body)) = (f.return_type, f.params.function_body) else {
            return plan_err!("function '{name}': RETURNS <type> and a body are needed");
        };
        let function = crate::sql_function::SqlFunction::try_new(
            &state,
            &name,
            params,
            returns,
            body,
            definition.text,
        )?;
        self.base
            .register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(function));
        Ok(StatementResult::Done(format!("Function '{name}' created")))
    }

    /// `DROP FUNCTION [IF EXISTS] name`: a function `CREATE FUNCTION` defined.
    fn drop_function(&mut self, name: &str, if_exists: bool) -> Result<StatementResult> {
        let state = self.base.state();
        match state.scalar_functions().get(name) {
            Some(f) if f.inner().is::<crate::sql_function::SqlFunction>() => {
                self.base.deregister_udf(name);
                Ok(StatementResult::Done(format!("Function '{name}' dropped")))
            }
            Some(_) => plan_err!("'{name}' is a built-in function: it cannot be dropped"),
            None if state.aggregate_functions().contains_key(name)
                || state.window_functions().contains_key(name) =>
            {
                plan_err!("'{name}' is a built-in function: it cannot be dropped")
            }
            None if if_exists => Ok(StatementResult::Done(String::new())),
            None => plan_err!("function '{name}' does not exist"),
        }
    }

    pub(super) async fn datafusion(&self, sql: &str) -> Result<StatementResult> {
        let df = self.base.sql(sql).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        if schema.fields().is_empty() {
            return Ok(StatementResult::Done("OK".into()));
        }
        Ok(StatementResult::Rows { schema, batches })
    }

    /// `CREATE [OR REPLACE] TABLE name AS` a query over tables only: DataFusion runs
    /// the query as bound (Flink's window forms rewritten, hopping and session windows
    /// expanded: `batch_windows.rs`), so a batch query takes the same text as a
    /// streaming one; its rows become an in-memory table.
    async fn create_table_from_tables(
        &self,
        name: &str,
        query: &ParsedQuery,
        or_replace: bool,
    ) -> Result<StatementResult> {
        // The name as parsed (lower-cased unless quoted), not parsed again.
        let table = datafusion::common::TableReference::bare(name);
        if self.base.table_exist(table.clone())? {
            if !or_replace {
                return plan_err!("table '{name}' already exists");
            }
            self.base.deregister_table(table.clone())?;
        }
        let df = plan_batch_dataframe(&self.base, self.bind_batch(query)?).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        let rows = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        self.base.register_table(table, Arc::new(rows))?;
        Ok(StatementResult::Done("OK".into()))
    }

    /// A query over tables only: DataFusion runs it.
    async fn batch_query(&self, query: &ParsedQuery) -> Result<StatementResult> {
        if query.emit.is_some() {
            return plan_err!(
                "EMIT CHANGES / EMIT FINAL apply to a query over streams; this one reads only tables"
            );
        }
        let df = plan_batch_dataframe(&self.base, self.bind_batch(query)?).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok(StatementResult::Rows { schema, batches })
    }

    /// [`Self::bind`] for a batch query over tables, which has no batch time: Flink's
    /// `PROCTIME()` (a stream's batch time) is refused with that reason.
    pub(super) fn bind_batch(&self, query: &ParsedQuery) -> Result<DfStatement> {
        if crate::flink::calls_proctime(&query.query) {
            return plan_err!(
                "PROCTIME() is the time of the micro-batch a row arrives in (_batch_time): it \
                 exists in a query over streams, and this one reads only tables"
            );
        }
        self.bind(query)
    }

    /// The statement DataFusion plans for `query`: the ksqlDB window on the event
    /// time of its stream, the window table functions rewritten.
    pub(super) fn bind(&self, query: &ParsedQuery) -> Result<DfStatement> {
        if !query.lookups.is_empty() {
            let streams = self.catalog.stream_names();
            let view_defines = |relation: &str, column: &str| {
                self.catalog
                    .stream(relation)
                    .is_some_and(|def| match &def.kind {
                        crate::catalog::StreamKind::Derived { query } => {
                            crate::lookup::selects_proctime(&query.query, column)
                        }
                        crate::catalog::StreamKind::Source { .. } => false,
                    })
            };
            crate::lookup::check(
                &query.query,
                &query.lookups,
                |r| streams.contains(r),
                view_defines,
            )?;
        }
        query.bind(|stream| self.catalog.event_time(stream))
    }

    /// Whether `query` reads one of the session's streams: a relation of its bound
    /// tree names one (no planning: the query is planned once, by `plan_streaming` or
    /// by DataFusion as a batch query).
    pub(super) fn reads_streams(&self, query: &ParsedQuery) -> bool {
        // The tree only (not `Self::bind`'s checks): a query over streams that a check
        // refuses must be refused as one, not handed to DataFusion as text.
        let Ok(DfStatement::Statement(statement)) =
            query.bind(|stream| self.catalog.event_time(stream))
        else {
            // Not a query Flumen can rewrite: as an ordinary one, DataFusion reports it.
            return false;
        };
        let streams = self.catalog.stream_names();
        crate::query::relations_read(&statement)
            .iter()
            .any(|name| streams.contains(name))
    }

    /// `SET key = 'value'`: one of Flumen's settings, or DataFusion's.
    async fn set_sql(&mut self, key: &str, value: &str, sql: &str) -> Result<StatementResult> {
        match Setting::parse(key, value)? {
            Some(setting) => {
                self.settings.apply(setting)?;
                Ok(StatementResult::Done(format!("{key} = {value}")))
            }
            None => {
                // DataFusion's keys are `datafusion.<section>.<name>`: written as a
                // dotted name the statement goes to DataFusion whole (which names a
                // misspelled one) and only a quoted one gets here; any other key is
                // misspelled or misplaced.
                let known: Vec<String> = self
                    .session()
                    .state()
                    .config_options()
                    .entries()
                    .into_iter()
                    .map(|e| e.key)
                    .collect();
                if !known.iter().any(|k| k == key) {
                    return Err(settings::unknown_setting(
                        key,
                        known.iter().map(String::as_str),
                    ));
                }
                self.datafusion(sql).await
            }
        }
    }
}

/// `statement` planned by `session` (DataFusion's `SessionContext::sql` after parsing).
/// A query over tables only, planned with its hopping and session windows expanded
/// (`batch_windows.rs`).
pub(crate) async fn plan_batch_dataframe(
    session: &SessionContext,
    statement: DfStatement,
) -> Result<DataFrame> {
    let plan = session.state().statement_to_plan(statement).await?;
    let plan = crate::sql_function::inline(plan)?;
    let plan = crate::batch_windows::expand(plan)?;
    Ok(session.execute_logical_plan(plan).await?)
}

pub(crate) async fn plan_dataframe(
    session: &SessionContext,
    statement: DfStatement,
) -> Result<DataFrame> {
    let plan = session.state().statement_to_plan(statement).await?;
    let plan = crate::sql_function::inline(plan)?;
    Ok(session.execute_logical_plan(plan).await?)
}
