//! Running a query's batches on an Apache Ballista cluster.
//!
//! The driver (the process that owns the query) keeps what Spark's driver keeps: the
//! plans, the batch schedule, the sources' offsets, the checkpoint, the operators'
//! state and the sinks' commits. What a batch computes from its rows — every output's
//! plan and every stateful operator's input plan (for an aggregate: the batch's
//! partial aggregate) — is sent to the scheduler as a physical plan, one Ballista job
//! per plan, split into stages at its exchanges and run as tasks on the executors.
//!
//! ```text
//!   driver: plan built once ──ship──▶ the same plan, each scan of a slot replaced by
//!           (StreamingTableExec          the batch's rows (MemorySourceConfig)
//!            over BatchSlots)                  │ FlumenCodec (codec.rs)
//!                                              ▼
//!   scheduler ──stages──▶ executors (tasks) ──▶ results fetched by the driver
//! ```
//!
//! Sources the executors can read (`scan.rs`) travel as a description of the batch
//! (event ranges, files, offsets). What the driver holds stays here as far as it can:
//! a plan needing nothing of the cluster runs here, and each part of a plan over
//! driver-held rows up to its first exchange runs here, its result shipped in its
//! place (`run_here`). Processes: [`node`] starts a scheduler or an executor with
//! Flumen's codec and functions.

pub mod codec;
pub mod join;
pub mod node;
pub mod report;
pub mod scan;
pub mod state;
pub mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;
use parking_lot::Mutex;

use crate::listener::ClusterInfo;
use crate::slot::BatchSlot;
use crate::{Error, Result};

pub use codec::FlumenCodec;

/// The port a scheduler listens on unless told otherwise (Ballista's).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// The largest message (a plan with its batch's rows, a result) the driver, the
/// scheduler and the executors exchange: 1 GiB (Ballista's default is 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Where a cluster's scheduler is: `df://host:port` (`df://host` takes port 50050).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    pub host: String,
    pub port: u16,
}

impl ClusterUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Plan(format!(
                "cluster '{url}': {why}; write the scheduler's address as df://host:port, \
                 e.g. df://127.0.0.1:50050"
            ))
        };
        let rest = url
            .trim()
            .strip_prefix("df://")
            .ok_or_else(|| bad("not a df:// URL"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            ),
            None => (rest, DEFAULT_SCHEDULER_PORT),
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("no host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    /// The scheduler's gRPC endpoint.
    fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "df://{}:{}", self.host, self.port)
    }
}

/// A query's connection to a cluster: every plan it executes goes to the scheduler.
#[derive(Debug)]
pub(crate) struct Cluster {
    url: ClusterUrl,
    session_id: String,
    config: BallistaConfig,
    session_config: SessionConfig,
    codec: FlumenCodec,
    batch: Mutex<ClusterInfo>,
    /// The names of the jobs the batch ran, for their reports (`report.rs`).
    job_names: Mutex<Vec<String>>,
    /// Jobs named so far.
    named: std::sync::atomic::AtomicU64,
    /// The executors' count and when the scheduler gave it.
    executors: Mutex<Option<(Instant, Option<u64>)>>,
}

/// How long an executors' count is shown before the scheduler is asked again.
const EXECUTORS_REFRESH: Duration = Duration::from_secs(5);

impl Cluster {
    /// A connection for a query whose local plans run with `task_ctx`'s settings.
    pub fn new(url: ClusterUrl, task_ctx: &TaskContext) -> Self {
        let session_config = task_ctx
            .session_config()
            .clone()
            .upgrade_for_ballista()
            .with_ballista_grpc_client_max_message_size(MAX_MESSAGE_BYTES)
            // The static planner: Ballista's adaptive one re-plans a stage's shuffle
            // from its measured input (an empty batch's hash exchange becomes one
            // partition), and state partitions must keep their count and routing.
            .set_str(
                ballista_core::config::BALLISTA_ADAPTIVE_PLANNER_ENABLED,
                "false",
            );
        Self {
            session_id: format!("flumen-{}", crate::checkpoint::new_id()),
            config: session_config.ballista_config(),
            session_config,
            codec: FlumenCodec::default(),
            executors: Mutex::new(None),
            job_names: Mutex::new(Vec::new()),
            named: std::sync::atomic::AtomicU64::new(0),
            batch: Mutex::new(ClusterInfo {
                url: url.to_string(),
                ..Default::default()
            }),
            url,
        }
    }

