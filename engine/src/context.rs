//! [`StreamingContext`]: the entry point of the embedded API, and its lifecycle
//! (Initialized → Active → Stopped).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::{SessionConfig, SessionContext};
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, ManualClock, SystemClock};
use crate::error::{Error, Result};
use crate::graph::{Graph, SourceNode};
use crate::listener::{BatchInfo, StreamingListener};
use crate::scheduler::Pipeline;
use crate::slot::BatchSlot;
use crate::source::Source;
use crate::sources::QueueSource;
use crate::stream::Stream;
use crate::time::{Time, format_duration};
use crate::{internal_err, lifecycle_err, plan_err};

/// Where a context is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamingContextState {
    /// Created; streams and outputs may be added.
    Initialized,
    /// Started; batches run.
    Active,
    /// Stopped (by `stop`, by a failure, or by draining under `AvailableNow`).
    Stopped,
}

/// When batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trigger {
    /// One batch every batch interval (the default).
    #[default]
    ProcessingTime,
    /// Process everything the sources hold at start, in as many batches as rate limits
    /// require, one right after the other, then stop.
    AvailableNow,
}

/// What happens when a batch fails: the query stops (the default), or, as Flink's
/// restart strategies, it starts again from its checkpoint after a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// At most this many restarts over the query's life; the next failure stops it.
    pub max_restarts: u32,
    /// The wait before the first restart; it doubles for each one after, up to a
    /// minute.
    pub delay: Duration,
}

/// The longest wait between restarts.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// Builds a [`StreamingContext`].
pub struct StreamingContextBuilder {
    interval: Duration,
    session: Option<SessionContext>,
    clock: Arc<dyn Clock>,
    trigger: Trigger,
    retained_batches: usize,
    name: String,
    exclusive: bool,
    checkpoint: Option<crate::checkpoint::CheckpointLocation>,
    checkpoint_interval: u64,
    cluster: Option<String>,
    restart: Option<RestartPolicy>,
    state: crate::state::StateConfig,
}

impl StreamingContextBuilder {
    /// How stateful operators keep their keyed state: hash partitions (the unit of
    /// parallelism), the memory budget past which partitions spill to disk, and the
    /// time-to-live of idle keys ([`crate::state::StateConfig`]).
    pub fn with_state_config(mut self, config: crate::state::StateConfig) -> Self {
        self.state = config;
        self
    }

