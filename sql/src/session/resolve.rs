//! Name resolution inside one streaming query: each query gets its own DataFusion
//! session whose stream names resolve to that query's own sources (created on first
//! use) and derived streams (planned on first use); other names go to the session's
//! tables.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF};
use flumen_engine::checkpoint::CheckpointLocation;
use flumen_engine::registry::{ConnectorOptions, bool_option};
use flumen_engine::stream::replace_default_schema;
use flumen_engine::{
    Clock, ConnectorRegistry, Error, QueryMetrics, QueueSource, Result, SourceOptions, Stream,
    StreamingContext, Trigger, plan_err,
};
use parking_lot::Mutex;

use super::settings::Settings;
use crate::batch_time::{BATCH_TIME_COLUMN, BatchTimeCell, batch_time_udf};
use crate::catalog::{Catalog, StreamDef, StreamKind};
use crate::planner::{OperatorOutputs, OutputMode, QueryScope, plan_query};
use crate::policy::{LateRows, errors_of, source_options};

/// One query's streaming context, the names it resolves, and its totals.
pub(super) struct QueryContext {
    pub ctx: StreamingContext,
    pub schema: Arc<QuerySchema>,
    pub metrics: Arc<QueryMetrics>,
}

impl QueryContext {
    /// A query context whose session resolves stream names to this query's sources.
    /// `name` is the sink or table the query writes, the key of its offsets in an
    /// `offsets_store` and of its checkpoint.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        base: &SessionContext,
        catalog: &Catalog,
        registry: &ConnectorRegistry,
        clock: &Arc<dyn Clock>,
        settings: &Settings,
        id: u64,
        name: Option<&str>,
        trigger: Trigger,
    ) -> Result<QueryContext> {
        let cell = Arc::new(BatchTimeCell::default());
        let batch_time = batch_time_udf(Arc::clone(&cell));
        let schema = Arc::new(QuerySchema {
            batch_time: batch_time.clone(),
            catalog: catalog.clone(),
            registry: registry.clone(),
            ctx: OnceLock::new(),
            created: Mutex::new(HashMap::new()),
            read: Mutex::new(HashSet::new()),
            outputs: OperatorOutputs::default(),
            derived_explain: Mutex::new(Vec::new()),
            trigger,
            query_id: id,
            mode: settings.output_mode,
            checkpoint: settings.checkpoint_location.clone(),
            name: name.map(str::to_string),
            watermarked: Mutex::new(Vec::new()),
        });
        let state = base.state();
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
        let query_name = name.map_or_else(|| format!("query-{id}"), str::to_string);
        let mut builder = StreamingContext::builder(settings.batch_interval)
            .with_session(session)
            .with_clock(Arc::clone(clock))
            .with_exclusive(false)
            .with_trigger(trigger)
            .with_state_config(settings.state.clone())
            // The sink's name keys the query's writes, so a restarted query rewrites
            // the same keys.
            .with_name(query_name.clone());
        if let (Some(location), Some(name)) = (&settings.checkpoint_location, name) {
            builder = builder
                .with_checkpoint_location(checkpoint_dir(location, name)?)
                .with_checkpoint_interval(settings.checkpoint_interval);
        }
        // Queries writing a sink or table restart (from their checkpoint); a console
        // query has no checkpoint to restart from.
        if let (Some(policy), Some(_)) = (settings.restart_policy(), name) {
            builder = builder.with_restart(policy);
        }
        if let Some(url) = &settings.cluster {
            builder = builder.with_cluster(url);
        }
        let ctx = builder.build()?;
        ctx.add_listener(cell);
        let metrics = Arc::new(QueryMetrics::default());
        ctx.add_listener(Arc::clone(&metrics) as Arc<dyn flumen_engine::StreamingListener>);
        if let Some(path) = &settings.progress_log {
            ctx.add_listener(Arc::new(flumen_engine::ProgressLog::open(
                path,
                &query_name,
            )?));
        }
        let _ = schema.ctx.set(ctx.clone());
        Ok(QueryContext {
            ctx,
            schema,
            metrics,
        })
    }
}

/// Resolves stream names, inside one query, to that query's own sources and derived
/// streams.
#[derive(Debug)]
pub(super) struct QuerySchema {
    /// `flumen_batch_time()` of this query.
    batch_time: ScalarUDF,
    catalog: Catalog,
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
    /// Streams whose declared watermark the query keeps for its sink
    /// ([`QuerySchema::keep_stream_watermark`]).
    watermarked: Mutex<Vec<String>>,
}

impl QuerySchema {
    /// The streams whose declared watermark the query keeps for its sink.
    pub fn watermarked(&self) -> Vec<String> {
        self.watermarked.lock().clone()
    }