    /// What the cluster did since the last call (one batch), with the rows its scans
    /// read by stream, as the scheduler reports the batch's jobs (`report.rs`). When
    /// the reports do not come (a scheduler that is not `flumen scheduler`, or one that
    /// did not answer within its wait), the tasks are those the jobs planned, the
    /// retries unknown and the rows not counted — and a warning says so.
    pub async fn take_batch(&self) -> (ClusterInfo, std::collections::BTreeMap<String, u64>) {
        let mut info = {
            let mut b = self.batch.lock();
            let out = b.clone();
            *b = ClusterInfo {
                url: out.url.clone(),
                ..Default::default()
            };
            out
        };
        let names = std::mem::take(&mut *self.job_names.lock());
        let mut rows = std::collections::BTreeMap::new();
        if names.is_empty() {
            info.retries = Some(0);
            return (info, rows);
        }
        match self.reports(&names).await {
            Ok(reply) if reply.missing.is_empty() => {
                info.tasks = reply.jobs.values().map(|j| j.tasks).sum();
                info.retries = Some(reply.jobs.values().map(|j| j.retries).sum());
                for job in reply.jobs.into_values() {
                    for (stream, n) in job.rows_read {
                        let seen: &mut u64 = rows.entry(stream).or_default();
                        *seen = (*seen).max(n);
                    }
                }
            }
            Ok(reply) => log::warn!(
                "cluster {}: no report of jobs {} within {:?}: this batch's retries and \
                 rows read there are not counted",
                self.url,
                reply.missing.join(", "),
                report::REPORT_WAIT
            ),
            Err(e) => log::warn!(
                "cluster {}: no report of this batch's jobs ({e}): its retries and rows \
                 read there are not counted",
                self.url
            ),
        }
        (info, rows)
    }

    /// The scheduler's reports of jobs `names` of this session.
    async fn reports(&self, names: &[String]) -> Result<report::Reply> {
        let path = format!("/flumen/jobs?names={}", names.join(","));
        let body = node::http_get(&self.url, &path).await?;
        serde_json::from_str(&body).map_err(|e| Error::Cluster {
            url: self.url.to_string(),
            message: format!("the scheduler's job reports are not JSON: {e}"),
            retryable: false,
        })
    }

