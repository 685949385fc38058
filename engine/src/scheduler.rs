//! The pipeline of one query and the loop that runs it, one micro-batch per interval.
//!
//! ```text
//!  every batch time T (batch id n):
//!   1 plan   each Source::plan_batch            -> SourceRange per source
//!   2 read   each Source::read_batch            -> source slots filled
//!   3 run    each operator, in graph order      -> its input plan executed, process(),
//!                                                  its output slot filled
//!            each output                        -> its plan executed
//!   4 write  Sink::write per partition, Sink::commit
//!   5 commit Source::commit; BatchInfo to listeners
//! ```
//!
//! With a checkpoint (see [`crate::checkpoint`]): step 1 writes the ranges to the offset
//! log before anything is read, step 5 writes the commit log, then the operators'
//! state, then frees the sources' data. [`Pipeline::recover`] replays from the newest
//! snapshot with the recorded ranges after a restart.
//!
//! Every physical plan is built once, in [`Pipeline::plan`], and re-executed each batch
//! after [`reset_plan_states`] clears whatever an operator cached (a join's build side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::TaskContext;
use datafusion::execution::context::SessionContext;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::{ExecutionPlan, collect_partitioned};

use crate::Result;
use crate::checkpoint::{Checkpoint, OffsetEntry, Recovered};
use crate::clock::Clock;
use crate::graph::{Graph, OperatorNode, OutputKind, OutputNode, SourceNode};
use crate::listener::BatchInfo;
use crate::ops::OperatorContext;
use crate::print::format_print;
use crate::sink::WriteKey;
use crate::source::BatchContext;
use crate::time::Time;

/// A query's graph with every physical plan built.
pub(crate) struct Pipeline {
    query_id: String,
    /// What tells this pipeline's writes from another's: the checkpoint's id, or one
    /// made for this run without a checkpoint (nothing is replayed then).
    pipeline_id: String,
    session: SessionContext,
    task_ctx: Arc<TaskContext>,
    interval: Duration,
    sources: Vec<SourceNode>,
    operators: Vec<(OperatorNode, Arc<dyn ExecutionPlan>)>,
    outputs: Vec<(OutputNode, Arc<dyn ExecutionPlan>)>,
    checkpoint: Option<Checkpoint>,
    /// State is snapshotted every this many batches (`checkpoint_interval`).
    snapshot_every: u64,
    /// The batch of the newest snapshot written or restored.
    last_snapshot: Option<u64>,
    /// Records rejected while recovery ran batches again (not committed before the
    /// restart): counted with the first batch after it.
    carried_rejected: u64,
    /// Every operator's state before the first batch: what a restart after a failure
    /// goes back to when the checkpoint holds no snapshot yet.
    initial_state: Option<Vec<crate::checkpoint::OperatorState>>,
    /// Where the batch's plans run when not here (`with_cluster`).
    cluster: Option<crate::cluster::Cluster>,
    /// Every slot the plans scan: what a plan sent to the cluster carries.
    slots: Vec<Arc<crate::slot::BatchSlot>>,
    /// On a cluster: per output, its plan fused with the plan of the operator whose
    /// output it alone reads (`fuse_on_cluster`), and per operator whether it is.
    fused_outputs: Vec<Option<Arc<dyn ExecutionPlan>>>,
    fused_operators: Vec<bool>,
    /// The next batch is the last of a run over finite input ([`Self::end_input`]).
    end_of_input: bool,
}

/// On a cluster, one job a batch instead of two where it can: an operator whose
/// state lives on the executors (its plan is a `StatePartitionsExec`) and whose output
/// is read by one plan only — an output the tasks write (`Sink::write_on_cluster`), due
/// at the same batches — has that output's scan of its slot replaced by its own plan.
/// The state tasks' changes then go to the writing tasks without the driver. Per
/// output the fused plan, per operator whether it is fused.
#[allow(clippy::type_complexity)]
fn fuse_on_cluster(
    operators: &[(OperatorNode, Arc<dyn ExecutionPlan>)],
    outputs: &[(OutputNode, Arc<dyn ExecutionPlan>)],
) -> Result<(Vec<Option<Arc<dyn ExecutionPlan>>>, Vec<bool>)> {
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    use datafusion::physical_plan::streaming::StreamingTableExec;
    let mut fused_outputs = vec![None; outputs.len()];
    let mut fused_operators = vec![false; operators.len()];
    let scans_of = |plan: &Arc<dyn ExecutionPlan>, slot: &crate::slot::BatchSlot| {
        let mut n = 0;
        let _ = plan.apply(|node| {
            if let Some(scan) = node.downcast_ref::<StreamingTableExec>()
                && slot.scanned_by(scan)
            {
                n += 1;
            }
            Ok(TreeNodeRecursion::Continue)
        });
        n
    };
    for (i, (node, plan)) in operators.iter().enumerate() {
        // A windowed aggregate's tasks emit what its `process` turns into output (the
        // watermark, late rows): not fused.
        let fusable = plan
            .downcast_ref::<crate::cluster::state::StatePartitionsExec>()
            .is_some_and(|s| s.spec().window.is_none());
        if !fusable {
            continue;
        }
        let by_operators: usize = operators.iter().map(|(_, p)| scans_of(p, &node.slot)).sum();
        let by_outputs: Vec<usize> = outputs
            .iter()
            .map(|(_, p)| scans_of(p, &node.slot))
            .collect();
        let readers: Vec<usize> = (0..outputs.len()).filter(|j| by_outputs[*j] > 0).collect();
        let [j] = readers[..] else { continue };
        let (out, out_plan) = &outputs[j];
        let writes_there =
            matches!(&out.kind, OutputKind::Sink(sink) if sink.write_on_cluster().is_some());
        if by_operators > 0 || by_outputs[j] != 1 || !writes_there || out.slide != node.input_slide
        {
            continue;
        }
        let fused = Arc::clone(out_plan)
            .transform_up(|n| {
                let Some(scan) = n.downcast_ref::<StreamingTableExec>() else {
                    return Ok(Transformed::no(n));
                };
                if !node.slot.scanned_by(scan) {
                    return Ok(Transformed::no(n));
                }
                let mut state: Arc<dyn ExecutionPlan> = Arc::clone(plan);
                if let Some(p) = scan.projection() {
                    let schema = state.schema();
                    let exprs = p
                        .iter()
                        .map(|c| {
                            (
                                Arc::new(datafusion::physical_expr::expressions::Column::new(
                                    schema.field(*c).name(),
                                    *c,
                                ))
                                    as Arc<dyn datafusion::physical_expr::PhysicalExpr>,
                                schema.field(*c).name().to_string(),
                            )
                        })
                        .collect::<Vec<_>>();
                    state = Arc::new(
                        datafusion::physical_plan::projection::ProjectionExec::try_new(
                            exprs, state,
                        )?,
                    );
                }
                if let Some(limit) = scan.limit() {
                    state = Arc::new(datafusion::physical_plan::limit::LocalLimitExec::new(
                        state, limit,
                    ));
                }
                Ok(Transformed::yes(state))
            })?
            .data;
        fused_outputs[j] = Some(fused);
        fused_operators[i] = true;
    }
    Ok((fused_outputs, fused_operators))
}