    /// Restart the query from its checkpoint when a batch fails (needs a
    /// checkpoint), at most `policy.max_restarts` times; each restart is told to the
    /// listeners ([`StreamingListener::on_restarted`]).
    pub fn with_restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = Some(policy);
        self
    }

    /// Use an existing DataFusion session (its tables, functions and settings). The
    /// context runs on a session made from this one's state plus Flumen's physical
    /// optimizer rule ([`crate::split::FuseSplitUnnest`]); it shares the catalogs, so
    /// tables registered later on `session` are seen, but register functions and change
    /// settings before building — or on [`StreamingContext::session`].
    pub fn with_session(mut self, session: SessionContext) -> Self {
        self.session = Some(session);
        self
    }

    /// Use `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// How many recent [`BatchInfo`]s to keep (default 1000).
    pub fn with_retained_batches(mut self, n: usize) -> Self {
        self.retained_batches = n.max(1);
        self
    }

    /// A name for the query: output ids (the sinks' idempotency keys) derive from it.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Whether this context is the process's one active context (the default, as in
    /// Spark). An engine that runs many queries side by side, such as the SQL layer,
    /// builds its per-query contexts with `false`.
    pub fn with_exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Keep the query's offset log, commit log and state in `dir`; a context started
    /// on a checkpoint an earlier run left resumes where that run stopped.
    pub fn with_checkpoint(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.checkpoint = Some(crate::checkpoint::CheckpointLocation::Local(dir.into()));
        self
    }

    /// Keep the checkpoint at `location`: a local directory or a folder of an object
    /// store (`CheckpointLocation::parse("s3://bucket/ckpt")`).
    pub fn with_checkpoint_location(
        mut self,
        location: crate::checkpoint::CheckpointLocation,
    ) -> Self {
        self.checkpoint = Some(location);
        self
    }

    /// Snapshot operator state every `batches` batches (default 1). Larger values
    /// write big state less often; after a crash, up to `batches - 1` batches are
    /// read again from the sources (which keep their data until a snapshot covers
    /// it) to rebuild the state. At most 100 (the offset log's retention).
    /// Runs every batch's plans on the Ballista cluster whose scheduler is at `url`
    /// (`df://host:port`); see [`crate::cluster`]. Without it, batches run in this
    /// process.
    pub fn with_cluster(mut self, url: impl Into<String>) -> Self {
        self.cluster = Some(url.into());
        self
    }

    pub fn with_checkpoint_interval(mut self, batches: u64) -> Self {
        self.checkpoint_interval = batches;
        self
    }

    pub fn build(self) -> Result<StreamingContext> {
        if self.interval.is_zero() {
            return plan_err!("the batch interval must be positive");
        }
        let session = match self.session {
            Some(s) => s,
            None => SessionContext::new_with_config(default_session_config()),
        };
        // Every plan of the context's session fuses `unnest(string_to_array(...))`.
        let fused = session
            .state()
            .physical_optimizers()
            .iter()
            .any(|r| r.name() == crate::split::FuseSplitUnnest::NAME);
        let session = if fused {
            session
        } else {
            SessionContext::new_with_state(
                datafusion::execution::SessionStateBuilder::new_from_existing(session.state())
                    .with_physical_optimizer_rule(Arc::new(crate::split::FuseSplitUnnest))
                    .build(),
            )
        };
        // Plans are executed again every batch: dynamic filters, which carry values
        // from one execution into the next, must stay off — every kind of them (the
        // master switch alone, set as a field, leaves the join's, top-k's and
        // aggregate's on; a cluster's scheduler then refuses to reorder such a join).
        {
            let state = session.state_ref();
            let mut state = state.write();
            let optimizer = &mut state.config_mut().options_mut().optimizer;
            optimizer.enable_dynamic_filter_pushdown = false;
            optimizer.enable_join_dynamic_filter_pushdown = false;
            optimizer.enable_topk_dynamic_filter_pushdown = false;
            optimizer.enable_aggregate_dynamic_filter_pushdown = false;
        }
        let cluster = self
            .cluster
            .as_deref()
            .map(crate::cluster::ClusterUrl::parse)
            .transpose()?;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let (status, _) = watch::channel(StreamingContextState::Initialized);
        let (stop, _) = watch::channel(false);
        let (completed, _) = watch::channel(None);
        Ok(StreamingContext {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    name: self.name,
                    exclusive: self.exclusive,
                    checkpoint: Mutex::new(self.checkpoint),
                    checkpoint_interval: self.checkpoint_interval,
                    cluster,
                    restart: self.restart,
                    // The context's queries count their state together, apart
                    // from any other context's.
                    state: crate::state::StateConfig {
                        ledger: Default::default(),
                        ..self.state
                    },
                    interval: self.interval,
                    session,
                    clock: self.clock,
                    trigger: self.trigger,
                    retained: self.retained_batches,
                    graph: Mutex::new(Some(Graph::default())),
                    listeners: Mutex::new(Vec::new()),
                    recent: Mutex::new(VecDeque::new()),
                    status,
                    stop,
                    completed,
                    failure: Mutex::new(None),
                    started_at: Mutex::new(None),
                }),
                task: Mutex::new(None),
            }),
        })
    }
}

fn default_session_config() -> SessionConfig {
    SessionConfig::new().with_information_schema(true)
}

/// State shared between the context's handles and its scheduler task.
pub(crate) struct Shared {
    id: u64,
    name: String,
    exclusive: bool,
    /// Set by the builder, or by [`StreamingContext::get_or_create`] before start.
    checkpoint: Mutex<Option<crate::checkpoint::CheckpointLocation>>,
    checkpoint_interval: u64,
    /// The cluster every batch's plans run on (`with_cluster`).
    cluster: Option<crate::cluster::ClusterUrl>,
    restart: Option<RestartPolicy>,
    pub(crate) state: crate::state::StateConfig,
    pub(crate) interval: Duration,
    pub(crate) session: SessionContext,
    clock: Arc<dyn Clock>,
    trigger: Trigger,
    retained: usize,
    /// `Some` until `start()` moves it into the pipeline.
    pub(crate) graph: Mutex<Option<Graph>>,
    listeners: Mutex<Vec<Arc<dyn StreamingListener>>>,
    recent: Mutex<VecDeque<BatchInfo>>,
    status: watch::Sender<StreamingContextState>,
    stop: watch::Sender<bool>,
    completed: watch::Sender<Option<Time>>,
    failure: Mutex<Option<Arc<Error>>>,
    started_at: Mutex<Option<Time>>,
}