    /// The executors alive, as the scheduler counted them at most
    /// [`EXECUTORS_REFRESH`] ago (asked within a second; none when it cannot tell: the
    /// batch does not fail for that). Not asked every batch: a batch every 10 ms would
    /// pay a request each.
    pub async fn executor_count(&self) -> Option<u64> {
        if let Some((at, n)) = *self.executors.lock()
            && at.elapsed() < EXECUTORS_REFRESH
        {
            return n;
        }
        let n = tokio::time::timeout(Duration::from_secs(1), node::executor_count(&self.url))
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|n| n as u64);
        *self.executors.lock() = Some((Instant::now(), n));
        n
    }

    /// An error unless the scheduler answered within [`EXECUTORS_REFRESH`] or answers
    /// now (within a second): a batch that needs no job still fails, retryably, when
    /// the query's cluster is not there.
    async fn ensure_reachable(&self) -> Result<()> {
        if let Some((at, Some(_))) = *self.executors.lock()
            && at.elapsed() < EXECUTORS_REFRESH
        {
            return Ok(());
        }
        let asked = tokio::time::timeout(Duration::from_secs(1), node::executor_count(&self.url))
            .await
            .map_err(|_| "no answer within 1 s".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match asked {
            Ok(n) => {
                *self.executors.lock() = Some((Instant::now(), Some(n as u64)));
                Ok(())
            }
            Err(why) => Err(Error::Cluster {
                url: self.url.to_string(),
                message: format!(
                    "the scheduler or an executor cannot be reached ({})",
                    first_line(&why)
                ),
                retryable: true,
            }),
        }
    }

    /// Runs `plan` on the cluster with the rows `slots` hold now; its result comes
    /// back as one partition.
    ///
    /// What the driver holds stays here: a plan that needs nothing of the cluster
    /// (no stream the executors read, no state partition, no sink the tasks write)
    /// runs here whole, with no job; otherwise each part of it over rows the driver
    /// holds, up to the first exchange (a projection, a filter, a partial aggregate),
    /// runs here and its result ships in its place — a word count sends its partial
    /// counts, not its lines.
    pub async fn execute(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        slots: &[Arc<BatchSlot>],
        task_ctx: &Arc<TaskContext>,
    ) -> Result<Vec<Vec<RecordBatch>>> {
        if !needs_cluster(plan, slots) {
            // Not a silent local run: the cluster the query names must be there.
            self.ensure_reachable().await?;
            return crate::scheduler::execute(plan, task_ctx).await;
        }
        let local = run_here(Arc::clone(plan), slots, task_ctx).await?;
        let shipped = ship(&local, slots)?;
        let tasks = stage_tasks(&shipped);
        let name = format!(
            "{}{}:{}",
            report::JOB_NAME_PREFIX,
            self.session_id,
            self.named
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let session_config = self
            .session_config
            .clone()
            .set_str(ballista_core::config::BALLISTA_JOB_NAME, &name);
        let run = async {
            let stream = execute_physical_plan::<PhysicalPlanNode>(
                self.url.endpoint(),
                &self.config,
                Arc::clone(&shipped),
                &self.codec,
                self.session_id.clone(),
                session_config,
            )
            .await?;
            stream.try_collect::<Vec<RecordBatch>>().await
        };
        let batches = run.await.map_err(|e| self.error(e))?;
        self.job_names.lock().push(name);
        let mut b = self.batch.lock();
        b.jobs += 1;
        b.tasks += tasks;
        Ok(vec![batches])
    }

    /// A failure to reach the scheduler or an executor is the cluster's (retryable:
    /// the query recovers from its checkpoint when the cluster is back); a job the
    /// scheduler would not take is the cluster's too, and not retryable (a scheduler
    /// without Flumen's codec or functions refuses every plan). A job whose task
    /// failed evaluating the query is an execution error with the task's own message
    /// (Ballista's `Job <id> failed: DataFusion error: ` taken off), so that rows a
    /// query fails on are found, set aside or named as in local mode.
    fn error(&self, e: DataFusionError) -> Error {
        let text = e.to_string();
        let cluster = |message: String, retryable| Error::Cluster {
            url: self.url.to_string(),
            message,
            retryable,
        };
        let unreachable = [
            "transport error",
            "tcp connect error",
            "Connection refused",
            "connection error",
            "Unavailable",
            "dns error",
            "broken pipe",
        ]
        .iter()
        .any(|needle| text.contains(needle));
        if unreachable {
            return cluster(
                format!(
                    "the scheduler or an executor cannot be reached ({})",
                    first_line(&text)
                ),
                true,
            );
        }
        if text.contains("Fail to execute query") {
            return cluster(
                format!(
                    "the scheduler refused the job (is it `flumen scheduler`, which knows \
                     Flumen's plans and functions?): {}",
                    first_line(&text)
                ),
                false,
            );
        }
        match task_error(&text) {
            Some(task) => Error::DataFusion(DataFusionError::Execution(task)),
            None => Error::DataFusion(e),
        }
    }
}

/// The task's error in Ballista's `Execution error: Job <id> failed: <why>`: when a
/// task failed, Ballista writes its error in Rust's debug form
/// (`...runtime execution error: DataFusionError(Shared(External(ArrowError(CastError("..")))))`),
/// given here as `a task failed: CastError: ..`; otherwise `<why>` without
/// `DataFusion error: `.
fn task_error(text: &str) -> Option<String> {
    let rest = text.split_once("Job ")?.1;
    let (_, why) = rest.split_once(" failed: ")?;
    let why = why.trim_end();
    if let Some((_, debug)) = why.split_once("runtime execution error: ")
        && let (Some(open), Some(close)) = (debug.find("(\""), debug.rfind("\")"))
        && open < close
    {
        let variant = debug[..open]
            .rsplit(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap_or("");
        let message = debug[open + 2..close]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\");
        return Some(format!("a task failed: {variant}: {message}"));
    }
    Some(
        why.strip_prefix("DataFusion error: ")
            .unwrap_or(why)
            .to_string(),
    )
}

/// What a task of one of Flumen's cluster nodes runs for its partition: `input`
/// collected, then `work` on a blocking thread (it folds state, generates or reads
/// rows, writes files), its batches streamed out with `schema`. `what` names the task
/// in the error of a task that could not finish.
pub(crate) fn blocking_task(
    input: datafusion::execution::SendableRecordBatchStream,
    schema: datafusion::arrow::datatypes::SchemaRef,
    what: &'static str,
    work: impl FnOnce(Vec<RecordBatch>) -> datafusion::error::Result<Vec<RecordBatch>> + Send + 'static,
) -> datafusion::execution::SendableRecordBatchStream {
    use futures::StreamExt;
    let run = async move {
        let batches: Vec<RecordBatch> = input.try_collect().await?;
        tokio::task::spawn_blocking(move || work(batches))
            .await
            .map_err(|e| DataFusionError::Execution(format!("{what}: {e}")))?
    };
    let stream = futures::stream::once(run)
        .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
        .try_flatten();
    Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream.boxed()),
    )
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or(text);
    match line.char_indices().nth(400) {
        Some((cut, _)) => &line[..cut],
        None => line,
    }
}

