//! What the SQL layer knows: streams, sinks, continuously maintained tables.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use flumen_engine::{MemorySink, QueueSource, Sink};
use parking_lot::Mutex;

use crate::planner::OutputMode;
use crate::policy::{LateRows, StreamPolicy};
use crate::query::ParsedQuery;
use crate::statement::{ObjectKind, Options, Watermark};

/// A stream: read from a connector, or derived by a query over other streams.
#[derive(Debug, Clone)]
pub struct StreamDef {
    pub name: String,
    pub schema: SchemaRef,
    pub watermark: Option<Watermark>,
    pub options: Options,
    pub kind: StreamKind,
    /// Flumen's own options (late rows, bad records, rate), resolved at CREATE.
    pub policy: StreamPolicy,
}

#[derive(Debug, Clone)]
pub enum StreamKind {
    Source { connector: String },
    Derived { query: ParsedQuery },
}

impl StreamDef {
    /// `kafka`, `files`, ... for a source stream; `derived` for one defined by a query.
    pub fn connector(&self) -> &str {
        match &self.kind {
            StreamKind::Source { connector } => connector,
            StreamKind::Derived { .. } => "derived",
        }
    }
}

/// A sink: where a query's rows go.
#[derive(Debug, Clone)]
pub struct SinkDef {
    pub name: String,
    pub options: Options,
    pub sink: Arc<dyn Sink>,
    /// For `memory` sinks (and tables): the rows, readable with SELECT.
    pub memory: Option<Arc<MemorySink>>,
    pub mode: OutputMode,
    pub schema: Option<SchemaRef>,
    /// The query writing into it.
    pub query: Option<u64>,
    /// A `CREATE TABLE ... AS SELECT` result rather than a user sink.
    pub is_table: bool,
}

/// An object taken out of the catalog.
#[derive(Debug)]
pub enum Removed {
    Stream(Box<StreamDef>),
    Sink(SinkDef),
}

/// The session's streams, sinks and tables. A cheap handle: clones share one
/// catalog, which only its methods lock (the web UI reads it while queries plan).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    objects: Arc<Mutex<Objects>>,
}

#[derive(Debug, Default)]
struct Objects {
    streams: BTreeMap<String, StreamDef>,
    sinks: BTreeMap<String, SinkDef>,
    /// Memory streams: the queue of every running query reading them.
    feeds: HashMap<String, Vec<Weak<QueueSource>>>,
}

impl Catalog {
    /// What `name` is, if a stream, sink or table has it.
    pub fn kind_of(&self, name: &str) -> Option<ObjectKind> {
        let o = self.objects.lock();
        if o.streams.contains_key(name) {
            Some(ObjectKind::Stream)
        } else {
            o.sinks.get(name).map(|s| {
                if s.is_table {
                    ObjectKind::Table
                } else {
                    ObjectKind::Sink
                }
            })
        }
    }

    pub fn add_stream(&self, def: StreamDef) {
        self.objects.lock().streams.insert(def.name.clone(), def);
    }

    pub fn add_sink(&self, def: SinkDef) {
        self.objects.lock().sinks.insert(def.name.clone(), def);
    }

    /// Takes the stream, sink or table `name` out of the catalog.
    pub fn remove(&self, name: &str) -> Option<Removed> {
        let mut o = self.objects.lock();
        if let Some(s) = o.streams.remove(name) {
            o.feeds.remove(name);
            return Some(Removed::Stream(Box::new(s)));
        }
        o.sinks.remove(name).map(Removed::Sink)
    }

    pub fn stream(&self, name: &str) -> Option<StreamDef> {
        self.objects.lock().streams.get(name).cloned()
    }

    pub fn sink(&self, name: &str) -> Option<SinkDef> {
        self.objects.lock().sinks.get(name).cloned()
    }

    /// Every stream, by name.
    pub fn streams(&self) -> Vec<StreamDef> {
        self.objects.lock().streams.values().cloned().collect()
    }

    /// Every sink and table, by name.
    pub fn sinks(&self) -> Vec<SinkDef> {
        self.objects.lock().sinks.values().cloned().collect()
    }

    pub fn stream_names(&self) -> HashSet<String> {
        self.objects.lock().streams.keys().cloned().collect()
    }

    pub fn has_stream(&self, name: &str) -> bool {
        self.objects.lock().streams.contains_key(name)
    }

