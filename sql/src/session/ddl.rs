//! `CREATE STREAM`, `CREATE STREAM ... AS SELECT`, `CREATE SINK`, `DROP`.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use flumen_engine::source::RecordLimit;
use flumen_engine::{MemorySink, Result, Sink, Trigger, plan_err};

use super::resolve::{receiver_options, with_batch_time};
use super::{FlumenSession, StatementResult};
use crate::batch_time::BATCH_TIME_COLUMN;
use crate::catalog::{MemorySinkTable, Removed, SinkDef, StreamDef, StreamKind, StreamPlaceholder};
use crate::planner::OutputMode;
use crate::policy::{LateRows, StreamPolicy, connector_options, source_options};
use crate::query::ParsedQuery;
use crate::statement::{ColumnDef, ObjectKind, Options, Watermark};

impl FlumenSession {
    /// Refuses `name` when a stream, sink or table has it.
    pub(super) fn check_free(&self, name: &str) -> Result<()> {
        if let Some(kind) = self.catalog.kind_of(name) {
            let kind = kind.as_str();
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

    /// A stream's or sink's options with the session's defaults for what they leave
    /// out: a `kafka` one's `bootstrap_servers` (`SET kafka.bootstrap_servers`).
    fn with_session_defaults(&self, mut options: Options) -> Options {
        let kafka = options
            .get("connector")
            .is_some_and(|c| c.eq_ignore_ascii_case("kafka"));
        if kafka
            && !options.contains_key("bootstrap_servers")
            && let Some(servers) = &self.settings.kafka_bootstrap_servers
        {
            options.insert("bootstrap_servers".into(), servers.clone());
        }
        options
    }

    pub(super) fn create_stream(
        &mut self,
        name: String,
        columns: Vec<ColumnDef>,
        watermark: Option<Watermark>,
        options: Options,
    ) -> Result<StatementResult> {
        self.check_free(&name)?;
        let options = self.with_session_defaults(options);
        let Some(connector) = options.get("connector").cloned() else {
            return plan_err!(
                "CREATE STREAM {name} needs WITH (connector = '...'); available: {}",
                self.registry.source_names().join(", ")
            );
        };
        let schema = self.declared_schema(&name, &connector, columns, &options)?;
        if schema.field_with_name(BATCH_TIME_COLUMN).is_ok() {
            return plan_err!(
                "column name {BATCH_TIME_COLUMN} is reserved: every stream has it (the time of the batch a row arrives in)"
            );
        }
        if let Some(w) = &watermark {
            check_event_time(
                &schema,
                &w.column,
                || {
                    format!(
                        "WATERMARK FOR {}: no such column in stream {name}",
                        w.column
                    )
                },
                |t| {
                    format!(
                        "WATERMARK FOR {}: the column is {t}, it must be a TIMESTAMP",
                        w.column
                    )
                },
            )?;
        }
        let policy = StreamPolicy::resolve(&name, watermark.as_ref(), &options)?;
        self.check_dead_letters(&name, &policy)?;
        // Validate the connector and its options now, not at the first query.
        let source = self.registry.create_source(
            &connector,
            &name,
            schema.clone(),
            &receiver_options(
                &name,
                &options,
                self.settings.checkpoint_location.as_deref(),
            ),
        )?;
        if policy.caps_records()
            && let RecordLimit::Unsupported { hint } = source.record_limit()
        {
            return plan_err!(
                "stream {name}: connector '{connector}' cannot cap the records of a batch (max_records_per_batch, backpressure){hint}"
            );
        }
        self.base.register_table(
            name.as_str(),
            Arc::new(StreamPlaceholder {
                name: name.clone(),
                schema: with_batch_time(&schema),
            }),
        )?;
        self.catalog.add_stream(StreamDef {
            name: name.clone(),
            schema: schema.clone(),
            watermark,
            options,
            kind: StreamKind::Source { connector },
            policy: policy.clone(),
        });
        if let Some(errors) = &policy.errors {
            // Records the connector cannot decode go to `<stream>_errors`.
            self.create_dead_letter(errors, flumen_engine::source::rejected_schema())?;
        }
        if let LateRows::DeadLetter { sink, own: true } = &policy.late_rows {
            self.create_dead_letter(sink, schema)?;
        }
        Ok(StatementResult::Done(format!("Stream '{name}' created")))
    }

    /// The columns declared, or the connector's own when none are.
    fn declared_schema(
        &self,
        name: &str,
        connector: &str,
        columns: Vec<ColumnDef>,
        options: &Options,
    ) -> Result<SchemaRef> {
        if !columns.is_empty() {
            return Ok(Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                    .collect::<Vec<_>>(),
            )));
        }
        let factory = self.registry.source(connector)?;
        if let Some(s) = factory.default_schema(&source_options(options)) {
            return Ok(s);
        }
        // The connector's own complaint about its options comes first.
        let empty = Arc::new(Schema::empty());
        self.registry
            .create_source(connector, name, empty, &source_options(options))?;
        plan_err!("CREATE STREAM {name}: declare its columns, e.g. (line TEXT)")
    }