/// Whether `plan` reads a stream the executors read, keeps state partitions there or
/// writes a sink from the tasks.
fn needs_cluster(plan: &Arc<dyn ExecutionPlan>, slots: &[Arc<BatchSlot>]) -> bool {
    let mut needs = false;
    let _ = plan.apply(|node| {
        needs = is_for_cluster(node, slots);
        Ok(if needs {
            datafusion::common::tree_node::TreeNodeRecursion::Stop
        } else {
            datafusion::common::tree_node::TreeNodeRecursion::Continue
        })
    });
    needs
}

/// Whether `node` itself is work for the cluster: one of Flumen's cluster nodes, or
/// a scan of a slot the driver did not fill (the executors read it).
fn is_for_cluster(node: &Arc<dyn ExecutionPlan>, slots: &[Arc<BatchSlot>]) -> bool {
    node.downcast_ref::<state::StatePartitionsExec>().is_some()
        || node.downcast_ref::<write::WriteExec>().is_some()
        || node.downcast_ref::<scan::ReadScanExec>().is_some()
        || node
            .downcast_ref::<StreamingTableExec>()
            .is_some_and(|scan| {
                !slots
                    .iter()
                    .any(|s| s.scanned_by(scan) && s.remote().is_none())
            })
}

/// Whether `node` ends a Ballista stage: its input is shuffled or gathered.
fn is_exchange(node: &Arc<dyn ExecutionPlan>) -> bool {
    use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
    node.downcast_ref::<RepartitionExec>().is_some()
        || node.downcast_ref::<CoalescePartitionsExec>().is_some()
        || node.downcast_ref::<SortPreservingMergeExec>().is_some()
}

/// Whether `node` and everything under it can run here: no exchange, none of
/// Flumen's cluster nodes, and every leaf rows the driver holds (a stream's slot the
/// driver filled, an in-memory table, an empty or one-row leaf).
fn runs_here(node: &Arc<dyn ExecutionPlan>, slots: &[Arc<BatchSlot>]) -> bool {
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
    if is_exchange(node) || is_for_cluster(node, slots) {
        return false;
    }
    let children = node.children();
    if children.is_empty() {
        return node.downcast_ref::<StreamingTableExec>().is_some()
            || node.downcast_ref::<EmptyExec>().is_some()
            || node.downcast_ref::<PlaceholderRowExec>().is_some()
            || node.downcast_ref::<DataSourceExec>().is_some_and(|d| {
                d.data_source()
                    .downcast_ref::<MemorySourceConfig>()
                    .is_some()
            });
    }
    children.iter().all(|c| runs_here(c, slots))
}

/// Whether `child` of `parent` is the hash exchange into a `StatePartitionsExec` of
/// rows that all run here: then the exchange runs here too (the state partitions' own
/// routing, DataFusion's hash, wherever it runs), and its output partitions are the
/// state partitions' inputs.
fn shuffled_here(
    parent: &Arc<dyn ExecutionPlan>,
    child: &Arc<dyn ExecutionPlan>,
    slots: &[Arc<BatchSlot>],
) -> bool {
    use datafusion::physical_plan::Partitioning;
    use datafusion::physical_plan::repartition::RepartitionExec;
    parent
        .downcast_ref::<state::StatePartitionsExec>()
        .is_some()
        && child.downcast_ref::<RepartitionExec>().is_some_and(|r| {
            matches!(r.partitioning(), Partitioning::Hash(..))
                && r.children().iter().all(|c| runs_here(c, slots))
        })
}

