//! `SHOW STREAMS/SINKS/TABLES/QUERIES`, `SHOW PROGRESS`, `DESCRIBE`, `EXPLAIN`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::time::format_duration;
use flumen_engine::{Result, Trigger, plan_err};

use super::queries::{QueryInfo, StreamingPlan, list_queries};
use super::{FlumenSession, StatementResult};
use crate::catalog::StreamKind;
use crate::query::{ParsedQuery, starts_a_query};
use crate::statement::ShowKind;

impl FlumenSession {
    pub(super) fn show(&self, kind: ShowKind) -> Result<StatementResult> {
        let (names, cols): (Vec<&str>, Vec<Vec<String>>) = match kind {
            ShowKind::Streams => (
                vec!["name", "connector", "columns", "watermark"],
                self.catalog
                    .streams()
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.connector().to_string(),
                            s.schema
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            s.watermark
                                .as_ref()
                                .map(|w| format!("{} - {}", w.column, format_duration(w.delay)))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect(),
            ),
            ShowKind::Sinks | ShowKind::Tables => (
                vec!["name", "connector", "mode", "query"],
                self.catalog
                    .sinks()
                    .iter()
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
                    "output_mode",
                    "batches",
                    "last_input_rows",
                    "late_rows",
                    "rejected_rows",
                    "restarts",
                    "error",
                    "sql",
                ],
                self.queries
                    .all()
                    .iter()
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
                            q.mode.to_string(),
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
    pub(super) fn show_progress(&self, query: Option<&str>) -> Result<StatementResult> {
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
            "state_operators",
            "ran_on",
        ];
        let all: Vec<QueryInfo> = self.queries.all();
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
                    state_operators(&b.operators),
                    ran_on(b.cluster.as_ref()),
                ]);
            }
        }
        string_table(&names, rows)
    }

    pub(super) async fn describe(&self, name: &str) -> Result<StatementResult> {
        let schema = if let Some(s) = self.catalog.stream(name) {
            Some(s.schema)
        } else if let Some(s) = self.catalog.sink(name) {
            match s.schema {
                Some(schema) => Some(schema),
                None => {
                    return plan_err!(
                        "sink '{name}' has no query writing to it yet, so no columns"
                    );
                }
            }
        } else {
            None
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

    /// `EXPLAIN <query>`: over streams, the streaming pipeline (planned as
    /// [`FlumenSession::start_query`] plans it); otherwise DataFusion's EXPLAIN.
    pub(super) async fn explain(&mut self, text: &str) -> Result<StatementResult> {
        let query = match starts_a_query(text) {
            true => Some(ParsedQuery::parse(text)?),
            false => None,
        };
        let query = match query {
            Some(q) if self.reads_streams(&q) => q,
            _ => return self.datafusion(&format!("EXPLAIN {text}")).await,
        };
        let mode = query.mode(self.settings.output_mode);
        let StreamingPlan {
            qc,
            planned,
            streams,
        } = self
            .plan_streaming(&query, 0, None, mode, Trigger::ProcessingTime)
            .await?;
        let mut lines = vec![format!(
            "Streaming query: batch interval {}, output mode {mode}",
            format_duration(self.settings.batch_interval)
        )];
        {
            let mut names: Vec<&String> = streams.iter().collect();
            names.sort();
            for s in names {
                if let Some(def) = self.catalog.stream(s) {
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
                                format_duration(w.delay)
                            ))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        lines.extend(qc.schema.take_derived_explain());
        lines.extend(planned.explain);
        if let Some((url, operators)) = planned.stream.context().cluster_placement() {
            let (there, here): (Vec<_>, Vec<_>) = operators.into_iter().partition(|o| o.1);
            let names = |ops: Vec<(String, bool)>| {
                ops.into_iter().map(|o| o.0).collect::<Vec<_>>().join(", ")
            };
            let mut line = format!("Cluster {url}: each batch's plans run as Ballista jobs");
            if !there.is_empty() {
                line.push_str(&format!(
                    "; state in {} partitions on the executors: {}",
                    self.settings.state.partitions,
                    names(there)
                ));
            }
            if !here.is_empty() {
                line.push_str(&format!(
                    "; state on the driver (input plans on the executors): {}",
                    names(here)
                ));
            }
            lines.push(line);
        }
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

/// Each stateful operator's state after a batch, one `; `-separated entry each:
/// `RunningAggregate: 3 rows, 1024 B in memory, 0 B spilled, 0 evicted, 512 B checkpointed`.
fn state_operators(operators: &[flumen_engine::OperatorStateInfo]) -> String {
    operators
        .iter()
        .map(|o| {
            format!(
                "{}: {} rows, {} B in memory, {} B spilled, {} evicted, {} B checkpointed",
                o.name, o.rows, o.memory_bytes, o.spilled_bytes, o.evicted_rows, o.checkpoint_bytes
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where a batch ran: `local`, or the cluster with its jobs, tasks and executors.
fn ran_on(cluster: Option<&flumen_engine::ClusterInfo>) -> String {
    match cluster {
        None => "local".into(),
        Some(c) => format!(
            "{} ({} jobs, {} tasks, {} retries, {} executors{}{})",
            c.url,
            c.jobs,
            c.tasks,
            c.retries.map_or_else(|| "?".to_string(), |n| n.to_string()),
            c.executors
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            if c.read_by_executors.is_empty() {
                String::new()
            } else {
                let streams: Vec<String> = c
                    .read_by_executors
                    .iter()
                    .map(|s| {
                        if c.uncounted.contains(s) {
                            format!("{s} (rows not counted)")
                        } else {
                            s.clone()
                        }
                    })
                    .collect();
                format!("; read there: {}", streams.join(", "))
            },
            if c.written_by_tasks.is_empty() {
                String::new()
            } else {
                format!("; written there: {}", c.written_by_tasks.join(", "))
            }
        ),
    }
}