struct Inner {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The scheduler task is owned by the context: dropping the last handle
        // stops it.
        if let Some(task) = self.task.get_mut().take() {
            task.abort();
        }
    }
}

/// The process's active context, as Spark allows one per JVM.
static ACTIVE: StdMutex<Option<Weak<Inner>>> = StdMutex::new(None);

fn active_slot() -> std::sync::MutexGuard<'static, Option<Weak<Inner>>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The entry point of the embedded API: creates streams, runs their batches.
///
/// ```no_run
/// # async fn demo() -> flumen_engine::Result<()> {
/// use std::time::Duration;
/// use flumen_engine::StreamingContext;
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use std::sync::Arc;
///
/// let ctx = StreamingContext::new(Duration::from_secs(1))?;
/// let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
/// let (queue, lines) = ctx.queue_stream("lines", schema, true)?;
/// lines.print(10)?;
/// ctx.start().await?;
/// ctx.await_termination().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StreamingContext {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StreamingContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingContext")
            .field("id", &self.inner.shared.id)
            .field("batch_interval", &self.inner.shared.interval)
            .field("state", &self.state())
            .finish()
    }
}

impl StreamingContext {
    /// A context with batches every `batch_interval`, on the system clock.
    pub fn new(batch_interval: Duration) -> Result<Self> {
        Self::builder(batch_interval).build()
    }

    /// A builder for a context with batches every `batch_interval`.
    pub fn builder(batch_interval: Duration) -> StreamingContextBuilder {
        StreamingContextBuilder {
            interval: batch_interval,
            session: None,
            clock: Arc::new(SystemClock),
            trigger: Trigger::default(),
            retained_batches: 1000,
            name: "flumen".into(),
            exclusive: true,
            checkpoint: None,
            checkpoint_interval: 1,
            cluster: None,
            restart: None,
            state: crate::state::StateConfig::default(),
        }
    }

    /// How this context's stateful operators keep their keyed state.
    pub fn state_config(&self) -> &crate::state::StateConfig {
        &self.inner.shared.state
    }

    /// The active context of this process, if one is running.
    pub fn get_active() -> Option<StreamingContext> {
        let slot = active_slot();
        let inner = slot.as_ref()?.upgrade()?;
        let active = *inner.shared.status.borrow() == StreamingContextState::Active;
        active.then_some(StreamingContext { inner })
    }

    /// The active context, or a new one from `create`.
    pub fn get_active_or_create(
        create: impl FnOnce() -> Result<StreamingContext>,
    ) -> Result<StreamingContext> {
        match Self::get_active() {
            Some(ctx) => Ok(ctx),
            None => create(),
        }
    }

    /// Spark's `StreamingContext.getOrCreate(checkpointPath, creatingFunc)`: the context
    /// `create` defines, checkpointed in `dir`. Closures cannot be read back from disk,
    /// so `create` always runs and defines the streams; when `dir` holds a checkpoint,
    /// `start()` checks that it was written by this same pipeline (refusing, with the
    /// difference, one that was not) and resumes from it; otherwise it starts afresh.
    ///
    /// ```no_run
    /// # use flumen_engine::{StreamingContext, Result};
    /// # use std::time::Duration;
    /// # fn define(ctx: &StreamingContext) -> Result<()> { Ok(()) }
    /// let ctx = StreamingContext::get_or_create("/var/lib/app/ckpt", || {
    ///     let ctx = StreamingContext::new(Duration::from_secs(1))?;
    ///     define(&ctx)?;
    ///     Ok(ctx)
    /// })?;
    /// # Ok::<(), flumen_engine::Error>(())
    /// ```
    pub fn get_or_create(
        dir: impl Into<std::path::PathBuf>,
        create: impl FnOnce() -> Result<StreamingContext>,
    ) -> Result<StreamingContext> {
        let dir = dir.into();
        let ctx = create()?;
        {
            let mut checkpoint = ctx.inner.shared.checkpoint.lock();
            match checkpoint.as_ref() {
                Some(crate::checkpoint::CheckpointLocation::Local(same)) if *same == dir => {}
                Some(other) => {
                    return plan_err!(
                        "get_or_create({}): the context built by the function already checkpoints to {}",
                        dir.display(),
                        other.display()
                    );
                }
                None => *checkpoint = Some(crate::checkpoint::CheckpointLocation::Local(dir)),
            }
        }
        if ctx.state() != StreamingContextState::Initialized {
            return plan_err!(
                "get_or_create: the function must return a context that has not been started"
            );
        }
        Ok(ctx)
    }