/// `plan` with each largest part that [`runs_here`] run here, for this batch, and
/// replaced by its result (partition for partition).
fn run_here<'a>(
    plan: Arc<dyn ExecutionPlan>,
    slots: &'a [Arc<BatchSlot>],
    task_ctx: &'a Arc<TaskContext>,
) -> futures::future::BoxFuture<'a, Result<Arc<dyn ExecutionPlan>>> {
    Box::pin(async move {
        if runs_here(&plan, slots) {
            let parts = crate::scheduler::execute(&plan, task_ctx).await?;
            let rows = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                &parts,
                plan.schema(),
                None,
            )?;
            return Ok(rows as Arc<dyn ExecutionPlan>);
        }
        let children = plan.children();
        if children.is_empty() {
            return Ok(plan);
        }
        let mut local = Vec::with_capacity(children.len());
        for c in children {
            local.push(match shuffled_here(&plan, c, slots) {
                // A state partition's rows the driver holds: hash-partitioned here,
                // each state partition's share shipped to its task — one stage, no
                // shuffle files on the executors.
                true => {
                    let parts = crate::scheduler::execute(c, task_ctx).await?;
                    datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
                        &parts,
                        c.schema(),
                        None,
                    )? as Arc<dyn ExecutionPlan>
                }
                false => run_here(Arc::clone(c), slots, task_ctx).await?,
            });
        }
        use datafusion::physical_plan::execution_plan::{
            ChildrenPropertiesMode, ReplaceChildrenOptions,
        };
        Ok(plan.replace_children(
            local,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?)
    })
}

/// `plan` with every scan of one of `slots` replaced by the rows the slot holds now.
fn ship(plan: &Arc<dyn ExecutionPlan>, slots: &[Arc<BatchSlot>]) -> Result<Arc<dyn ExecutionPlan>> {
    let mut unknown = None;
    let shipped = Arc::clone(plan)
        .transform_up(|node| {
            let Some(scan) = node.downcast_ref::<StreamingTableExec>() else {
                return Ok(Transformed::no(node));
            };
            match slots.iter().find(|s| s.scanned_by(scan)) {
                Some(slot) => Ok(Transformed::yes(
                    slot.rows_for(scan)
                        .map_err(|e| DataFusionError::External(Box::new(e)))?,
                )),
                None => {
                    unknown = Some(
                        datafusion::physical_plan::displayable(node.as_ref())
                            .one_line()
                            .to_string(),
                    );
                    Ok(Transformed::no(node))
                }
            }
        })?
        .data;
    if let Some(scan) = unknown {
        return Err(Error::Internal(format!(
            "a plan sent to the cluster scans a stream the query does not hold: {scan}"
        )));
    }
    Ok(shipped)
}

/// The tasks Ballista runs for `plan`: one per partition of each stage, a stage
/// ending at each exchange and at the root.
fn stage_tasks(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let mut tasks = plan.output_partitioning().partition_count() as u64;
    let _ = plan.apply(|node| {
        if is_exchange(node) {
            for child in node.children() {
                tasks += child.output_partitioning().partition_count() as u64;
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_task_keeps_its_own_message() {
        assert_eq!(
            task_error(
                "Execution error: Job 038HSA44Z2000 failed: DataFusion error: Arrow error: Cast error: x"
            )
            .as_deref(),
            Some("Arrow error: Cast error: x")
        );
        // A task's error, as Ballista writes it (debug form, escaped quotes).
        let debug = r#"Execution error: Job 038 failed: Job failed due to stage 1 failed: Task failed due to runtime execution error: DataFusionError(Shared(External(ArrowError(CastError("Cannot cast string 'x0' to \"Int64\"")))))
"#;
        assert_eq!(
            task_error(debug).as_deref(),
            Some(r#"a task failed: CastError: Cannot cast string 'x0' to "Int64""#)
        );
        assert_eq!(
            task_error("Execution error: Job 1 failed: lost").as_deref(),
            Some("lost")
        );
        assert_eq!(task_error("Arrow error: Cast error: x"), None);
    }

    #[test]
    fn cluster_urls() {
        assert_eq!(
            ClusterUrl::parse("df://127.0.0.1:50051").unwrap(),
            ClusterUrl {
                host: "127.0.0.1".into(),
                port: 50051
            }
        );
        assert_eq!(ClusterUrl::parse("df://localhost").unwrap().port, 50050);
        assert_eq!(
            ClusterUrl::parse(" df://h:1/ ").unwrap().to_string(),
            "df://h:1"
        );
        for bad in [
            "http://h:1",
            "df://",
            "df://h:0",
            "df://h:x",
            "df://h:70000",
        ] {
            let e = ClusterUrl::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("cluster '{bad}'")), "{e}");
            assert!(e.contains("df://host:port"), "{e}");
        }
    }
}