/// Where operator `i`'s state partitions live on a cluster: under the checkpoint's
/// folder, or a temporary one made for the run (`temporary`, shared by the query's
/// operators, removed with them).
fn state_placement(
    i: usize,
    checkpoint: Option<&crate::checkpoint::CheckpointLocation>,
    temporary: &mut Option<Arc<crate::cluster::state::TemporaryDir>>,
) -> Result<crate::cluster::state::Placement> {
    use crate::checkpoint::CheckpointLocation;
    use crate::cluster::state::{Placement, TemporaryDir};
    match checkpoint {
        Some(CheckpointLocation::Local(dir)) => {
            let dir = std::path::absolute(dir).map_err(|e| {
                crate::Error::Checkpoint(format!("checkpoint location {}: {e}", dir.display()))
            })?;
            Ok(Placement {
                dir: dir.join("cluster-state").join(i.to_string()),
                temporary: None,
            })
        }
        // The store's URL as the folder: each executor opens it (its own credentials).
        Some(CheckpointLocation::Store(location)) => Ok(Placement {
            dir: location.url_of(&format!("cluster-state/{i}")).into(),
            temporary: None,
        }),
        None => {
            let dir = temporary.get_or_insert_with(|| {
                Arc::new(TemporaryDir(std::env::temp_dir().join(format!(
                    "flumen-cluster-state-{}",
                    crate::checkpoint::new_id()
                ))))
            });
            Ok(Placement {
                dir: dir.0.join(i.to_string()),
                temporary: Some(Arc::clone(dir)),
            })
        }
    }
}

/// How a batch runs.
#[derive(Clone, Copy, Default)]
pub(crate) struct Replay<'a> {
    /// The ranges the offset log recorded (a replay), instead of planning.
    pub recorded: Option<&'a OffsetEntry>,
    /// The sinks already committed this batch: rebuild state only.
    pub committed: bool,
}

impl Pipeline {
    /// Plan every node once.
    pub async fn plan(
        query_id: String,
        graph: Graph,
        session: SessionContext,
        interval: Duration,
        cluster: Option<crate::cluster::ClusterUrl>,
        checkpoint: Option<&crate::checkpoint::CheckpointLocation>,
    ) -> Result<Self> {
        let mut operators = Vec::new();
        let mut temporary = None;
        for (i, mut node) in graph.operators.into_iter().enumerate() {
            if cluster.is_some() && node.op.can_partition_on_cluster() {
                let placement = state_placement(i, checkpoint, &mut temporary)?;
                node.op.partition_on_cluster(placement);
            }
            // Plans of the context's session are fused by its optimizer rule
            // (`split::FuseSplitUnnest`); an operator may build its own around them.
            let plan = node.op.plan_input(&node.input).await?;
            operators.push((node, plan));
        }
        let mut outputs = Vec::new();
        for node in graph.outputs {
            let plan = node.df.clone().create_physical_plan().await?;
            outputs.push((node, plan));
        }
        // Tell each source which of its columns the plans read (it may skip the rest).
        let plans: Vec<&Arc<dyn ExecutionPlan>> = operators
            .iter()
            .map(|(_, p)| p)
            .chain(outputs.iter().map(|(_, p)| p))
            .collect();
        let mut sources = graph.sources;
        for s in &mut sources {
            let read = s.slot.columns_read(&plans)?;
            if read.len() < s.slot.schema().fields().len() {
                s.projection = Some(read);
            }
        }
        let slots = sources
            .iter()
            .flat_map(|s| std::iter::once(&s.slot).chain(s.errors_slot.as_ref()))
            .chain(operators.iter().map(|(n, _)| &n.slot))
            .cloned()
            .collect();
        let (fused_outputs, fused_operators) = if cluster.is_some() {
            fuse_on_cluster(&operators, &outputs)?
        } else {
            (vec![None; outputs.len()], vec![false; operators.len()])
        };
        let task_ctx = session.task_ctx();
        Ok(Self {
            fused_outputs,
            fused_operators,
            end_of_input: false,
            query_id,
            pipeline_id: crate::checkpoint::new_id(),
            cluster: cluster.map(|url| crate::cluster::Cluster::new(url, &task_ctx)),
            slots,
            task_ctx,
            session,
            interval,
            sources,
            operators,
            outputs,
            checkpoint: None,
            snapshot_every: 1,
            last_snapshot: None,
            carried_rejected: 0,
            initial_state: None,
        })
    }

