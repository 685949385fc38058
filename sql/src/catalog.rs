//! What the SQL layer knows: streams, sinks, continuously maintained tables.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use flumen_engine::{MemorySink, QueueSource, Sink};

use crate::planner::OutputMode;
use crate::statement::{Options, Watermark};

/// A stream: read from a connector, or derived by a query over other streams.
#[derive(Debug, Clone)]
pub struct StreamDef {
    pub name: String,
    pub schema: SchemaRef,
    pub watermark: Option<Watermark>,
    pub options: Options,
    pub kind: StreamKind,
}

#[derive(Debug, Clone)]
pub enum StreamKind {
    Source { connector: String },
    Derived { query: String },
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

#[derive(Debug, Default)]
pub struct Catalog {
    pub streams: BTreeMap<String, StreamDef>,
    pub sinks: BTreeMap<String, SinkDef>,
    /// Memory streams: the queue of every running query reading them.
    pub feeds: HashMap<String, Vec<Weak<QueueSource>>>,
}

impl Catalog {
    /// Whether `name` is taken by a stream, sink or table.
    pub fn kind_of(&self, name: &str) -> Option<&'static str> {
        if self.streams.contains_key(name) {
            Some("stream")
        } else if let Some(s) = self.sinks.get(name) {
            Some(if s.is_table { "table" } else { "sink" })
        } else {
            None
        }
    }
}

/// The rows a memory sink or continuously maintained table holds, as a table: the
/// last batch in complete mode, every row otherwise.
#[derive(Debug)]
pub struct MemorySinkTable {
    pub sink: Arc<MemorySink>,
    pub schema: SchemaRef,
    pub mode: OutputMode,
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