    /// Whether the query's sink acts on the watermark (`Sink::needs_watermark`).
    fn sink_needs_watermark(&self) -> bool {
        self.name
            .as_deref()
            .and_then(|n| self.catalog.sink(n))
            .is_some_and(|d| d.sink.needs_watermark())
    }

    /// When the query's sink acts on the watermark and `def` declares one: a
    /// `StreamWatermark` over the stream's time column (`rows`, the stream's rows)
    /// keeps it — a stateless query has no other operator that would. It emits
    /// nothing; the query reads the stream as it would without it.
    fn keep_stream_watermark(&self, def: &StreamDef, rows: &DataFrame) -> Result<()> {
        let Some(w) = def.watermark.as_ref() else {
            return Ok(());
        };
        if !self.sink_needs_watermark() {
            return Ok(());
        }
        let times = rows.clone().select_columns(&[w.column.as_str()])?;
        let schema = Arc::new(times.schema().as_arrow().clone());
        let op = flumen_engine::ops::StreamWatermark::try_new(&def.name, schema, 0, w.delay)?;
        let ctx = self.ctx()?;
        ctx.stream_from(times, ctx.batch_interval())?
            .with_operator(Box::new(op), ctx.batch_interval())?;
        self.watermarked.lock().push(def.name.clone());
        Ok(())
    }

    /// The streams the query's plan read so far.
    pub fn streams_read(&self) -> HashSet<String> {
        self.read.lock().clone()
    }

    /// The stateful operators planned into the query so far.
    pub fn outputs(&self) -> &OperatorOutputs {
        &self.outputs
    }

    /// EXPLAIN lines of the derived streams the query reads (taken once).
    pub fn take_derived_explain(&self) -> Vec<String> {
        self.derived_explain.lock().drain(..).collect()
    }

    fn ctx(&self) -> Result<&StreamingContext> {
        self.ctx
            .get()
            .ok_or_else(|| Error::Internal("query context not set".into()))
    }

    fn remember(&self, name: &str, provider: &Arc<dyn TableProvider>) {
        self.read.lock().insert(name.to_string());
        self.created
            .lock()
            .insert(name.to_string(), Arc::clone(provider));
    }

