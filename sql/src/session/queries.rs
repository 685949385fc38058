//! The query lifecycle: a [`QueryRegistry`] owns the running queries (and is what the
//! web UI reads); the session plans, starts, stops and advances them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::{
    Clock, Error, QueryMetrics, Result, StreamingContext, StreamingContextState, Time,
    lifecycle_err, plan_err,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::FlumenSession;
use super::resolve::QueryContext;
use crate::catalog::{Catalog, StreamKind};
use crate::planner::{OutputMode, QueryScope, plan_query};
use crate::query::ParsedQuery;
use datafusion::sql::sqlparser::ast;

/// A query the session started.
#[derive(Clone)]
pub struct QueryInfo {
    pub id: u64,
    pub sql: String,
    /// The sink or table it writes to, or `console` for a bare SELECT.
    pub target: String,
    /// How it emits: `EMIT CHANGES`/`FINAL`, the session's `output_mode`, or complete
    /// for a table.
    pub mode: OutputMode,
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

    fn is_active(&self) -> bool {
        self.ctx.state() == StreamingContextState::Active
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

/// Every query a session started, running or stopped, by id. A cheap handle: clones
/// share the queries.
#[derive(Clone, Default)]
pub struct QueryRegistry {
    queries: Arc<Mutex<BTreeMap<u64, QueryInfo>>>,
}

impl QueryRegistry {
    /// The id the next query started gets (ids count the queries that started).
    fn next_id(&self) -> u64 {
        self.queries
            .lock()
            .keys()
            .next_back()
            .map_or(1, |id| id + 1)
    }

    fn insert(&self, info: QueryInfo) {
        self.queries.lock().insert(info.id, info);
    }

    /// Every query, by id (cheap clones: the contexts are shared).
    pub fn all(&self) -> Vec<QueryInfo> {
        self.queries.lock().values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<QueryInfo> {
        self.queries.lock().get(&id).cloned()
    }

    /// One query, by id or by the sink/table it writes.
    pub fn find(&self, key: &str) -> Option<QueryInfo> {
        self.queries
            .lock()
            .values()
            .find(|q| q.answers_to(key))
            .cloned()
    }

    /// How many queries are running.
    pub fn active(&self) -> usize {
        self.queries
            .lock()
            .values()
            .filter(|q| q.is_active())
            .count()
    }

    /// Whether query `id` is running.
    pub fn is_active(&self, id: u64) -> bool {
        self.queries
            .lock()
            .get(&id)
            .is_some_and(QueryInfo::is_active)
    }

    /// The running queries that read `stream`.
    pub fn readers_of(&self, stream: &str) -> Vec<u64> {
        self.queries
            .lock()
            .values()
            .filter(|q| q.streams.contains(stream) && q.is_active())
            .map(|q| q.id)
            .collect()
    }

    /// EXPLAIN's warnings about state that grows without bound, for the message that
    /// says query `id` started (one `warning: ...` line each).
    pub fn state_warnings(&self, id: u64) -> String {
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
}

/// What a session holds — its queries, streams and sinks — readable from another task
/// while the session goes on (the web UI's view). Cheap to clone.
#[derive(Clone)]
pub struct SessionView {
    pub(super) catalog: Catalog,
    pub(super) queries: QueryRegistry,
}

impl SessionView {
    /// Every query the session started, running or stopped, by id.
    pub fn queries(&self) -> Vec<QueryInfo> {
        self.queries.all()
    }

    /// One query, by id or by the sink/table it writes.
    pub fn query(&self, key: &str) -> Option<QueryInfo> {
        self.queries.find(key)
    }

    /// Streams: name, kind (`source` with its connector, or `derived`), columns.
    pub fn streams(&self) -> Vec<(String, String, SchemaRef)> {
        self.catalog
            .streams()
            .into_iter()
            .map(|s| {
                let kind = match &s.kind {
                    StreamKind::Source { connector } => format!("source ({connector})"),
                    StreamKind::Derived { .. } => "derived".to_string(),
                };
                (s.name, kind, s.schema)
            })
            .collect()
    }

    /// Sinks and tables: name, connector (`table` for a table), the query writing it.
    pub fn sinks(&self) -> Vec<(String, String, Option<u64>)> {
        self.catalog
            .sinks()
            .into_iter()
            .map(|s| {
                let connector = if s.is_table {
                    "table".to_string()
                } else {
                    s.options
                        .get("connector")
                        .cloned()
                        .unwrap_or_else(|| "memory".into())
                };
                (s.name, connector, s.query)
            })
            .collect()
    }
}

/// A streaming query planned, not started.
pub(super) struct StreamingPlan {
    pub qc: QueryContext,
    pub planned: crate::planner::PlannedQuery,
    /// The streams it reads.
    pub streams: HashSet<String>,
}

/// Where a query's rows go.
pub(super) enum Target {
    Sink(String),
    Console(mpsc::UnboundedSender<(Time, Vec<RecordBatch>)>),
}

impl FlumenSession {
    /// Stop one query; with `graceful`, its batch in flight finishes first.
    pub async fn stop_query(&self, id: u64, graceful: bool) -> Result<()> {
        match self.queries.get(id) {
            Some(q) => q.ctx.stop(graceful).await,
            None => plan_err!("no query {id}; SHOW QUERIES lists them"),
        }
    }

    /// Stop every query gracefully (the batch in flight finishes and commits).
    pub async fn stop_all(&self) -> Result<()> {
        for q in self.queries.all() {
            q.ctx.stop(true).await?;
        }
        Ok(())
    }

    /// Wait until every query has stopped by itself (e.g. drained under
    /// `available_now`); the first failure, naming its query.
    pub async fn await_all(&self) -> Result<()> {
        let mut first_error = None;
        for q in self.queries.all() {
            if let Err(e) = q.ctx.await_termination().await
                && first_error.is_none()
            {
                first_error = Some(e.context(format!("query {}", q.id)));
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts the query of a `CREATE SINK/TABLE ... AS`; if it cannot start, the
    /// sink or table the statement created is removed again.
    pub(super) async fn start_query_or_forget(
        &mut self,
        query: &ParsedQuery,
        name: &str,
    ) -> Result<u64> {
        match self
            .start_query(query, Target::Sink(name.to_string()))
            .await
        {
            Ok((id, _)) => Ok(id),
            Err(e) => {
                self.catalog.remove(name);
                let _ = self.base.deregister_table(name);
                Err(e)
            }
        }
    }

    /// Plans `query` into a context of its own: what [`FlumenSession::start_query`]
    /// starts and EXPLAIN describes (one planning pass for both).
    pub(super) async fn plan_streaming(
        &self,
        query: &ParsedQuery,
        id: u64,
        target: Option<&str>,
        mode: OutputMode,
        trigger: flumen_engine::Trigger,
    ) -> Result<StreamingPlan> {
        let statement = self.bind(query)?;
        let qc = self.build_query_context(id, target, trigger)?;
        let df = super::plan_dataframe(qc.ctx.session(), statement.clone()).await?;
        let datafusion::sql::parser::Statement::Statement(bound) = &statement else {
            return Err(Error::Internal("a bound query is a SQL statement".into()));
        };
        let df = match bound.as_ref() {
            ast::Statement::Query(q) => crate::hidden::drop_hidden_columns(df, q)?,
            _ => df,
        };
        let streams = qc.schema.streams_read();
        let planned = plan_query(
            &qc.ctx,
            df,
            &QueryScope {
                streams: &streams,
                watermarks: &self.catalog.watermarks(),
                mode,
                outputs: qc.schema.outputs(),
                derived: false,
            },
        )?;
        Ok(StreamingPlan {
            qc,
            planned,
            streams,
        })
    }

    /// Plans and starts a query; its id and the schema of its rows.
    pub(super) async fn start_query(
        &mut self,
        query: &ParsedQuery,
        target: Target,
    ) -> Result<(u64, SchemaRef)> {
        let mut mode = query.mode(self.settings.output_mode);
        if let Target::Sink(name) = &target
            && self.catalog.sink(name).is_some_and(|s| s.is_table)
        {
            // A table holds the current result: the whole of it every batch.
            mode = OutputMode::Complete;
        }
        let id = self.queries.next_id();
        let target_name = match &target {
            Target::Sink(name) => Some(name.as_str()),
            Target::Console(_) => None,
        };
        // Refused before any source opens.
        if let Some(name) = target_name
            && let Some(q) = self.catalog.sink(name).and_then(|def| def.query)
            && self.queries.is_active(q)
        {
            return plan_err!("sink '{name}' already has query {q} writing to it");
        }
        let StreamingPlan {
            qc,
            planned,
            streams,
        } = self
            .plan_streaming(query, id, target_name, mode, self.settings.trigger)
            .await?;
        if streams.is_empty() {
            return plan_err!("this query reads no stream; run it as an ordinary SELECT");
        }
        let schema = planned.stream.schema();
        let watermarked = qc.schema.watermarked();
        let target_name = match target {
            Target::Sink(name) => {
                // How the rows written are read back (memory sinks and tables): the
                // newest batch when each holds the whole result, every row otherwise.
                use flumen_engine::ops::Emits;
                let read = match planned.emits {
                    Emits::WholeResult => OutputMode::Complete,
                    Emits::Appends => OutputMode::Append,
                    Emits::Changes { .. } | Emits::Changelog => OutputMode::Update,
                };
                let changelog = planned.emits == Emits::Changelog;
                // A sink that acts on the watermark would wait for ever without one.
                if self
                    .catalog
                    .sink(&name)
                    .is_some_and(|d| d.sink.needs_watermark())
                    && watermarked.is_empty()
                {
                    let mut read: Vec<&str> = streams.iter().map(String::as_str).collect();
                    read.sort_unstable();
                    return plan_err!(
                        "sink '{name}' commits each partition once the watermark passes its \
                         time, and the query reads no stream with a watermark ({}): declare \
                         one, e.g. WATERMARK FOR ts AS ts - INTERVAL '5' SECOND",
                        read.join(", ")
                    );
                }
                let Some((sink, memory, is_table)) = self.catalog.update_sink(&name, |def| {
                    def.query = Some(id);
                    def.schema = Some(if changelog && def.is_table {
                        let mut fields = schema.fields().to_vec();
                        fields.pop();
                        Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
                    } else {
                        schema.clone()
                    });
                    def.mode = match (def.is_table, planned.stateful) {
                        (true, true) => OutputMode::Complete,
                        (true, false) => OutputMode::Append,
                        (false, _) => mode,
                    };
                    (Arc::clone(&def.sink), def.memory.clone(), def.is_table)
                }) else {
                    return plan_err!("no sink named '{name}'");
                };
                // A sink told the rows are a changelog applies or writes their `_op`.
                sink.set_changelog(changelog.then(|| schema.fields().len() - 1))?;
                if let Some(memory) = memory {
                    if changelog && is_table {
                        // A table holds the current result: the changelog applied.
                        self.register_changelog_table(&name, memory, schema.clone())?;
                    } else {
                        self.register_memory_table(&name, memory, schema.clone(), read)?;
                    }
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
        let mut explain = qc.schema.take_derived_explain();
        explain.extend(planned.explain);
        self.queries.insert(QueryInfo {
            id,
            sql: query.text.clone(),
            target: target_name,
            mode,
            ctx: qc.ctx,
            streams,
            explain,
            metrics: qc.metrics,
        });
        Ok((id, schema))
    }

    /// With a manual clock: run the next `n` batches of every running query.
    pub(super) async fn advance(&mut self, n: u64) -> Result<super::StatementResult> {
        let Some(clock) = self.clock.as_manual().cloned() else {
            return lifecycle_err!(
                "ADVANCE needs the manual clock (tests); this session runs on the system clock"
            );
        };
        let queries = self.queries.all();
        let step = queries
            .iter()
            .filter(|q| q.is_active())
            .map(|q| q.ctx.batch_interval())
            .min()
            .unwrap_or(self.settings.batch_interval);
        for _ in 0..n {
            // The queries running before the clock moves: one that fails its batch
            // before it is awaited below is still awaited, and its error returned.
            let active: Vec<_> = queries.iter().filter(|q| q.is_active()).collect();
            clock.advance(step);
            let now = clock.now().as_millis();
            for q in active {
                let i = q.ctx.batch_interval().as_millis() as i64;
                let due = Time::from_millis(now - now.rem_euclid(i));
                if q.ctx.started_at().is_some_and(|s| due > s) {
                    q.ctx
                        .await_batch(due)
                        .await
                        .map_err(|e: Error| e.context(format!("query {}", q.id)))?;
                }
            }
        }
        Ok(super::StatementResult::Done(format!(
            "advanced {n} batches"
        )))
    }

    /// A query context whose session resolves stream names to this query's sources.
    /// `name` is the sink or table the query writes, the key of its offsets in an
    /// `offsets_store` and of its checkpoint.
    pub(super) fn build_query_context(
        &self,
        id: u64,
        name: Option<&str>,
        trigger: flumen_engine::Trigger,
    ) -> Result<QueryContext> {
        QueryContext::build(
            &self.base,
            &self.catalog,
            &self.registry,
            &self.clock,
            &self.settings,
            id,
            name,
            trigger,
        )
    }
}