    /// Changes the sink or table `name` in place; `None` if there is none.
    pub fn update_sink<R>(&self, name: &str, f: impl FnOnce(&mut SinkDef) -> R) -> Option<R> {
        self.objects.lock().sinks.get_mut(name).map(f)
    }

    /// Event-time columns with their watermark delay, keyed `stream.column`.
    /// [`declared_watermark`] reads them.
    pub fn watermarks(&self) -> HashMap<String, Duration> {
        self.objects
            .lock()
            .streams
            .values()
            .filter_map(|s| {
                s.watermark
                    .as_ref()
                    .map(|w| (format!("{}.{}", s.name, w.column), w.delay))
            })
            .collect()
    }

    /// The event-time column of `stream` (its watermark's), if it has one.
    pub fn event_time(&self, stream: &str) -> Option<String> {
        let o = self.objects.lock();
        let w = o.streams.get(stream)?.watermark.as_ref()?;
        Some(w.column.clone())
    }

    /// The stream whose late rows go to sink `sink`, if one's do.
    pub fn late_rows_of(&self, sink: &str) -> Option<String> {
        self.objects
            .lock()
            .streams
            .values()
            .find(|s| matches!(&s.policy.late_rows, LateRows::DeadLetter { sink: d, .. } if d == sink))
            .map(|s| s.name.clone())
    }

    /// Registers the queue of a query reading memory stream `stream`.
    pub fn add_feed(&self, stream: &str, queue: &Arc<QueueSource>) {
        self.objects
            .lock()
            .feeds
            .entry(stream.to_string())
            .or_default()
            .push(Arc::downgrade(queue));
    }

    /// The queues of the running queries reading memory stream `stream`.
    pub fn feeds(&self, stream: &str) -> Vec<Arc<QueueSource>> {
        let mut o = self.objects.lock();
        let feeds = o.feeds.entry(stream.to_string()).or_default();
        feeds.retain(|w| w.strong_count() > 0);
        feeds.iter().filter_map(Weak::upgrade).collect()
    }
}

/// The rows a memory sink or continuously maintained table holds, as a table: the
/// last batch in complete mode, every row otherwise.
#[derive(Debug)]
pub struct MemorySinkTable {
    pub sink: Arc<MemorySink>,
    pub schema: SchemaRef,
    pub mode: OutputMode,
    /// The sink's rows are a changelog (an `_op` column after `schema`'s): the table
    /// reads as it applied.
    pub changelog: bool,
}

#[async_trait]
impl TableProvider for MemorySinkTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.changelog {
            let applied = flumen_engine::ops::apply_changelog(
                &self.sink.all(),
                self.schema.fields().len(),
                &self.schema,
            )
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            let table = MemTable::try_new(Arc::clone(&self.schema), vec![vec![applied]])?;
            return table.scan(state, projection, filters, limit).await;
        }
        let batches = match self.mode {
            OutputMode::Complete => self.sink.last(),
            _ => self.sink.all(),
        };
        let batches = batches
            .into_iter()
            .map(|b| flumen_engine::source::conform(&self.schema, b))
            .collect::<flumen_engine::Result<Vec<_>>>()
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let table = MemTable::try_new(Arc::clone(&self.schema), vec![batches])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// The placeholder a stream name resolves to outside a streaming query, so that
/// planning tells "reads a stream" from "reads a table".
#[derive(Debug)]
pub struct StreamPlaceholder {
    pub name: String,
    pub schema: SchemaRef,
}

#[async_trait]
impl TableProvider for StreamPlaceholder {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        datafusion::common::plan_err!(
            "'{}' is a stream: read it with a continuous query (SELECT in the REPL, CREATE SINK/TABLE ... AS SELECT)",
            self.name
        )
    }
}

/// The watermark delay declared on `column` by exactly one of `streams` (`None` when
/// none or several do), from [`Catalog::watermarks`].
pub(crate) fn declared_watermark<'a>(
    watermarks: &HashMap<String, Duration>,
    streams: impl IntoIterator<Item = &'a str>,
    column: &str,
) -> Option<Duration> {
    let found: Vec<Duration> = streams
        .into_iter()
        .filter_map(|s| watermarks.get(&format!("{s}.{column}")).copied())
        .collect();
    (found.len() == 1).then(|| found[0])
}