    /// `stream`'s rows under `name`, plus `_batch_time`: the slot's table scanned under
    /// the stream's name (so the planner sees which streams a plan reads).
    fn scan_with_batch_time(
        &self,
        name: &str,
        stream: &Stream,
        schema: &SchemaRef,
    ) -> Result<Arc<dyn TableProvider>> {
        let provider = match stream.dataframe().logical_plan() {
            LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)?,
            other => {
                return Err(Error::Internal(format!(
                    "a stream's plan should be a scan, got {}",
                    other.display()
                )));
            }
        };
        let mut columns: Vec<Expr> = schema
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
        Ok(Arc::new(ViewTable::new(plan, None)))
    }

    /// For a stream with `late_rows = 'dead_letter'`: its late rows leave the query
    /// where the stream enters it, for the dead-letter sink.
    fn with_dead_letter(&self, def: &StreamDef, stream: Stream) -> Result<Stream> {
        let (
            LateRows::DeadLetter {
                sink: sink_name, ..
            },
            Some(w),
        ) = (&def.policy.late_rows, def.watermark.as_ref())
        else {
            return Ok(stream);
        };
        let Some(sink) = self.catalog.sink(sink_name).map(|d| d.sink) else {
            return plan_err!(
                "stream {}: its dead-letter sink '{sink_name}' was dropped; create it again with CREATE SINK",
                def.name
            );
        };
        let index = def.schema.index_of(&w.column)?;
        let op = flumen_engine::ops::LateRowFilter::try_new(
            &def.name,
            def.schema.clone(),
            index,
            w.delay,
            sink,
        )?;
        let ctx = self.ctx()?;
        stream.with_operator(Box::new(op), ctx.batch_interval())
    }

    /// `<stream>_errors` read by a query: the records `<stream>` rejects, as a stream
    /// (so that bad records can be archived by any sink). Outside queries the same
    /// name is the dead-letter table, read with an ordinary SELECT.
    async fn resolve_errors(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(of) = errors_of(name) else {
            return Ok(None);
        };
        let Some(def) = self.catalog.stream(of) else {
            return Ok(None);
        };
        if def.policy.errors.as_deref() != Some(name)
            || !matches!(def.kind, StreamKind::Source { .. })
        {
            return Ok(None);
        }
        // The source itself runs in this query (once, however many names read it).
        if self.resolve(of).await?.is_none() {
            return Ok(None);
        }
        let stream = self.ctx()?.rejected_stream(of)?;
        let provider =
            self.scan_with_batch_time(name, &stream, &flumen_engine::source::rejected_schema())?;
        self.remember(name, &provider);
        Ok(Some(provider))
    }

    /// A source stream's rows in this query.
    fn source_stream(&self, def: &StreamDef, connector: &str) -> Result<Stream> {
        let ctx = self.ctx()?;
        let name = def.name.as_str();
        if is_memory_connector(connector) {
            // From SQL, a batch takes every row inserted since the last one, unless
            // one_at_a_time = 'true' (then one INSERT per batch).
            let one = bool_option(
                connector,
                &source_options(&def.options),
                "one_at_a_time",
                false,
            )?;
            let queue = QueueSource::new(name, def.schema.clone(), one);
            self.catalog.add_feed(name, &queue);
            return ctx.source(queue);
        }
        let mut options = receiver_options(name, &def.options, self.checkpoint.as_deref());
        // Queries over one socket stream share its receiver, each reading every line
        // from its own position, kept under its sink's name.
        if connector == "socket" && !options.contains_key("consumer") {
            options.insert(
                "consumer".into(),
                self.name
                    .clone()
                    .unwrap_or_else(|| format!("query-{}", self.query_id)),
            );
        }
        // Under available-now a files stream reads what the folder holds (Spark's
        // availableNow), unless told otherwise.
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
        let source = self
            .registry
            .create_source(connector, name, def.schema.clone(), &options)?;
        let errors = def
            .policy
            .errors
            .as_deref()
            .and_then(|sink| self.catalog.sink(sink))
            .map(|d| d.sink);
        ctx.source_with(
            source,
            SourceOptions {
                dead_letter: errors,
                max_records_per_batch: def.policy.max_records_per_batch,
                backpressure: def.policy.backpressure,
            },
        )
    }

    async fn resolve(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.created.lock().get(name) {
            return Ok(Some(Arc::clone(t)));
        }
        let Some(def) = self.catalog.stream(name) else {
            return Box::pin(self.resolve_errors(name)).await;
        };
        let provider: Arc<dyn TableProvider> = match &def.kind {
            StreamKind::Source { connector } => {
                let stream = self.source_stream(&def, connector)?;
                let stream = self.with_dead_letter(&def, stream)?;
                self.keep_stream_watermark(&def, stream.dataframe())?;
                self.scan_with_batch_time(name, &stream, &def.schema)?
            }
            StreamKind::Derived { query } => {
                let ctx = self.ctx()?;
                let statement = query.bind(|s| self.catalog.event_time(s))?;
                let df = super::plan_dataframe(ctx.session(), statement).await?;
                let streams = self.streams_read();
                let planned = plan_query(
                    ctx,
                    df,
                    &QueryScope {
                        streams: &streams,
                        watermarks: &self.catalog.watermarks(),
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
                // Every stream has `_batch_time`: a derived stream whose query does not
                // select it gets its batch's time, as a source stream's rows do.
                let df = planned.stream.dataframe().clone();
                let df = if df
                    .schema()
                    .has_column_with_unqualified_name(BATCH_TIME_COLUMN)
                {
                    df
                } else {
                    df.with_column(BATCH_TIME_COLUMN, self.batch_time.call(vec![]))?
                };
                self.keep_stream_watermark(&def, &df)?;
                df.into_view()
            }
        };
        self.remember(name, &provider);
        Ok(Some(provider))
    }
}

#[derive(Debug)]
struct QuerySchemaHandle {
    inner: Arc<QuerySchema>,
    base: Option<Arc<dyn SchemaProvider>>,
}

#[async_trait]
impl SchemaProvider for QuerySchemaHandle {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.catalog.stream_names().into_iter().collect();
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
        self.inner.catalog.has_stream(name)
            || self.base.as_ref().is_some_and(|b| b.table_exist(name))
    }
}

/// `schema` plus the `_batch_time` column every source stream has.
pub(super) fn with_batch_time(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        BATCH_TIME_COLUMN,
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    ));
    Arc::new(Schema::new(fields))
}

pub(super) fn is_memory_connector(c: &str) -> bool {
    c.eq_ignore_ascii_case("memory") || c.eq_ignore_ascii_case("queue")
}

/// [`source_options`], plus the directory of a receiver's write-ahead log
/// (`wal = 'true'`) under the checkpoint location, when the user gave none.
pub(super) fn receiver_options(
    name: &str,
    options: &crate::statement::Options,
    checkpoint: Option<&str>,
) -> ConnectorOptions {
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