    /// Where the context keeps its checkpoint, if it keeps one.
    /// On a cluster (`with_cluster`): its URL, and for each stateful operator planned
    /// so far, its name and whether its state goes to state partitions on the
    /// executors (else it stays on the driver, its input plan running there). EXPLAIN
    /// says so.
    pub fn cluster_placement(&self) -> Option<(String, Vec<(String, bool)>)> {
        let url = self.shared().cluster.as_ref()?.to_string();
        let graph = self.shared().graph.lock();
        let operators = graph
            .as_ref()
            .map(|g| {
                g.operators
                    .iter()
                    .map(|n| (n.op.name(), n.op.can_partition_on_cluster()))
                    .collect()
            })
            .unwrap_or_default();
        Some((url, operators))
    }

    pub fn checkpoint_location(&self) -> Option<crate::checkpoint::CheckpointLocation> {
        self.inner.shared.checkpoint.lock().clone()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    pub fn batch_interval(&self) -> Duration {
        self.inner.shared.interval
    }

    /// The DataFusion session: register static tables and functions here.
    pub fn session(&self) -> &SessionContext {
        &self.inner.shared.session
    }

    /// A static table of the session, for joins.
    pub async fn table(&self, name: &str) -> Result<DataFrame> {
        Ok(self.inner.shared.session.table(name).await?)
    }

    /// When `start()` ran (batches come at the interval multiples after it).
    pub fn started_at(&self) -> Option<Time> {
        *self.inner.shared.started_at.lock()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.shared.clock
    }

    pub fn state(&self) -> StreamingContextState {
        *self.inner.shared.status.borrow()
    }

    /// Fails unless the context is still being defined.
    pub(crate) fn check_initialized(&self, what: &str) -> Result<()> {
        match self.state() {
            StreamingContextState::Initialized => Ok(()),
            StreamingContextState::Active => lifecycle_err!(
                "cannot {what} after the StreamingContext has started; define every \
                 stream and output before start()"
            ),
            StreamingContextState::Stopped => lifecycle_err!(
                "cannot {what}: the StreamingContext has been stopped; create a new one"
            ),
        }
    }

    /// A stream of the batches `source` produces.
    pub fn source(&self, source: Arc<dyn Source>) -> Result<Stream> {
        self.source_with(source, SourceOptions::default())
    }

    /// [`StreamingContext::source`] with a dead letter for rejected records and
    /// limits on how many records a batch takes.
    pub fn source_with(&self, source: Arc<dyn Source>, options: SourceOptions) -> Result<Stream> {
        self.check_initialized("add a stream")?;
        if (options.max_records_per_batch.is_some() || options.backpressure)
            && let crate::source::RecordLimit::Unsupported { hint } = source.record_limit()
        {
            return plan_err!(
                "stream {}: this source cannot cap the records of a batch (max_records_per_batch, backpressure){hint}",
                source.name(),
            );
        }
        let limit = crate::rate::RateLimit {
            max_records_per_batch: options.max_records_per_batch,
            estimator: options
                .backpressure
                .then(|| crate::rate::PidRateEstimator::new(self.batch_interval())),
        };
        let target = self.session().state().config().target_partitions();
        let partitions = if source.partitions() > 1 {
            source.partitions()
        } else {
            target
        };
        let slot = BatchSlot::new(source.schema(), partitions);
        let df = self.session().read_table(slot.table()?)?;
        let mut graph = self.inner.shared.graph.lock();
        let Some(graph) = graph.as_mut() else {
            return internal_err!("graph missing in an initialized context");
        };
        graph.sources.push(SourceNode {
            source,
            slot,
            errors: options.dead_letter,
            errors_slot: None,
            limit,
            projection: None,
        });
        Ok(Stream::new(self.clone(), df, self.batch_interval()))
    }

    /// The records the source named `source` rejects (columns of
    /// [`crate::source::rejected_schema`]), as a stream of this context: every batch
    /// holds the records of that batch's range that did not decode, so they can be
    /// archived by any sink. The source must have been added first.
    pub fn rejected_stream(&self, source: &str) -> Result<Stream> {
        let slot = {
            let mut graph = self.inner.shared.graph.lock();
            let Some(graph) = graph.as_mut() else {
                return internal_err!("graph missing in an initialized context");
            };
            let Some(node) = graph.sources.iter_mut().find(|s| s.source.name() == source) else {
                return plan_err!("no source named '{source}' in this query");
            };
            Arc::clone(
                node.errors_slot
                    .get_or_insert_with(|| BatchSlot::new(crate::source::rejected_schema(), 1)),
            )
        };
        let df = self.session().read_table(slot.table()?)?;
        Ok(Stream::new(self.clone(), df, self.batch_interval()))
    }

    /// [`StreamingContext::source`], with the records it rejects written to `errors`
    /// (columns of [`crate::source::rejected_schema`]) — a dead letter.
    pub fn source_with_dead_letter(
        &self,
        source: Arc<dyn Source>,
        errors: Arc<dyn crate::sink::Sink>,
    ) -> Result<Stream> {
        self.source_with(
            source,
            SourceOptions {
                dead_letter: Some(errors),
                ..SourceOptions::default()
            },
        )
    }

    /// A stream whose batches are `df`, a plan over this context's streams (their
    /// `dataframe()`s) and static tables, with a batch every `slide`.
    pub fn stream_from(&self, df: DataFrame, slide: Duration) -> Result<Stream> {
        self.check_initialized("add a stream")?;
        Ok(Stream::new(self.clone(), df, slide))
    }

    /// Spark's `queueStream`: returns the queue to push batch sets into, and its
    /// stream. With `one_at_a_time`, each batch takes one queued element.
    pub fn queue_stream(
        &self,
        name: &str,
        schema: SchemaRef,
        one_at_a_time: bool,
    ) -> Result<(Arc<QueueSource>, Stream)> {
        let queue = QueueSource::new(name, schema, one_at_a_time);
        let stream = self.source(queue.clone())?;
        Ok((queue, stream))
    }

    pub fn add_listener(&self, listener: Arc<dyn StreamingListener>) {
        self.inner.shared.listeners.lock().push(listener);
    }

    /// The most recent batches' information, oldest first.
    pub fn recent_batches(&self) -> Vec<BatchInfo> {
        self.last_batches(usize::MAX)
    }

    /// The newest `n` of [`StreamingContext::recent_batches`], oldest first (copies
    /// only those).
    pub fn last_batches(&self, n: usize) -> Vec<BatchInfo> {
        let recent = self.inner.shared.recent.lock();
        recent
            .iter()
            .skip(recent.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Plan every query and start running batches.
    pub async fn start(&self) -> Result<()> {
        let shared = Arc::clone(&self.inner.shared);
        match self.state() {
            StreamingContextState::Initialized => {}
            StreamingContextState::Active => {
                return lifecycle_err!("the StreamingContext has already been started");
            }
            StreamingContextState::Stopped => {
                return lifecycle_err!(
                    "the StreamingContext has been stopped and cannot be restarted; \
                     create a new StreamingContext"
                );
            }
        }
        {
            let graph = shared.graph.lock();
            if graph.as_ref().is_none_or(|g| g.outputs.is_empty()) {
                return lifecycle_err!(
                    "no output operations registered, so nothing to execute; add \
                     print(), foreach_batch() or write_to() to a stream before start()"
                );
            }
        }
        if shared.exclusive {
            let mut active = active_slot();
            if let Some(other) = active.as_ref().and_then(Weak::upgrade)
                && *other.shared.status.borrow() == StreamingContextState::Active
            {
                let since = other
                    .shared
                    .started_at
                    .lock()
                    .map(|t| format!(" (started at {t})"))
                    .unwrap_or_default();
                return lifecycle_err!(
                    "another StreamingContext is already active in this process{since}; \
                     only one may run at a time: stop it first, or reuse it with \
                     StreamingContext::get_active() or get_active_or_create()"
                );
            }
            *active = Some(Arc::downgrade(&self.inner));
        }
        let graph = shared.graph.lock().take().unwrap_or_default();
        let now = shared.clock.now();
        // Fixed here, not in the task, so the clock moving before the task first runs
        // cannot shift the batch grid.
        let first = now.next_multiple_of(shared.interval);
        if shared.restart.is_some() && shared.checkpoint.lock().is_none() {
            shared.graph.lock().replace(graph);
            return plan_err!(
                "a restart policy restarts a failed query from its checkpoint: set a \
                 checkpoint location (SET checkpoint_location, --checkpoint, \
                 with_checkpoint) or no restart policy"
            );
        }
        let opened = async {
            let checkpoint = shared.checkpoint.lock().clone();
            let mut pipeline = Pipeline::plan(
                format!("{}-{}", shared.name, 0),
                graph,
                shared.session.clone(),
                shared.interval,
                shared.cluster.clone(),
                checkpoint.as_ref(),
            )
            .await?;
            let start = open_pipeline(&shared, &mut pipeline, first).await?;
            Ok::<_, Error>((pipeline, start))
        }
        .await;
        let (pipeline, start) = match opened {
            Ok(p) => p,
            Err(e) => {
                shared.status.send_replace(StreamingContextState::Stopped);
                release_active(&self.inner);
                return Err(e);
            }
        };
        *shared.started_at.lock() = Some(now);
        shared.status.send_replace(StreamingContextState::Active);
        let weak = Arc::downgrade(&self.inner);
        let task_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // A panic in a batch (a bug, ours or a library's) stops the query with an
            // error instead of leaving it hung in the Active state.
            let result =
                std::panic::AssertUnwindSafe(run(Arc::clone(&task_shared), pipeline, start))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(Error::Internal(format!("a batch panicked: {what}")))
                    });
            let error = result.err().map(Arc::new);
            if let Some(e) = &error {
                log::error!("streaming query failed: {e}");
            }
            for l in task_shared.listeners.lock().iter() {
                l.on_terminated(error.as_deref());
            }
            *task_shared.failure.lock() = error;
            task_shared
                .status
                .send_replace(StreamingContextState::Stopped);
            if let Some(inner) = weak.upgrade() {
                release_active(&inner);
            }
        });
        *self.inner.task.lock() = Some(task);
        Ok(())
    }

    /// Stop. With `graceful`, the batch in flight finishes and commits first; without,
    /// it is cancelled. A stopped context cannot be started again.
    pub async fn stop(&self, graceful: bool) -> Result<()> {
        let shared = &self.inner.shared;
        match self.state() {
            StreamingContextState::Initialized => {
                shared.graph.lock().take();
                shared.status.send_replace(StreamingContextState::Stopped);
                return Ok(());
            }
            StreamingContextState::Stopped => return Ok(()),
            StreamingContextState::Active => {}
        }
        shared.stop.send_replace(true);
        let task = self.inner.task.lock().take();
        if let Some(task) = task {
            if !graceful {
                task.abort();
            }
            match task.await {
                Ok(()) => {}
                Err(e) if e.is_cancelled() => {
                    shared.status.send_replace(StreamingContextState::Stopped);
                    release_active(&self.inner);
                }
                Err(e) => return internal_err!("the scheduler task panicked: {e}"),
            }
        }
        Ok(())
    }

    /// Wait until the context stops; the error that stopped it, if any.
    pub async fn await_termination(&self) -> Result<()> {
        let mut rx = self.inner.shared.status.subscribe();
        if *rx.borrow() == StreamingContextState::Initialized {
            return lifecycle_err!(
                "await_termination() on a StreamingContext that was never started"
            );
        }
        let _ = rx.wait_for(|s| *s == StreamingContextState::Stopped).await;
        self.termination_result()
    }

    /// As [`StreamingContext::await_termination`], giving up after `timeout`:
    /// `Ok(true)` if it stopped, `Ok(false)` if it still runs.
    pub async fn await_termination_timeout(&self, timeout: Duration) -> Result<bool> {
        match tokio::time::timeout(timeout, self.await_termination()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// The error that stopped the query, if it failed.
    pub fn failure(&self) -> Option<Arc<Error>> {
        self.inner.shared.failure.lock().clone()
    }

    fn termination_result(&self) -> Result<()> {
        match self.inner.shared.failure.lock().as_ref() {
            Some(e) => Err(Error::QueryFailed(Arc::clone(e))),
            None => Ok(()),
        }
    }

    /// Wait until the batch at `t` (or a later one) has completed; fails if the context
    /// stops first.
    pub async fn await_batch(&self, t: Time) -> Result<()> {
        let mut done = self.inner.shared.completed.subscribe();
        let mut status = self.inner.shared.status.subscribe();
        tokio::select! {
            r = done.wait_for(|c| c.is_some_and(|c| c >= t)) => {
                r.map(|_| ()).map_err(|_| Error::Internal("completion channel closed".into()))
            }
            _ = status.wait_for(|s| *s == StreamingContextState::Stopped) => {
                if self.inner.shared.completed.borrow().is_some_and(|c| c >= t) {
                    return Ok(());
                }
                self.termination_result()?;
                lifecycle_err!("the StreamingContext stopped before batch {t}")
            }
        }
    }

    /// With a [`ManualClock`]: advance it one batch interval at a time, `n` times,
    /// waiting for each batch to complete. Deterministic batch stepping for tests.
    pub async fn advance_batches(&self, n: usize) -> Result<()> {
        let shared = &self.inner.shared;
        let Some(clock) = shared.clock.as_manual() else {
            return lifecycle_err!("advance_batches needs a ManualClock");
        };
        let clock: ManualClock = clock.clone();
        for _ in 0..n {
            clock.advance(shared.interval);
            let now = clock.now().as_millis();
            let i = shared.interval.as_millis() as i64;
            let due = Time::from_millis(now - now.rem_euclid(i));
            self.await_batch(due).await?;
        }
        Ok(())
    }
}

fn release_active(inner: &Arc<Inner>) {
    let mut active = active_slot();
    if active
        .as_ref()
        .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(inner)))
    {
        *active = None;
    }
}