    /// The sinks a stream's bad records and late rows go to: a named one must exist
    /// and serve no other stream; the stream's own must have free names.
    fn check_dead_letters(&self, name: &str, policy: &StreamPolicy) -> Result<()> {
        if let Some(errors) = &policy.errors {
            self.check_free(errors)?;
        }
        match &policy.late_rows {
            LateRows::Drop => Ok(()),
            LateRows::DeadLetter { sink, own: true } => self.check_free(sink),
            LateRows::DeadLetter { sink, own: false } => {
                match self.catalog.sink(sink) {
                    Some(d) if !d.is_table => {}
                    _ => {
                        return plan_err!(
                            "CREATE STREAM {name}: no sink '{sink}' for its late rows; create it first with CREATE SINK {sink} WITH (connector = '...')"
                        );
                    }
                }
                if let Some(other) = self.catalog.late_rows_of(sink) {
                    return plan_err!(
                        "CREATE STREAM {name}: sink '{sink}' is already the dead letter of stream {other}"
                    );
                }
                Ok(())
            }
        }
    }

    /// A dead letter: a memory sink of `schema`, appended to, readable with SELECT.
    fn create_dead_letter(&mut self, name: &str, schema: SchemaRef) -> Result<()> {
        self.create_sink(
            name,
            Options::from([("connector".into(), "memory".into())]),
            false,
        )?;
        let memory = self
            .catalog
            .update_sink(name, |def| {
                def.schema = Some(schema.clone());
                def.mode = OutputMode::Append;
                def.memory.clone()
            })
            .flatten();
        if let Some(m) = memory {
            self.register_memory_table(name, m, schema, OutputMode::Append)?;
        }
        Ok(())
    }

    /// Makes a memory sink readable with `SELECT * FROM name`.
    pub(super) fn register_memory_table(
        &self,
        name: &str,
        sink: Arc<MemorySink>,
        schema: SchemaRef,
        mode: OutputMode,
    ) -> Result<()> {
        let _ = self.base.deregister_table(name);
        self.base.register_table(
            name,
            Arc::new(MemorySinkTable {
                sink,
                schema,
                mode,
                changelog: false,
            }),
        )?;
        Ok(())
    }

    /// A memory table written by a changelog (`schema` ends in its `_op` column): it
    /// reads as the changelog applied, without `_op`.
    pub(super) fn register_changelog_table(
        &self,
        name: &str,
        sink: Arc<MemorySink>,
        schema: SchemaRef,
    ) -> Result<()> {
        let mut fields = schema.fields().to_vec();
        fields.pop();
        let _ = self.base.deregister_table(name);
        self.base.register_table(
            name,
            Arc::new(MemorySinkTable {
                sink,
                schema: Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
                mode: OutputMode::Update,
                changelog: true,
            }),
        )?;
        Ok(())
    }