    /// What a checkpoint must match: one line per source (its schema and what it
    /// reads), per operator (what it computes, then its input's logical plan, one line
    /// per node — the filters and projections its state is built from) and per
    /// output (its schema).
    pub fn description(&self) -> Vec<String> {
        let fields = |s: &datafusion::arrow::datatypes::Schema| {
            s.fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = Vec::new();
        for s in &self.sources {
            let reads = s.source.describe();
            out.push(format!(
                "source {} ({}){}",
                s.source.name(),
                fields(&s.source.schema()),
                if reads.is_empty() {
                    String::new()
                } else {
                    format!(": {reads}")
                }
            ));
        }
        for (i, (node, _)) in self.operators.iter().enumerate() {
            out.push(format!(
                "operator {i} {} ({})",
                node.op.describe(),
                fields(&node.op.output_schema())
            ));
            for line in node
                .input
                .logical_plan()
                .display_indent()
                .to_string()
                .lines()
            {
                out.push(format!("operator {i} input: {}", line.trim_end()));
            }
        }
        for (i, (node, plan)) in self.outputs.iter().enumerate() {
            out.push(format!(
                "output {i} {:?} ({})",
                node.kind,
                fields(&plan.schema())
            ));
        }
        out
    }

    /// Opens the checkpoint at `dir`: refuses another query's checkpoint and
    /// operators that cannot keep state in one; returns what an earlier run left.
    pub async fn open_checkpoint(
        &mut self,
        location: crate::checkpoint::CheckpointLocation,
        zero_time: Time,
        snapshot_every: u64,
    ) -> Result<Recovered> {
        if !(1..=crate::checkpoint::RETAINED).contains(&snapshot_every) {
            return crate::plan_err!(
                "checkpoint_interval must be between 1 and {} batches, got {snapshot_every}",
                crate::checkpoint::RETAINED
            );
        }
        self.snapshot_every = snapshot_every;
        // Each operator can keep its state in a checkpoint; the state before the first
        // batch is kept for a restart before the first snapshot.
        let mut initial = Vec::with_capacity(self.operators.len());
        for (node, _) in &mut self.operators {
            initial.push(node.op.snapshot()?);
        }
        if self.initial_state.is_none() {
            self.initial_state = Some(initial);
        }
        // Reopened after a failure: the earlier run's lock goes first.
        self.checkpoint = None;
        let description = self.description();
        let (cp, recovered) =
            Checkpoint::open(location, description.clone(), self.interval).await?;
        self.pipeline_id = cp.id().to_string();
        for s in &self.sources {
            s.source.use_checkpoint(cp.source_store(s.source.name()));
        }
        cp.write_metadata(
            description,
            self.interval,
            recovered.zero_time.unwrap_or(zero_time),
        )
        .await?;
        self.checkpoint = Some(cp);
        Ok(recovered)
    }

    /// After a restart: restores the newest snapshot, runs again the batches after it
    /// with their recorded ranges (the sinks see only those they had not committed),
    /// and tells each source where the last planned batch ended. Returns the id and
    /// time of the last batch run.
    pub async fn recover(
        &mut self,
        recovered: Recovered,
        zero_time: Time,
        clock: &dyn Clock,
    ) -> Result<Option<(u64, Time)>> {
        let Some(last) = recovered.last_planned else {
            return Ok(None);
        };
        let stateful = !self.operators.is_empty();
        self.last_snapshot = None;
        if recovered.snapshot.is_none()
            && let Some(initial) = &self.initial_state
        {
            // No snapshot yet: batches run again from the first, on fresh state.
            for ((node, _), state) in self.operators.iter_mut().zip(initial.clone()) {
                node.op.restore(state)?;
            }
        }
        let first = match (&recovered.snapshot, recovered.last_committed) {
            (Some(s), _) if stateful => s.batch_id + 1,
            (None, _) if stateful => 0,
            (_, Some(c)) => c + 1,
            (_, None) => 0,
        };
        if let Some(snapshot) = recovered.snapshot.filter(|_| stateful) {
            self.last_snapshot = Some(snapshot.batch_id);
            for (index, state) in snapshot.operators {
                let Some((node, _)) = self.operators.get_mut(index) else {
                    return Err(crate::Error::Checkpoint(format!(
                        "the snapshot of batch {} has state for operator {index}, which this query does not have",
                        snapshot.batch_id
                    )));
                };
                node.op.restore(state)?;
            }
        }
        log::info!(
            "resuming from checkpoint: batches {first}..={} run again (last committed: {:?})",
            last.batch_id,
            recovered.last_committed
        );
        for id in first..=last.batch_id {
            let entry = if id == last.batch_id {
                last.clone()
            } else {
                self.checkpoint
                    .as_ref()
                    .expect("recovering from a checkpoint")
                    .read_offsets(id)
                    .await?
            };
            let replay = Replay {
                recorded: Some(&entry),
                committed: recovered.last_committed.is_some_and(|c| id <= c),
            };
            let t = Time::from_millis(entry.batch_time_ms);
            let info = self
                .run_batch(id, t, zero_time, clock, replay)
                .await
                .map_err(|e| crate::Error::Batch {
                    batch_time: t,
                    source: Box::new(e),
                })?;
            self.carried_rejected += info.rejected_rows;
        }
        for (s, (name, range)) in self.sources.iter().zip(&last.ranges) {
            if s.source.name() != name {
                return Err(crate::Error::Checkpoint(format!(
                    "the offset log names source '{name}' where this query has '{}'",
                    s.source.name()
                )));
            }
            s.source.restore(range).await?;
        }
        Ok(Some((last.batch_id, Time::from_millis(last.batch_time_ms))))
    }

    /// Open sources and sinks.
    pub async fn open(&self) -> Result<()> {
        for s in &self.sources {
            s.source.open(s.projection.as_deref()).await?;
        }
        for (i, (node, plan)) in self.outputs.iter().enumerate() {
            if let OutputKind::Sink(sink) = &node.kind {
                sink.open(&self.output_id(i), plan.schema()).await?;
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        for s in &self.sources {
            if let Err(e) = s.source.close().await {
                log::warn!("closing source '{}': {e}", s.source.name());
            }
        }
        for (node, _) in &self.outputs {
            if let OutputKind::Sink(sink) = &node.kind
                && let Err(e) = sink.close().await
            {
                log::warn!("closing sink '{}': {e}", sink.name());
            }
        }
        if let Some(cp) = &self.checkpoint {
            cp.close().await;
        }
    }

    /// Under `AvailableNow`: fix what each source holds now.
    pub async fn freeze_available_now(&self) -> Result<()> {
        for s in &self.sources {
            s.source.freeze_available_now().await?;
        }
        Ok(())
    }

    /// Whether every source has planned all it holds.
    pub async fn drained(&self) -> Result<bool> {
        for s in &self.sources {
            if !s.source.is_drained().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Under `AvailableNow`, once the sources are drained: whether one more batch
    /// must run to close what event time left open — windows, sessions, a window
    /// top-N's rankings, an outer join's unmatched rows — because nothing would
    /// ever emit them: no checkpoint keeps them for a later run, and an operator has
    /// a watermark (it has seen event times). If so, that batch is marked the last.
    pub fn end_input(&mut self) -> bool {
        if self.end_of_input
            || self.checkpoint.is_some()
            || !self
                .operators
                .iter()
                .any(|(n, _)| n.op.watermark().is_some())
        {
            return false;
        }
        self.end_of_input = true;
        true
    }

    /// The query id sinks see: the query's name, its output, and the pipeline's id —
    /// the same at every restart on one checkpoint, different for any other pipeline.
    fn output_id(&self, i: usize) -> String {
        format!("{}-output-{i}@{}", self.query_id, self.pipeline_id)
    }

    /// Run the five steps for one batch.
    pub async fn run_batch(
        &mut self,
        batch_id: u64,
        batch_time: Time,
        zero_time: Time,
        clock: &dyn Clock,
        replay: Replay<'_>,
    ) -> Result<BatchInfo> {
        let started = clock.now();
        let wall = Instant::now();
        let scheduling_delay =
            Duration::from_millis((started.as_millis() - batch_time.as_millis()).max(0) as u64);
        // 1. plan
        let mut ranges = Vec::with_capacity(self.sources.len());
        if let Some(entry) = replay.recorded {
            ranges.extend(entry.ranges.iter().map(|(_, r)| r.clone()));
        } else {
            for s in &self.sources {
                let batch = BatchContext {
                    batch_id,
                    batch_time,
                    interval: self.interval,
                    max_records: s.limit.max_records(self.interval),
                };
                ranges.push(s.source.plan_batch(&batch).await?);
            }
            if let Some(cp) = &self.checkpoint {
                cp.write_offsets(&OffsetEntry {
                    batch_id,
                    batch_time_ms: batch_time.as_millis(),
                    ranges: self
                        .sources
                        .iter()
                        .map(|s| s.source.name().to_string())
                        .zip(ranges.iter().cloned())
                        .collect(),
                })
                .await?;
            }
        }
        // 2. read
        let mut input_rows = Vec::with_capacity(self.sources.len());
        let mut rejected_rows = if replay.recorded.is_none() {
            std::mem::take(&mut self.carried_rejected)
        } else {
            0
        };
        let mut read_by_executors = Vec::new();
        let mut uncounted = Vec::new();
        for (s, range) in self.sources.iter().zip(&ranges) {
            if self.cluster.is_some()
                && let Some(mut scan) = s.source.cluster_scan(range, s.slot.partitions())?
            {
                scan.stream = s.source.name().to_string();
                read_by_executors.push(s.source.name().to_string());
                if scan.rows.is_none() {
                    uncounted.push(s.source.name().to_string());
                }
                // Read by the executors: nothing here, and nothing rejected here.
                input_rows.push((s.source.name().to_string(), scan.rows.unwrap_or(0)));
                if let Some(slot) = &s.errors_slot {
                    slot.fill(Vec::new());
                }
                s.slot.fill_remote(scan, range.clone());
                continue;
            }
            let crate::source::SourceBatch {
                partitions: data,
                rejected,
            } = s.source.read_batch(range).await?;
            if let Some(slot) = &s.errors_slot {
                slot.fill(if rejected.is_empty() {
                    Vec::new()
                } else {
                    vec![rejected_batch(s.source.name(), &rejected)?]
                });
            }
            if !rejected.is_empty() && !replay.committed {
                rejected_rows += rejected.len() as u64;
                match &s.errors {
                    Some(sink) => {
                        write_rejected(sink, &self.query_id, s.source.name(), batch_time, rejected)
                            .await?
                    }
                    None => log::warn!(
                        "{}: skipped {} bad records in batch {batch_time}",
                        s.source.name(),
                        rejected.len()
                    ),
                }
            }
            let rows: usize = data.iter().flatten().map(|b| b.num_rows()).sum();
            input_rows.push((s.source.name().to_string(), rows as u64));
            if data.len() > 1 {
                s.slot.fill_partitioned(data);
            } else {
                s.slot.fill(data.into_iter().flatten().collect());
            }
        }
        // 3. run
        let mut op_ctx = OperatorContext {
            batch_time,
            zero_time,
            batch_interval: self.interval,
            input_watermark: None,
            end_of_input: self.end_of_input,
        };
        let mut state_rows = 0;
        let mut state_bytes = 0;
        let mut operators = Vec::with_capacity(self.operators.len());
        let mut late_rows = 0;
        let mut watermark: Option<i64> = None;
        // Source rows a query's expression failed on, set aside by their stream's
        // on_error (source index, rows).
        let mut set_aside: Vec<(usize, Vec<crate::source::Rejected>)> = Vec::new();
        for i in 0..self.operators.len() {
            let (done, rest) = self.operators.split_at_mut(i);
            let (node, plan) = &mut rest[0];
            op_ctx.input_watermark = node.op.watermark_source().and_then(|(source, column)| {
                done.get(source)
                    .and_then(|(upstream, _)| upstream.op.output_watermark(column))
            });
            // The last batch of finite input is due for every operator with event
            // time, whatever its slide; the others keep their own.
            let closing = self.end_of_input && node.op.watermark().is_some();
            if closing || batch_time.is_multiple_of(zero_time, node.input_slide) {
                node.op.begin_batch(&op_ctx);
                if self.fused_operators[i] && !replay.committed {
                    // Its plan runs inside the output it feeds (`fuse_on_cluster`): the
                    // operator takes note of the batch, its output stays on the cluster.
                    match node.op.process(&op_ctx, Vec::new()).await? {
                        Some(out) => node.slot.fill(out),
                        None => node.slot.clear(),
                    }
                    operators.push(crate::listener::OperatorStateInfo {
                        name: node.op.name(),
                        ..Default::default()
                    });
                    continue;
                }
                let runner = Runner {
                    task_ctx: &self.task_ctx,
                    cluster: self.cluster.as_ref(),
                    slots: &self.slots,
                };
                let (input, aside) =
                    execute_setting_aside(plan, &runner, &self.sources, batch_time).await?;
                set_aside.extend(aside);
                let out = node
                    .op
                    .process(&op_ctx, input.into_iter().flatten().collect())
                    .await?;
                // On a cluster, an operator may emit with a plan of its own, run after
                // the batch was folded in (append-mode windows).
                let out = match node.op.emit_plan() {
                    Some(emit) => {
                        let rows = runner.execute(&emit).await?;
                        Some(
                            node.op
                                .process_emitted(rows.into_iter().flatten().collect())?,
                        )
                    }
                    None => out,
                };
                match out {
                    Some(out) => node.slot.fill(out),
                    None => node.slot.clear(),
                }
            } else {
                node.slot.clear();
            }
            let stats = node.op.state_stats();
            state_rows += stats.rows;
            state_bytes += stats.memory_bytes;
            operators.push(crate::listener::OperatorStateInfo {
                name: node.op.name(),
                rows: stats.rows,
                memory_bytes: stats.memory_bytes,
                spilled_bytes: stats.spilled_bytes,
                evicted_rows: stats.evicted,
                checkpoint_bytes: 0,
            });
            late_rows += node.op.late_rows();
            // The query's watermark is its slowest operator's (Spark's global minimum).
            if let Some(w) = node.op.watermark() {
                watermark = Some(watermark.map_or(w, |m| m.min(w)));
            }
        }
        // 3 (outputs) and 4. write
        let mut output_rows = 0u64;
        let mut written_by_tasks = Vec::new();
        let mut sink_retries = 0u64;
        for (i, (node, plan)) in self.outputs.iter().enumerate() {
            if replay.committed || !batch_time.is_multiple_of(zero_time, node.slide) {
                continue;
            }
            let runner = Runner {
                task_ctx: &self.task_ctx,
                cluster: self.cluster.as_ref(),
                slots: &self.slots,
            };
            // A sink the tasks write: they write, the driver commits what they wrote.
            if let (Some(_), OutputKind::Sink(sink)) = (&self.cluster, &node.kind)
                && let Some(write) = sink.write_on_cluster()
            {
                let plan = self.fused_outputs[i].as_ref().unwrap_or(plan);
                let written = Arc::new(crate::cluster::write::WriteExec::try_new(
                    Arc::clone(plan),
                    Arc::new(write),
                    batch_time.as_millis(),
                )?) as Arc<dyn ExecutionPlan>;
                let (parts, aside) =
                    execute_setting_aside(&written, &runner, &self.sources, batch_time).await?;
                set_aside.extend(aside);
                let batches: Vec<RecordBatch> = parts.into_iter().flatten().collect();
                let (files, rows) = crate::cluster::write::written(&batches);
                output_rows += rows;
                sink.written_by_tasks(batch_time, files)?;
                written_by_tasks.push(sink.name().to_string());
                sink_retries +=
                    write_with_retries(sink, &self.output_id(i), batch_time, Vec::new()).await?;
                continue;
            }
            let (parts, aside) =
                execute_setting_aside(plan, &runner, &self.sources, batch_time).await?;
            set_aside.extend(aside);
            let parts = relabel(parts, &plan.schema())?;
            output_rows += parts
                .iter()
                .flatten()
                .map(|b| b.num_rows() as u64)
                .sum::<u64>();
            match &node.kind {
                OutputKind::Print(n) => {
                    let batches: Vec<RecordBatch> = parts.into_iter().flatten().collect();
                    print!("{}", format_print(batch_time, &batches, *n)?);
                }
                OutputKind::ForeachBatch(f) => {
                    let table = MemTable::try_new(plan.schema(), parts)?;
                    let df = self.session.read_table(Arc::new(table))?;
                    f(batch_time, df).await?;
                }
                OutputKind::Sink(sink) => {
                    sink_retries +=
                        write_with_retries(sink, &self.output_id(i), batch_time, parts).await?;
                }
            }
        }
        // A sink that acts on event time gets the query's watermark once the batch
        // is written (replayed batches too: the sink's step must be idempotent).
        if let Some(w) = watermark {
            for (node, _) in &self.outputs {
                if let OutputKind::Sink(sink) = &node.kind
                    && sink.needs_watermark()
                {
                    sink.advance_watermark(Time::from_millis(w)).await?;
                }
            }
        }
        if !replay.committed {
            for (part, (si, rows)) in set_aside.into_iter().enumerate() {
                let s = &self.sources[si];
                rejected_rows += rows.len() as u64;
                match &s.errors {
                    // After the decoder's rejects (partition 0) of the same batch.
                    Some(sink) => {
                        write_rejected_part(
                            sink,
                            &self.query_id,
                            s.source.name(),
                            batch_time,
                            part + 1,
                            rows,
                        )
                        .await?
                    }
                    None => log::warn!(
                        "{}: skipped {} rows a query's expression failed on in batch {batch_time}",
                        s.source.name(),
                        rows.len()
                    ),
                }
            }
        }
        // 5. commit: the log, the state, then the sources may free what they held —
        // with stateful operators, only what the newest snapshot covers (recovery
        // replays the batches after it from the sources).
        let mut free = true;
        if let Some(cp) = &self.checkpoint {
            if !replay.committed {
                cp.write_commit(batch_id, batch_time).await?;
            }
            let due = self
                .last_snapshot
                .is_none_or(|last| batch_id >= last + self.snapshot_every);
            if !self.operators.is_empty() {
                if due {
                    let mut states = Vec::with_capacity(self.operators.len());
                    for (i, (node, _)) in self.operators.iter_mut().enumerate() {
                        states.push((i, node.op.snapshot()?));
                    }
                    let written = cp
                        .write_snapshot(&crate::checkpoint::Snapshot {
                            batch_id,
                            operators: states,
                        })
                        .await?;
                    for (i, bytes) in written {
                        if let Some(o) = operators.get_mut(i) {
                            o.checkpoint_bytes = bytes;
                        }
                    }
                    self.last_snapshot = Some(batch_id);
                } else {
                    free = false;
                }
            }
        }
        if free {
            for (s, range) in self.sources.iter().zip(&ranges) {
                s.source.commit(range).await?;
            }
        }
        let cluster = match &self.cluster {
            Some(c) => {
                let (info, rows_read) = c.take_batch().await;
                // The rows of a batch the executors read, as their tasks counted them.
                uncounted.retain(|stream| match rows_read.get(stream) {
                    Some(n) => {
                        for (name, rows) in input_rows.iter_mut() {
                            if name == stream {
                                *rows = *n;
                            }
                        }
                        false
                    }
                    None => true,
                });
                Some(crate::listener::ClusterInfo {
                    executors: c.executor_count().await,
                    read_by_executors,
                    uncounted,
                    written_by_tasks,
                    ..info
                })
            }
            None => None,
        };
        let processing_time = wall.elapsed();
        for (s, (_, rows)) in self.sources.iter_mut().zip(&input_rows) {
            if let Some(e) = s.limit.estimator.as_mut() {
                e.update(*rows, processing_time, scheduling_delay);
            }
        }
        Ok(BatchInfo {
            batch_id,
            batch_time,
            input_rows,
            source_ranges: self
                .sources
                .iter()
                .map(|s| s.source.name().to_string())
                .zip(ranges)
                .collect(),
            scheduling_delay,
            processing_time,
            total_delay: scheduling_delay + processing_time,
            source_lag: self
                .sources
                .iter()
                .filter_map(|s| Some((s.source.name().to_string(), s.source.lag()?)))
                .collect(),
            output_rows,
            operators,
            state_rows,
            state_bytes,
            watermark: watermark.map(Time::from_millis),
            late_rows,
            rejected_rows,
            sink_retries,
            cluster,
        })
    }
}

/// How often a sink's write of one batch is tried before the query fails.
pub(crate) const SINK_ATTEMPTS: u32 = 4;
/// The wait before the second attempt; it doubles for each one after.
const SINK_BACKOFF: Duration = Duration::from_millis(100);

/// Step 4 for one sink: every partition, then the commit. A retryable failure (server
/// down, disk full) writes the whole batch again after a growing wait — the keys are
/// the same, so the sink overwrites or skips what the failed attempt left — and
/// nothing after this batch runs until it succeeds; after [`SINK_ATTEMPTS`] the batch
/// fails with the last error. Returns the number of retries it took.
async fn write_with_retries(
    sink: &Arc<dyn crate::sink::Sink>,
    query_id: &str,
    batch_time: Time,
    parts: Vec<Vec<RecordBatch>>,
) -> Result<u64> {
    let mut wait = SINK_BACKOFF;
    let mut attempt = 1;
    loop {
        let result = async {
            let key = |partition| WriteKey {
                query_id: query_id.to_string(),
                batch_time,
                partition,
            };
            if sink.writes_partitions_in_parallel() && parts.len() > 1 {
                let tasks: Vec<_> = parts
                    .iter()
                    .enumerate()
                    .map(|(partition, batches)| {
                        let (sink, key, batches) =
                            (Arc::clone(sink), key(partition), batches.clone());
                        tokio::spawn(async move { sink.write(&key, batches).await })
                    })
                    .collect();
                // Every task is awaited (none left writing behind a retry), then the
                // first error is the batch's.
                let mut first_error = None;
                for task in tasks {
                    let written = task.await.map_err(|e| crate::Error::Sink {
                        sink_name: sink.name().to_string(),
                        message: format!("a partition's write stopped: {e}"),
                        retryable: false,
                    });
                    if let Err(e) | Ok(Err(e)) = written {
                        first_error.get_or_insert(e);
                    }
                }
                if let Some(e) = first_error {
                    return Err(e);
                }
            } else {
                for (partition, batches) in parts.iter().enumerate() {
                    sink.write(&key(partition), batches.clone()).await?;
                }
            }
            sink.commit(query_id, batch_time, parts.len()).await
        }
        .await;
        match result {
            Ok(()) => return Ok(u64::from(attempt - 1)),
            Err(e) if e.is_retryable() && attempt < SINK_ATTEMPTS => {
                log::warn!(
                    "sink '{}': batch {batch_time} failed (attempt {attempt} of {SINK_ATTEMPTS}), trying again in {:?}: {e}",
                    sink.name(),
                    wait
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) if e.is_retryable() => {
                return Err(crate::Error::Sink {
                    sink_name: sink.name().to_string(),
                    message: format!("gave up after {attempt} attempts: {e}"),
                    retryable: false,
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes a source's rejected records to its dead-letter sink, keyed by source and
/// batch time (a replay writes the same key again).
async fn write_rejected(
    sink: &Arc<dyn crate::sink::Sink>,
    query_id: &str,
    source: &str,
    batch_time: Time,
    rejected: Vec<crate::source::Rejected>,
) -> Result<()> {
    write_rejected_part(sink, query_id, source, batch_time, 0, rejected).await
}

/// [`write_rejected`] under write key partition `partition` (0: the decoder's rejects;
/// 1 and up: rows set aside while the batch's plans ran).
async fn write_rejected_part(
    sink: &Arc<dyn crate::sink::Sink>,
    query_id: &str,
    source: &str,
    batch_time: Time,
    partition: usize,
    rejected: Vec<crate::source::Rejected>,
) -> Result<()> {
    let batch = rejected_batch(source, &rejected)?;
    // Keyed by the query that read the records: each query reading the stream writes
    // its own, and a replay rewrites the same key.
    let key = WriteKey {
        query_id: format!("{source}@{query_id}"),
        batch_time,
        partition,
    };
    sink.write(&key, vec![batch]).await?;
    sink.commit(&key.query_id, batch_time, partition + 1).await
}

/// Most plan executions that may be spent finding the rows a failing expression
/// fails on (each halves a set of rows); past it the batch fails.
const MAX_ISOLATION_RUNS: usize = 4096;

/// Whether `e` is an expression failing on a value (a cast, an overflow, a division
/// by zero, a function's bad argument) rather than a failure of the engine or a sink.
fn is_row_error(e: &crate::Error) -> bool {
    use datafusion::arrow::error::ArrowError;
    use datafusion::error::DataFusionError;
    let arrow = |a: &ArrowError| {
        matches!(
            a,
            ArrowError::CastError(_)
                | ArrowError::ComputeError(_)
                | ArrowError::DivideByZero
                | ArrowError::ArithmeticOverflow(_)
                | ArrowError::ParseError(_)
                | ArrowError::InvalidArgumentError(_)
        )
    };
    match e {
        crate::Error::Arrow(a) => arrow(a),
        crate::Error::DataFusion(d) => match d.find_root() {
            DataFusionError::ArrowError(a, _) => arrow(a),
            DataFusionError::Execution(_) => true,
            _ => false,
        },
        _ => false,
    }
}

/// Runs `plan`. When it fails evaluating an expression on source rows, the rows at
/// fault are found by halving each source's batch (the plan has no side effects: its
/// stateful operators run after it); the rows of a source whose `on_error` sets bad
/// rows aside leave the batch and are returned, and the plan runs without them.
/// Otherwise the error names the stream, the batch and the row.
async fn execute_setting_aside(
    plan: &Arc<dyn ExecutionPlan>,
    runner: &Runner<'_>,
    sources: &[SourceNode],
    batch_time: Time,
) -> Result<(
    Vec<Vec<RecordBatch>>,
    Vec<(usize, Vec<crate::source::Rejected>)>,
)> {
    let mut error = match runner.execute(plan).await {
        Ok(parts) => return Ok((parts, Vec::new())),
        Err(e) => e,
    };
    let mut aside = Vec::new();
    let mut runs = 0usize;
    if is_row_error(&error) {
        // The rows are found here: a batch the executors read is read here too.
        for s in sources {
            if let Some(remote) = s.slot.remote() {
                let data = s.source.read_batch(&remote.range).await?.partitions;
                if data.len() > 1 {
                    s.slot.fill_partitioned(data);
                } else {
                    s.slot.fill(data.into_iter().flatten().collect());
                }
            }
        }
    }
    for (si, s) in sources.iter().enumerate() {
        if !is_row_error(&error) {
            break;
        }
        let saved = s.slot.saved();
        let batches: Vec<RecordBatch> = saved.iter().flatten().cloned().collect();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            continue;
        }
        // Without this source's rows, does the plan still fail? Then they are not at fault.
        s.slot.fill(Vec::new());
        runs += 1;
        if runner.execute(plan).await.is_err() {
            s.slot.put(saved);
            continue;
        }
        let all = datafusion::arrow::compute::concat_batches(s.slot.schema(), &batches)?;
        let mut bad: Vec<(usize, String)> = Vec::new();
        let mut pending = vec![(0usize, rows)];
        while let Some((lo, hi)) = pending.pop() {
            if runs >= MAX_ISOLATION_RUNS {
                s.slot.put(saved);
                return Err(crate::Error::Plan(format!(
                    "stream {}: the query fails on too many rows of batch {batch_time} to set them aside one by one (more than {MAX_ISOLATION_RUNS} runs); the first error: {error}",
                    s.source.name()
                )));
            }
            s.slot.fill(vec![all.slice(lo, hi - lo)]);
            runs += 1;
            match runner.execute(plan).await {
                Ok(_) => {}
                Err(e) if is_row_error(&e) => {
                    if hi - lo == 1 {
                        bad.push((lo, e.to_string()));
                    } else {
                        let mid = lo + (hi - lo) / 2;
                        pending.push((mid, hi));
                        pending.push((lo, mid));
                    }
                }
                Err(e) => {
                    s.slot.put(saved);
                    return Err(e);
                }
            }
        }
        if bad.is_empty() {
            // Only the rows together fail (an aggregate overflowing): no row to blame.
            s.slot.put(saved);
            continue;
        }
        if !s.source.sets_aside_bad_rows() {
            s.slot.put(saved);
            let (row, e) = &bad[0];
            return Err(crate::Error::Plan(format!(
                "stream {}: the query failed on row {row} of batch {batch_time}: {e}; the row: {}; on_error = 'skip' or 'dead_letter' on a stream that decodes records (socket, files, \
                 kafka) sets such rows aside",
                s.source.name(),
                row_json(&all, *row)
            )));
        }
        let mut keep = vec![true; rows];
        for (row, _) in &bad {
            keep[*row] = false;
        }
        let good = datafusion::arrow::compute::filter_record_batch(
            &all,
            &datafusion::arrow::array::BooleanArray::from(keep),
        )?;
        s.slot.fill(vec![good]);
        aside.push((
            si,
            bad.into_iter()
                .map(|(row, e)| crate::source::Rejected {
                    position: format!("batch {batch_time} row {row}"),
                    record: row_json(&all, row),
                    error: e,
                })
                .collect(),
        ));
        match runner.execute(plan).await {
            Ok(parts) => return Ok((parts, aside)),
            Err(e) => error = e,
        }
    }
    Err(error)
}

/// Row `row` of `batch` as a JSON object, cut at 1 KiB.
fn row_json(batch: &RecordBatch, row: usize) -> String {
    let mut out = Vec::new();
    let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
    if w.write(&batch.slice(row, 1)).is_err() || w.finish().is_err() {
        return format!("(row {row})");
    }
    let mut text = String::from_utf8_lossy(&out).trim_end().to_string();
    if text.len() > 1024 {
        let mut cut = 1024;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// A source's rejected records as rows of [`crate::source::rejected_schema`].
fn rejected_batch(source: &str, rejected: &[crate::source::Rejected]) -> Result<RecordBatch> {
    use datafusion::arrow::array::StringArray;
    Ok(RecordBatch::try_new(
        crate::source::rejected_schema(),
        vec![
            Arc::new(StringArray::from(vec![source; rejected.len()])),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|r| &r.position),
            )),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|r| &r.record),
            )),
            Arc::new(StringArray::from_iter_values(
                rejected.iter().map(|r| &r.error),
            )),
        ],
    )?)
}

/// Batches as the plan's output schema: a `UNION ALL` passes each input's batches on
/// with that input's column names (and, in DataFusion 55, sometimes `Utf8View` where
/// the plan says `Utf8`), which sinks and readers must not see.
fn relabel(
    parts: Vec<Vec<RecordBatch>>,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<Vec<Vec<RecordBatch>>> {
    parts
        .into_iter()
        .map(|p| {
            p.into_iter()
                .map(|b| crate::source::conform(schema, b))
                .collect()
        })
        .collect()
}

/// Where a batch's plans run: here, or on the query's cluster with the rows of the
/// slots they scan.
struct Runner<'a> {
    task_ctx: &'a Arc<TaskContext>,
    cluster: Option<&'a crate::cluster::Cluster>,
    slots: &'a [Arc<crate::slot::BatchSlot>],
}

impl Runner<'_> {
    async fn execute(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<Vec<RecordBatch>>> {
        match self.cluster {
            Some(cluster) => cluster.execute(plan, self.slots, self.task_ctx).await,
            None => execute(plan, self.task_ctx).await,
        }
    }
}

/// Execute a plan built once, for one more batch.
pub(crate) async fn execute(
    plan: &Arc<dyn ExecutionPlan>,
    task_ctx: &Arc<TaskContext>,
) -> Result<Vec<Vec<RecordBatch>>> {
    let plan = reset_plan_states(Arc::clone(plan))?;
    Ok(collect_partitioned(plan, Arc::clone(task_ctx)).await?)
}