/// How a source joins a context ([`StreamingContext::source_with`]).
#[derive(Default, Clone)]
pub struct SourceOptions {
    /// Where records the source rejects go (columns of
    /// [`crate::source::rejected_schema`]).
    pub dead_letter: Option<Arc<dyn crate::sink::Sink>>,
    /// At most this many records per batch.
    pub max_records_per_batch: Option<u64>,
    /// Spark's back pressure: a PID estimator sets each batch's limit from how fast
    /// the previous batches were processed.
    pub backpressure: bool,
}

/// Opens the pipeline's checkpoint (if any), its sources and sinks, and recovers what
/// an earlier run left: where the scheduler loop starts, on or after `first`.
async fn open_pipeline(shared: &Shared, pipeline: &mut Pipeline, first: Time) -> Result<Start> {
    let mut start = Start {
        zero: first.minus(shared.interval),
        first,
        batch_id: 0,
    };
    let checkpoint = shared.checkpoint.lock().clone();
    let recovered = match checkpoint {
        Some(location) => Some(
            pipeline
                .open_checkpoint(location, start.zero, shared.checkpoint_interval)
                .await?,
        ),
        None => None,
    };
    pipeline.open().await?;
    if let Some(recovered) = recovered {
        // Replayed here, so a checkpoint that cannot be used fails start().
        if let Some(z) = recovered.zero_time {
            start.zero = z;
        }
        let resumed = pipeline
            .recover(recovered, start.zero, shared.clock.as_ref())
            .await;
        let resumed = match resumed {
            Ok(r) => r,
            Err(e) => {
                pipeline.close().await;
                return Err(e);
            }
        };
        if let Some((last_id, last_time)) = resumed {
            start.batch_id = last_id + 1;
            // The batches up to the checkpoint's last are done: a wait for one of them
            // (`await_batch`, ADVANCE on a clock behind the checkpoint) returns, and
            // does not wait for a batch that will never run again.
            shared.completed.send_replace(Some(last_time));
            // On the same grid; batches missed while the query was down are
            // not run (their data goes to the next batch).
            start.first = last_time.plus(shared.interval).max(first);
        }
    }
    Ok(start)
}