    pub(super) async fn create_derived_stream(
        &mut self,
        name: String,
        options: Options,
        query: ParsedQuery,
    ) -> Result<StatementResult> {
        self.check_free(&name)?;
        if query.emit == Some(OutputMode::Append) {
            return plan_err!(
                "CREATE STREAM {name} AS SELECT ... EMIT FINAL: EMIT FINAL belongs to the query that reads {name}, not to its definition"
            );
        }
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
        let df = super::plan_dataframe(probe.ctx.session(), self.bind(&query)?).await?;
        // ksqlDB's `CREATE STREAM s AS SELECT ... EMIT CHANGES`: a stream of every row
        // its query emits, which a stateless query's rows are. An aggregate's changes
        // are a table in ksqlDB (CREATE TABLE ... AS), and here too.
        if query.emit == Some(OutputMode::Update) && is_stateful(df.logical_plan()) {
            return plan_err!(
                "CREATE STREAM {name} AS SELECT ... EMIT CHANGES: its query keeps state (an \
                 aggregate, DISTINCT or window function), so its rows change: as in ksqlDB, \
                 that is a table (CREATE TABLE {name} AS SELECT ...), or write the aggregate \
                 in the query that reads the stream"
            );
        }
        let schema = Arc::new(df.schema().as_arrow().clone());
        let watermark = match column {
            Some(c) => {
                let c = c.to_ascii_lowercase();
                check_event_time(
                    &schema,
                    &c,
                    || {
                        format!(
                            "CREATE STREAM {name}: timestamp column {c} is not in its SELECT list"
                        )
                    },
                    |t| {
                        format!(
                            "CREATE STREAM {name}: timestamp column {c} is {t}, it must be a TIMESTAMP"
                        )
                    },
                )?;
                Some(Watermark {
                    column: c,
                    delay: delay.unwrap_or(Duration::ZERO),
                })
            }
            None => None,
        };
        let placeholder = if schema.field_with_name(BATCH_TIME_COLUMN).is_ok() {
            schema.clone()
        } else {
            with_batch_time(&schema)
        };
        self.base.register_table(
            name.as_str(),
            Arc::new(StreamPlaceholder {
                name: name.clone(),
                schema: placeholder,
            }),
        )?;
        self.catalog.add_stream(StreamDef {
            name: name.clone(),
            schema,
            watermark,
            options,
            kind: StreamKind::Derived { query },
            policy: StreamPolicy::default(),
        });
        Ok(StatementResult::Done(format!("Stream '{name}' created")))
    }

    pub(super) fn create_sink(
        &mut self,
        name: &str,
        options: Options,
        is_table: bool,
    ) -> Result<()> {
        self.check_free(name)?;
        let options = self.with_session_defaults(options);
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
                    && let Some(f) = self.settings.console_format
                {
                    sink_options
                        .entry("format".into())
                        .or_insert_with(|| f.as_str().to_string());
                }
                let sink = self.registry.create_sink(&connector, name, &sink_options)?;
                (sink, None)
            };
        self.catalog.add_sink(SinkDef {
            name: name.to_string(),
            options,
            sink,
            memory,
            mode: self.settings.output_mode,
            schema: None,
            query: None,
            is_table,
        });
        Ok(())
    }

    pub(super) async fn drop(
        &mut self,
        kind: ObjectKind,
        name: &str,
        if_exists: bool,
    ) -> Result<StatementResult> {
        match (kind, self.catalog.kind_of(name)) {
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
            (_, Some(k)) if k != kind => {
                let k = k.as_str();
                return plan_err!(
                    "'{name}' is a {k}, not a {}; use DROP {} {name}",
                    kind.as_str(),
                    k.to_uppercase()
                );
            }
            _ => {}
        }
        if kind == ObjectKind::Stream {
            let users = self.queries.readers_of(name);
            if !users.is_empty() {
                return plan_err!(
                    "stream '{name}' is read by running queries {}; STOP QUERY them first",
                    users
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        if let Some(Removed::Sink(SinkDef { query: Some(q), .. })) = self.catalog.remove(name) {
            self.stop_query(q, true).await?;
        }
        let _ = self.base.deregister_table(name);
        Ok(StatementResult::Done(format!(
            "{} '{name}' dropped",
            capitalize(kind.as_str())
        )))
    }
}

/// Checks that `column` of `schema` is a timestamp, with the message `missing()` when
/// there is no such column and `wrong_type(type)` when it is of another type.
fn check_event_time(
    schema: &SchemaRef,
    column: &str,
    missing: impl FnOnce() -> String,
    wrong_type: impl FnOnce(&DataType) -> String,
) -> Result<()> {
    match schema.field_with_name(column) {
        Ok(f) if matches!(f.data_type(), DataType::Timestamp(_, _)) => Ok(()),
        Ok(f) => plan_err!("{}", wrong_type(f.data_type())),
        Err(_) => plan_err!("{}", missing()),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Whether `plan` keeps state across batches as a streaming query: an aggregate,
/// `DISTINCT` or a window function.
fn is_stateful(plan: &datafusion::logical_expr::LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::LogicalPlan;
    let mut stateful = false;
    let _ = plan.apply(|node| {
        if matches!(
            node,
            LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_) | LogicalPlan::Window(_)
        ) {
            stateful = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    stateful
}