/// The scheduler loop: one batch per interval, never overlapping.
/// Where the scheduler loop starts: the batch grid, the first batch time and id.
struct Start {
    zero: Time,
    first: Time,
    batch_id: u64,
}

/// The scheduler loop, and the restart policy around it: a failed run is closed,
/// waits, and starts again from the checkpoint, until the policy's restarts are spent.
async fn run(shared: Arc<Shared>, mut pipeline: Pipeline, start: Start) -> Result<()> {
    let mut start = start;
    let mut restarts = 0u32;
    loop {
        let result = run_batches(&shared, &mut pipeline, start).await;
        pipeline.close().await;
        let error = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some(policy) = shared.restart else {
            return Err(error);
        };
        if restarts >= policy.max_restarts || *shared.stop.borrow() {
            return Err(error);
        }
        restarts += 1;
        let delay = policy
            .delay
            .saturating_mul(1 << (restarts - 1).min(16))
            .min(MAX_RESTART_DELAY);
        log::warn!(
            "query {}: failed ({error}); restart {restarts} of {} from its checkpoint in {}",
            shared.name,
            policy.max_restarts,
            format_duration(delay)
        );
        for l in shared.listeners.lock().iter() {
            l.on_restarted(restarts, &error);
        }
        let mut stop = shared.stop.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return Err(error),
        }
        let now = shared.clock.now();
        start = match open_pipeline(
            &shared,
            &mut pipeline,
            now.next_multiple_of(shared.interval),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => return Err(e),
        };
    }
}

/// Batches until stopped, drained (`AvailableNow`) or failed.
async fn run_batches(shared: &Shared, pipeline: &mut Pipeline, start: Start) -> Result<()> {
    let interval = shared.interval;
    let mut stop = shared.stop.subscribe();
    let zero = start.zero;
    let mut t = start.first;
    let mut batch_id = start.batch_id;
    if shared.trigger == Trigger::AvailableNow {
        pipeline.freeze_available_now().await?;
    }
    loop {
        if *stop.borrow() {
            break Ok(());
        }
        match shared.trigger {
            Trigger::AvailableNow => match pipeline.drained().await {
                // Drained: one last batch closes what event time left open, when
                // nothing else would ever emit it (`Pipeline::end_input`).
                Ok(true) if pipeline.end_input() => {}
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(e) => break Err(e),
            },
            Trigger::ProcessingTime => {
                tokio::select! {
                    _ = shared.clock.sleep_until(t) => {}
                    _ = stop.wait_for(|s| *s) => break Ok(()),
                }
            }
        }
        for l in shared.listeners.lock().iter() {
            l.on_batch_started(batch_id, t);
        }
        let info = match pipeline
            .run_batch(
                batch_id,
                t,
                zero,
                shared.clock.as_ref(),
                crate::scheduler::Replay::default(),
            )
            .await
        {
            Ok(info) => info,
            Err(e) => {
                break Err(Error::Batch {
                    batch_time: t,
                    source: Box::new(e),
                });
            }
        };
        log::debug!(
            "batch {batch_id} at {t}: {} rows in, {} out, processing {:?}, scheduling delay {}",
            info.num_input_rows(),
            info.output_rows,
            info.processing_time,
            format_duration(info.scheduling_delay)
        );
        for l in shared.listeners.lock().iter() {
            l.on_batch_completed(&info);
        }
        {
            let mut recent = shared.recent.lock();
            recent.push_back(info);
            while recent.len() > shared.retained {
                recent.pop_front();
            }
        }
        shared.completed.send_replace(Some(t));
        batch_id += 1;
        t = t.plus(interval);
    }
}
