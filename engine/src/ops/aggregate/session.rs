//! [`SessionAggregate`]: a `GROUP BY` over session windows. Each row arrives as its
//! own session `{ts, ts + gap}`; before every merge, the overlapping sessions of a key
//! (stored and new) are coalesced into their union, so the merge combines their
//! aggregates. The watermark closes sessions as it closes windows.
//!
//! The sessions live in a [`KeyedState`] keyed by the other group keys: one row per
//! key holding its sessions as lists (`List<{start, end}>`, then one list per state
//! column). A batch touches the keys it has rows for and, once the watermark moves,
//! the keys with a session it closed (each segment knows its earliest session end);
//! only those keys' sessions are exploded, coalesced, merged and nested back.
//!
//! ```text
//!  partials ─route by key─▶ touch(keys) + touch_due(watermark, earliest end)
//!     ─▶ explode their sessions ─▶ coalesce + fold with the batch ─▶ emit
//!     ─▶ nest the kept sessions per key ─▶ put (a key left none: removed)
//! ```

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, StructArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, FieldRef, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::event_time::{self, EventTime, EventTimeWindow, WindowDisplay, window_ends};
use super::on_cluster::OnCluster;
use super::partial::{PartialAggregate, restored_state};
use crate::checkpoint::OperatorState;
use crate::cluster::state::Placement;
use crate::ops::{Emits, OP_DELETE, OP_INSERT, OperatorContext, StreamOperator, with_op};
use crate::state::{BoundFn, KeyedState, Nested, Partition, StateConfig, StateStats, min_per_list};
use crate::{Result, internal_err};

/// An aggregate over session windows.
pub struct SessionAggregate {
    agg: PartialAggregate,
    pub(super) output_schema: SchemaRef,
    time: EventTime,
    /// Emit only the sessions each batch changed (update mode).
    pub(super) changed_only: bool,
    /// How EXPLAIN shows it.
    display: WindowDisplay,
    config: StateConfig,
    /// Per value of the other group keys, its sessions (made by `plan_input`).
    store: Option<(KeyedState, Layout)>,
    /// A checkpoint's rows given before the input was planned.
    restored: Option<OperatorState>,
    /// Set when the sessions live in state partitions on a cluster's executors.
    cluster: Option<OnCluster>,
    /// On a cluster, append mode: the plan emitting the sessions this batch's
    /// watermark closed, due after the batch (`emit_plan`).
    closing: Option<Arc<dyn ExecutionPlan>>,
}

impl SessionAggregate {
    /// `GROUP BY group_exprs` over `input`, the session being group key
    /// `window.key_index` (a `{start, end}` struct); the last two of `aggr_exprs` are
    /// the hidden `max(event time)` and `count(*)`.
    pub fn try_new(
        input: &DataFrame,
        group_exprs: Vec<Expr>,
        aggr_exprs: Vec<Expr>,
        window: EventTimeWindow,
    ) -> Result<Self> {
        let agg = PartialAggregate::new(group_exprs, aggr_exprs);
        Ok(Self {
            output_schema: window.output_schema(&agg.output_schema(input)?),
            agg,
            time: EventTime::new(window),
            changed_only: false,
            display: WindowDisplay::default(),
            config: StateConfig::default(),
            store: None,
            restored: None,
            cluster: None,
            closing: None,
        })
    }

    /// The query's own expressions and the window's kind, for EXPLAIN.
    pub fn with_display(mut self, display: WindowDisplay) -> Self {
        self.display = display;
        self
    }

    /// How the sessions are kept (partitions, memory budget, time-to-live).
    pub fn with_state_config(mut self, config: StateConfig) -> Self {
        self.config = config;
        self
    }

    /// Update mode emits a changelog: a session that grows or merges with another
    /// changes its bounds, which are part of its key, so its earlier rows are
    /// retracted (`-D`) before the new one is added (`+I`).
    fn changelog(&self) -> Option<SchemaRef> {
        emits_changelog(self.changed_only, self.time.window.emit_closed_only)
            .then(|| crate::ops::changelog_schema(&self.output_schema))
    }

    /// Whether a batch must also visit the keys whose sessions the watermark closed.
    fn closes(&self) -> Option<i64> {
        let w = &self.time.window;
        (w.evict_closed || w.emit_closed_only)
            .then_some(self.time.watermark)
            .flatten()
    }
}

/// Whether a session aggregate's rows are a changelog: in update mode (changed
/// sessions only, not append's closed ones), where a session's bounds move.
pub(crate) fn emits_changelog(changed_only: bool, append: bool) -> bool {
    changed_only && !append
}

/// Where the partial aggregate's columns go in the store: the group keys other than
/// the session are the store's keys; the session and each state column become lists.
#[derive(Clone)]
pub(crate) struct Layout {
    nested: Nested,
    /// The session's position among the group keys.
    session: usize,
}

impl Layout {
    pub(crate) fn new(partial: SchemaRef, nk: usize, session: usize) -> Self {
        let others: Vec<usize> = (0..nk).filter(|i| *i != session).collect();
        let lists = std::iter::once(session)
            .chain(nk..partial.fields().len())
            .collect();
        Self {
            nested: Nested::new(partial, others, lists),
            session,
        }
    }

    /// The group keys, the session among them.
    fn nk(&self) -> usize {
        self.nested.keys.len() + 1
    }

    fn store(&self, config: StateConfig) -> Result<KeyedState> {
        let mut store = KeyedState::try_new(
            &self.nested.key_fields(),
            &self.nested.list_fields(),
            config,
        )?;
        store.set_bound(self.bound());
        Ok(store)
    }

    /// The store's key and value (list) columns.
    pub(crate) fn fields(&self) -> (Vec<FieldRef>, Vec<FieldRef>) {
        (self.nested.key_fields(), self.nested.list_fields())
    }

    /// A key is due once the watermark passes the end of its earliest session.
    pub(crate) fn bound(&self) -> Arc<BoundFn> {
        let at = self.nested.keys.len();
        Arc::new(move |rows: &RecordBatch| earliest_ends(rows, at))
    }

    /// The other group keys' positions: what the store is keyed (and a cluster's
    /// rows partitioned) by.
    pub(crate) fn keys(&self) -> &[usize] {
        &self.nested.keys
    }
}

/// Per row of the store (keys, then the session lists at `at`): the end of its
/// earliest session.
fn earliest_ends(rows: &RecordBatch, at: usize) -> Result<Vec<Option<i64>>> {
    min_per_list(rows.column(at), |sessions| {
        Ok(window_ends(sessions)?.reinterpret_cast())
    })
}

/// One batch's work on one state partition.
struct Step<'a> {
    agg: &'a PartialAggregate,
    time: &'a EventTime,
    layout: &'a Layout,
    output_schema: &'a SchemaRef,
    changed_only: bool,
    /// Update mode's rows as a changelog, of this schema (`output_schema` and `_op`).
    changelog: Option<&'a SchemaRef>,
    input: &'a RecordBatch,
    closes: Option<i64>,
    now: i64,
    cutoff: Option<i64>,
}

impl Step<'_> {
    /// The partition's keys with rows in `routed` (the other group keys, then each
    /// row's position in the input) or with a session the watermark closed: their
    /// sessions merged with the rows, emitted, kept (or removed); the output.
    fn run(&self, p: &mut Partition, routed: Option<Vec<ArrayRef>>) -> Result<Option<RecordBatch>> {
        let nk = self.layout.nested.keys.len();
        let routed = match routed {
            Some(r) => r,
            None => {
                if !self.closes.is_some_and(|wm| p.may_be_due(wm, true)) {
                    return Ok(None);
                }
                let mut empty: Vec<ArrayRef> = self
                    .layout
                    .nested
                    .key_fields()
                    .iter()
                    .map(|f| datafusion::arrow::array::new_empty_array(f.data_type()))
                    .collect();
                empty.push(datafusion::arrow::array::new_empty_array(&DataType::UInt32));
                empty
            }
        };
        let rows = routed[nk].len();
        let mut touched = p.touch(&routed[..nk], rows, self.cutoff)?;
        if let Some(wm) = self.closes {
            let at = nk;
            p.touch_due(
                &mut touched,
                wm,
                Some(&move |r: &RecordBatch| earliest_ends(r, at)),
            )?;
        }
        if touched.len() == 0 {
            return Ok(None);
        }
        let previous = self.layout.nested.explode(
            &touched.keys,
            &touched.previous,
            &touched.previous_group,
        )?;
        let positions = routed[nk].as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        let before = self.changelog.map(|_| previous.clone());
        let mut batches = vec![previous, take_record_batch(self.input, positions)?];
        coalesce_sessions(&mut batches, self.layout.session, self.layout.nk())?;
        // Each stored session's bounds after the merge: the session it is now part of.
        let merged = batches[0].clone();
        let input = batches.pop();
        let folded = self.agg.fold(batches.pop(), input.into_iter().collect())?;
        let (mut out, kept) = self
            .time
            .emit(folded, self.output_schema, self.changed_only)?;
        if let (Some(schema), Some(before)) = (self.changelog, before) {
            out = self.retracting(schema, &before, &merged, out)?;
        }
        let (lists, keep) = self.layout.nested.nest(&kept, &touched.keys)?;
        p.put(touched, lists, Some(&keep), self.now, self.cutoff)?;
        Ok(Some(out))
    }

    /// The changed sessions `out` as a changelog: each stored session (`before`, as
    /// it was emitted; `merged`, the same rows with the bounds of the session it is
    /// now part of) that grew or merged into a changed one is retracted with the
    /// values it was emitted with, then the changed sessions are added. A session's
    /// bounds are part of its key, so an upsert would leave the old row standing.
    fn retracting(
        &self,
        schema: &SchemaRef,
        before: &RecordBatch,
        merged: &RecordBatch,
        out: RecordBatch,
    ) -> Result<RecordBatch> {
        let nk = self.layout.nk();
        let fields = (0..nk)
            .map(|i| SortField::new(out.schema().field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let changed = converter.convert_columns(&out.columns()[..nk])?;
        let changed: HashSet<datafusion::arrow::row::Row<'_>> = changed.iter().collect();
        let stored = converter.convert_columns(&merged.columns()[..nk])?;
        let retract: BooleanArray = stored.iter().map(|r| Some(changed.contains(&r))).collect();
        let gone = filter_record_batch(before, &retract)?;
        let gone = emitted_rows(self.agg, nk, self.output_schema, &gone)?;
        Ok(concat_batches(
            schema,
            &[
                with_op(gone, OP_DELETE, schema)?,
                with_op(out, OP_INSERT, schema)?,
            ],
        )?)
    }
}

/// A batch's fold of session windows into a store: what a `SessionAggregate` does
/// here and what a state partition's task does on a cluster (`SessionTask`).
struct Sessions<'a> {
    agg: &'a PartialAggregate,
    time: &'a EventTime,
    layout: &'a Layout,
    /// The rows emitted: keys and aggregates' values, truncated to its width.
    output_schema: &'a SchemaRef,
    changed_only: bool,
    /// Update mode: the rows as a changelog, of this schema (see [`Step::retracting`]).
    changelog: Option<&'a SchemaRef>,
}

impl Sessions<'_> {
    /// `input` (partial rows, the store's flat layout) folded into the keys it has
    /// rows for and, with `closes`, the keys with a session that watermark closed;
    /// what the batch emits of them.
    fn fold(
        &self,
        store: &mut KeyedState,
        input: &RecordBatch,
        closes: Option<i64>,
        now: i64,
    ) -> Result<Vec<RecordBatch>> {
        let n = input.num_rows();
        let mut columns: Vec<ArrayRef> = self
            .layout
            .nested
            .keys
            .iter()
            .map(|i| Arc::clone(input.column(*i)))
            .collect();
        columns.push(Arc::new(UInt32Array::from_iter_values(0..n as u32)));
        let routed = store.route(&columns, n)?;
        let step = Step {
            agg: self.agg,
            time: self.time,
            layout: self.layout,
            output_schema: self.output_schema,
            changed_only: self.changed_only,
            changelog: self.changelog,
            input,
            closes,
            now,
            cutoff: store.cutoff(now),
        };
        // Once the watermark closes sessions, every partition may hold some.
        let inputs: Vec<Option<Option<Vec<ArrayRef>>>> = if closes.is_some() {
            routed.into_iter().map(Some).collect()
        } else {
            routed.into_iter().map(|r| r.map(Some)).collect()
        };
        Ok(store
            .for_each(inputs, |p, routed| step.run(p, routed))?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Every session the store keeps (complete mode).
    fn all(&self, store: &mut KeyedState, now: i64) -> Result<Vec<RecordBatch>> {
        let layout = self.layout;
        let cutoff = store.cutoff(now);
        let stored = store.all(|p, ()| p.scan(cutoff))?;
        let mut out = Vec::new();
        for b in stored.into_iter().flatten() {
            let flat = layout.nested.explode_rows(&b)?;
            out.push(emitted_rows(
                self.agg,
                layout.nk(),
                self.output_schema,
                &flat,
            )?);
        }
        Ok(out)
    }
}

/// Sessions as they are emitted: `flat`'s `nk` group keys then each aggregate's value
/// from its state columns, as many as `schema` (the output) holds.
fn emitted_rows(
    agg: &PartialAggregate,
    nk: usize,
    schema: &SchemaRef,
    flat: &RecordBatch,
) -> Result<RecordBatch> {
    let mut columns = flat.columns()[..nk].to_vec();
    columns.extend(agg.evaluate(&flat.columns()[nk..], flat.num_rows())?);
    columns.truncate(schema.fields().len());
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// A state partition's task of a session-window aggregate on a cluster
/// (`cluster::state`): the partial rows of the keys hashed to it, folded into its
/// store as [`SessionAggregate::process`] folds them, with the watermark the driver
/// had before the batch (the batch's own is known once every task has folded).
///
/// The sessions that watermark closed leave the store first (locally they left at
/// the end of the batch that closed them; a row of this batch must not merge with
/// them), and the rows they would have taken are dropped as late. What it emits:
/// the changed sessions (update) or all of them (complete) with every aggregate's
/// value, hidden ones too; in append mode nothing — a second job
/// ([`SessionTask::close`]) emits what the batch's new watermark closed.
pub(crate) struct SessionTask<'a> {
    pub agg: &'a PartialAggregate,
    pub layout: &'a Layout,
    pub key_index: usize,
    pub evict_closed: bool,
    pub append: bool,
    pub changed_only: bool,
    /// Keys and every aggregate's value.
    pub wide: &'a SchemaRef,
    /// Update mode: `wide` and the `_op` column, the rows emitted as a changelog.
    pub changelog: Option<&'a SchemaRef>,
    pub watermark: Option<i64>,
    pub now: i64,
}

impl SessionTask<'_> {
    fn time(
        &self,
        emit_closed_only: bool,
        evict_closed: bool,
        watermark: Option<i64>,
    ) -> EventTime {
        let mut time = EventTime::new(EventTimeWindow {
            key_index: self.key_index,
            delay: None,
            emit_closed_only,
            evict_closed,
            watermark_is_batch_time: false,
            keyed_by_end: None,
            watermark_from: None,
        });
        time.watermark = watermark;
        time
    }

    fn sessions<'a>(
        &'a self,
        time: &'a EventTime,
        changed_only: bool,
        changelog: Option<&'a SchemaRef>,
    ) -> Sessions<'a> {
        Sessions {
            agg: self.agg,
            time,
            layout: self.layout,
            output_schema: self.wide,
            changed_only,
            changelog,
        }
    }

    /// The batch's partial rows folded in: what it emits, the rows dropped as late
    /// and the newest event time folded in.
    pub fn fold(
        &self,
        store: &mut KeyedState,
        input: Vec<RecordBatch>,
    ) -> Result<(Vec<RecordBatch>, u64, Option<i64>)> {
        let mut time = self.time(false, self.evict_closed, self.watermark);
        let (input, max_event_time) = time.drop_late(self.agg, input)?;
        let late = time.late_rows_last_batch;
        if let (Some(wm), true) = (self.watermark, self.evict_closed || self.append) {
            // The sessions the watermark before the batch closed: emitted already (by
            // the batch that closed them, or its close job), they go.
            let evict = self.time(false, true, Some(wm));
            let empty = RecordBatch::new_empty(Arc::clone(&self.layout.nested.flat));
            self.sessions(&evict, true, None)
                .fold(store, &empty, Some(wm), self.now)?;
        }
        let input = concat_batches(&self.layout.nested.flat, &input)?;
        let changed_only = self.changed_only || self.append;
        let changelog = if self.append { None } else { self.changelog };
        let sessions = self.sessions(&time, changed_only, changelog);
        let mut out = sessions.fold(store, &input, None, self.now)?;
        if self.append {
            out.clear();
        } else if !self.changed_only {
            out = sessions.all(store, self.now)?;
        }
        Ok((out, late, max_event_time))
    }

    /// Append mode's second job: the sessions `watermark` (the batch's new one)
    /// closed, taken out of the store and emitted.
    pub fn close(&self, store: &mut KeyedState) -> Result<Vec<RecordBatch>> {
        let Some(wm) = self.watermark else {
            return internal_err!("closing sessions without a watermark");
        };
        let time = self.time(true, true, Some(wm));
        let empty = RecordBatch::new_empty(Arc::clone(&self.layout.nested.flat));
        self.sessions(&time, false, None)
            .fold(store, &empty, Some(wm), self.now)
    }
}

#[async_trait]
impl StreamOperator for SessionAggregate {
    fn name(&self) -> String {
        "SessionAggregate".into()
    }

    fn output_schema(&self) -> SchemaRef {
        self.changelog()
            .unwrap_or_else(|| Arc::clone(&self.output_schema))
    }

    fn describe(&self) -> String {
        let window = self.time.window.fingerprint(true);
        let text = super::fingerprint(&self.agg, Some(window), self.changed_only);
        // Its rows changed kind: a checkpoint of its upserts is another query's.
        match self.changelog() {
            Some(_) => format!("{text} as a changelog"),
            None => text,
        }
    }

    fn explain(&self) -> String {
        let mut text = event_time::explain(
            "SessionAggregate",
            &self.display,
            &self.time.window,
            self.changed_only,
        );
        if self.changelog().is_some() {
            text.push_str(
                "; a changelog: a session that grows or merges retracts the rows it was emitted as",
            );
        }
        if let Some(c) = &self.cluster {
            return c.explained(&text, self.config.partitions);
        }
        if let Some(ttl) = self.config.ttl {
            text.push_str(&format!(
                "; bounded by state_ttl too: a key without rows for {} is evicted with its sessions",
                crate::time::format_duration(ttl)
            ));
        }
        text
    }

    fn emits(&self) -> Emits {
        if self.changelog().is_some() {
            return Emits::Changelog;
        }
        super::emits(Some(&self.time.window), self.changed_only, &self.agg)
    }

    fn can_partition_on_cluster(&self) -> bool {
        // As a windowed aggregate's (its own event-time watermark; append mode only
        // when closed sessions leave), and keyed by something besides the session:
        // the rows are partitioned by the other keys, a key's sessions in one task.
        let w = &self.time.window;
        (!w.emit_closed_only || w.evict_closed) && w.watermark_from.is_none() && self.agg.keys() > 1
    }

    fn partition_on_cluster(&mut self, placement: Placement) {
        self.cluster = Some(OnCluster::new(placement));
    }

    fn begin_batch(&mut self, ctx: &OperatorContext) {
        if let Some(c) = &self.cluster {
            c.begin(ctx.batch_time.as_millis(), self.time.watermark);
        }
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.agg.plan(input).await?;
        let partial = Arc::clone(&self.agg.planned()?.partial_schema);
        let layout = Layout::new(partial, self.agg.keys(), self.time.window.key_index);
        let changelog = self.changelog().is_some();
        if let Some(c) = &mut self.cluster {
            let mut wide = self.agg.output_schema(input)?;
            if changelog {
                wide = crate::ops::changelog_schema(&wide);
            }
            return c.plan_window(
                plan,
                layout.keys(),
                &wide,
                &self.config,
                self.changed_only,
                &self.time.window,
                true,
            );
        }
        self.store = Some((layout.store(self.config.clone())?, layout));
        if let Some(state) = self.restored.take() {
            self.restore(state)?;
        }
        Ok(plan)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let changelog = self.changelog();
        if let Some(c) = &mut self.cluster {
            return Ok(Some(super::on_cluster::windows_from_tasks(
                &mut self.time,
                &self.agg,
                c,
                ctx,
                input,
                changelog.as_ref().unwrap_or(&self.output_schema),
                &mut self.closing,
            )?));
        }
        let (input, max_event_time) = self.time.drop_late(&self.agg, input)?;
        self.time.advance(ctx, max_event_time);
        let closes = self.closes();
        let Some((store, layout)) = self.store.as_mut() else {
            return internal_err!("SessionAggregate used before plan_input");
        };
        let input = concat_batches(&layout.nested.flat, &input)?;
        let now = ctx.batch_time.as_millis();
        let sessions = Sessions {
            agg: &self.agg,
            time: &self.time,
            layout,
            output_schema: &self.output_schema,
            changed_only: self.changed_only,
            changelog: changelog.as_ref(),
        };
        let mut out = sessions.fold(store, &input, closes, now)?;
        let w = &self.time.window;
        if !self.changed_only && !w.emit_closed_only {
            // Complete mode: every session, the one output that reads all the state.
            out = sessions.all(store, now)?;
        }
        if out.is_empty() {
            let schema = changelog.unwrap_or_else(|| Arc::clone(&self.output_schema));
            out.push(RecordBatch::new_empty(schema));
        }
        Ok(Some(out))
    }

    fn emit_plan(&mut self) -> Option<Arc<dyn ExecutionPlan>> {
        self.closing.take()
    }

    fn process_emitted(&mut self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let mut out = rows
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| {
                event_time::output_batch(
                    &self.time.window,
                    &self.output_schema,
                    b.columns().to_vec(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        if out.is_empty() {
            out.push(RecordBatch::new_empty(Arc::clone(&self.output_schema)));
        }
        Ok(out)
    }

    /// Keys (each with its sessions), not sessions.
    fn state_stats(&self) -> StateStats {
        self.store
            .as_ref()
            .map(|(s, _)| s.stats())
            .unwrap_or_default()
    }

    /// The store's rows (a delta of the keys changed or removed since the last
    /// checkpoint, or all of them) and the watermark.
    fn snapshot(&mut self) -> Result<OperatorState> {
        let watermark = self.time.watermark;
        if let Some(c) = &mut self.cluster {
            let mut state = c.operator_state(self.config.partitions);
            state.meta["watermark"] = watermark.into();
            return Ok(state);
        }
        match self.store.as_mut() {
            Some((store, _)) => {
                let mut snapshot = store.snapshot()?;
                snapshot.meta["watermark"] = watermark.into();
                Ok(snapshot)
            }
            None => Ok(self.restored.clone().unwrap_or_else(|| OperatorState {
                batches: Vec::new(),
                meta: serde_json::json!({ "watermark": watermark }),
            })),
        }
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        self.time.watermark = state.meta["watermark"].as_i64();
        if super::on_cluster::restore_placement(
            "SessionAggregate",
            self.cluster.as_mut(),
            &state,
            self.config.partitions,
        )? {
            return Ok(());
        }
        let Some((store, layout)) = self.store.as_mut() else {
            // Not planned yet: `plan_input` restores it.
            self.restored = Some(state);
            return Ok(());
        };
        if state.meta.get("state").is_some() {
            return store.restore(state.batches);
        }
        // A checkpoint from before the store: every session as a partial row.
        match restored_state(&state.batches)? {
            Some(flat) => store.restore(vec![layout.nested.nest_all(&flat)?]),
            None => store.restore(Vec::new()),
        }
    }

    fn late_rows(&self) -> u64 {
        self.time.late_rows_last_batch
    }

    fn watermark(&self) -> Option<i64> {
        self.time.watermark
    }

    fn watermark_source(&self) -> Option<(usize, usize)> {
        self.time.window.watermark_from
    }
}

/// The `{start, end}` session column of `batch`.
fn session_struct(batch: &RecordBatch, index: usize) -> Result<&StructArray> {
    match batch.column(index).as_any().downcast_ref::<StructArray>() {
        Some(s) => Ok(s),
        None => internal_err!("session key is not a struct"),
    }
}

/// Rewrites the session column (`{start, end}` structs at `session_index`) of
/// `batches` so that, per value of the other group keys, overlapping sessions become
/// their union. The state merge then combines their aggregates.
fn coalesce_sessions(batches: &mut [RecordBatch], session_index: usize, nk: usize) -> Result<()> {
    let rows_total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows_total == 0 {
        return Ok(());
    }
    // Other group keys of every row, in the row format, and each row's session.
    let other: Vec<usize> = (0..nk).filter(|i| *i != session_index).collect();
    let fields: Vec<SortField> = other
        .iter()
        .map(|i| SortField::new(batches[0].schema().field(*i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let mut keys = converter.empty_rows(rows_total, 64);
    // No other key (sessions over the whole stream): the row format has no rows, and
    // every row has the same key.
    let keyed = !other.is_empty();
    let mut starts = Vec::with_capacity(rows_total);
    let mut ends = Vec::with_capacity(rows_total);
    for b in batches.iter() {
        let cols: Vec<ArrayRef> = other.iter().map(|i| Arc::clone(b.column(*i))).collect();
        converter.append(&mut keys, &cols)?;
        let s = session_struct(b, session_index)?;
        for (col, out) in [(0, &mut starts), (1, &mut ends)] {
            let ms = cast(
                s.column(col),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )?;
            let Some(ms) = ms.as_any().downcast_ref::<TimestampMillisecondArray>() else {
                return internal_err!("session bounds are not timestamps");
            };
            out.extend(ms.iter().map(|v| v.unwrap_or(i64::MIN)));
        }
    }
    let mut order: Vec<usize> = (0..rows_total).collect();
    let key_order = |a: usize, b: usize| {
        if keyed {
            keys.row(a).cmp(&keys.row(b))
        } else {
            std::cmp::Ordering::Equal
        }
    };
    order.sort_by(|a, b| key_order(*a, *b).then(starts[*a].cmp(&starts[*b])));
    // One pass: runs of overlapping sessions of one key share (min start, max end).
    let mut merged_start = vec![0i64; rows_total];
    let mut merged_end = vec![0i64; rows_total];
    let mut run_begin = 0;
    while run_begin < order.len() {
        let first = order[run_begin];
        let (start, mut end) = (starts[first], ends[first]);
        let mut run_end = run_begin + 1;
        while run_end < order.len() {
            let r = order[run_end];
            if key_order(r, first).is_ne() || starts[r] > end {
                break;
            }
            end = end.max(ends[r]);
            run_end += 1;
        }
        for i in &order[run_begin..run_end] {
            merged_start[*i] = start;
            merged_end[*i] = end;
        }
        run_begin = run_end;
    }
    let mut offset = 0;
    for b in batches.iter_mut() {
        let n = b.num_rows();
        let s = session_struct(b, session_index)?;
        let DataType::Struct(fields) = s.data_type().clone() else {
            return internal_err!("session key is not a struct");
        };
        let start = cast(
            &(Arc::new(TimestampMillisecondArray::from(
                merged_start[offset..offset + n].to_vec(),
            )) as ArrayRef),
            fields[0].data_type(),
        )?;
        let end = cast(
            &(Arc::new(TimestampMillisecondArray::from(
                merged_end[offset..offset + n].to_vec(),
            )) as ArrayRef),
            fields[1].data_type(),
        )?;
        let rebuilt = StructArray::try_new(fields, vec![start, end], s.nulls().cloned())?;
        let mut cols = b.columns().to_vec();
        cols[session_index] = Arc::new(rebuilt);
        *b = RecordBatch::try_new(b.schema(), cols)?;
        offset += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::functions_aggregate::expr_fn::{count, max};
    use datafusion::prelude::{col, lit};

    use super::*;
    use crate::ops::test_input::{TestInput, rows};
    use crate::state::StateConfig;

    fn input() -> TestInput {
        TestInput::keyed_events()
    }

    fn rows_at(keys: &[&str], ms: &[i64]) -> RecordBatch {
        input().events(keys, ms)
    }

    /// Sessions with a 5 s gap per key, counted; watermark 1 s, update mode.
    async fn sessions() -> SessionAggregate {
        let input = input();
        let session = datafusion::prelude::named_struct(vec![
            lit("start"),
            col("ts"),
            lit("end"),
            col("ts") + lit(datafusion::scalar::ScalarValue::new_interval_dt(0, 5_000)),
        ])
        .alias("s");
        SessionAggregate::try_new(
            &input.frame(),
            vec![col("k"), session],
            vec![
                count(lit(1)).alias("n"),
                max(col("ts")).alias("__max"),
                count(lit(1)).alias("__rows"),
            ],
            EventTimeWindow {
                key_index: 1,
                delay: Some(Duration::from_secs(1)),
                emit_closed_only: false,
                evict_closed: true,
                watermark_is_batch_time: false,
                keyed_by_end: None,
                watermark_from: None,
            },
        )
        .unwrap()
        .with_changed_only(true)
    }

    /// A's sessions, in 2 partitions, come back into B (3 partitions) from a full
    /// snapshot and a delta given before B is planned, and into C from a checkpoint
    /// written before the store (every session as a partial row); all three go on
    /// alike.
    #[tokio::test]
    async fn sessions_come_back_in_any_partition_count_and_from_the_old_format() {
        let config = |partitions| StateConfig {
            partitions,
            memory: usize::MAX,
            ttl: None,
            ..StateConfig::default()
        };
        let (ia, ib, ic) = (input(), input(), input());
        let mut a = sessions().await.with_state_config(config(2));
        let first = rows_at(&["a", "b", "c"], &[1_000, 1_500, 2_000]);
        ia.run(&mut a, 1, vec![first]).await;
        let full = a.snapshot().unwrap();
        assert_eq!(full.meta["state"], "full");
        ia.run(&mut a, 2, vec![rows_at(&["a", "d"], &[4_000, 2_500])])
            .await;
        let delta = a.snapshot().unwrap();
        assert_eq!(delta.meta["state"], "delta");
        let mut b = sessions().await.with_state_config(config(3));
        let mut chain = full.batches.clone();
        chain.extend(delta.batches.clone());
        b.restore(OperatorState {
            batches: chain,
            meta: delta.meta.clone(),
        })
        .unwrap();
        // The old format: every session as the partial aggregate's row.
        let flat = {
            let (store, layout) = a.store.as_mut().unwrap();
            let stored = store.all(|p, ()| p.scan(None)).unwrap();
            let flat: Vec<RecordBatch> = stored
                .into_iter()
                .flatten()
                .map(|rows| layout.nested.explode_rows(&rows).unwrap())
                .collect();
            flat
        };
        assert_eq!(flat.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
        let mut c = sessions().await;
        c.restore(OperatorState {
            batches: flat,
            meta: serde_json::json!({ "watermark": a.time.watermark }),
        })
        .unwrap();
        // Watermark 7 s closes c's and d's sessions; a's and b's grow; e's begins.
        let third = || rows_at(&["a", "b", "e"], &[8_000, 5_000, 9_000]);
        // Update mode's changelog: a grown session retracts its row as emitted.
        let want = [
            "a,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:09},2,-D",
            "a,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:13},3,+I",
            "b,{start: 1970-01-01T00:00:01.500, end: 1970-01-01T00:00:06.500},1,-D",
            "b,{start: 1970-01-01T00:00:01.500, end: 1970-01-01T00:00:10},2,+I",
            "e,{start: 1970-01-01T00:00:09, end: 1970-01-01T00:00:14},1,+I",
        ];
        for (op, input) in [(&mut a, &ia), (&mut b, &ib), (&mut c, &ic)] {
            let mut got = rows(&input.run(op, 3, vec![third()]).await);
            got.sort();
            assert_eq!(got, want);
            assert_eq!(op.state_rows(), 3, "a, b and e keep a session");
        }
    }

    #[tokio::test]
    async fn rows_within_the_gap_of_each_other_make_one_session_across_batches() {
        let (input, mut op) = (input(), sessions().await);
        let out = input
            .run(
                &mut op,
                1,
                vec![rows_at(&["a", "a", "b"], &[1_000, 4_000, 1_000])],
            )
            .await;
        assert_eq!(
            rows(&out),
            [
                "a,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:09},2,+I",
                "b,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:06},1,+I"
            ]
        );
        // 8 s is within 5 s of a's session (ends at 9 s): the session grows, and its
        // row ending at 9 s is retracted (its bounds are part of its key).
        let out = input.run(&mut op, 2, vec![rows_at(&["a"], &[8_000])]).await;
        assert_eq!(
            rows(&out),
            [
                "a,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:09},2,-D",
                "a,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:13},3,+I"
            ]
        );
        assert_eq!(
            op.state_rows(),
            1,
            "b's session closed at watermark 7 s and left"
        );
    }

    /// A row between two open sessions of a key merges them: both are retracted,
    /// the union added; a session the batch left alone is neither.
    #[tokio::test]
    async fn a_merge_retracts_every_session_it_joins() {
        let (input, mut op) = (input(), sessions().await);
        // a: [10 s, 15 s) and [15.5 s, 20.5 s), both open at watermark 14.5 s.
        let first = rows_at(&["a", "a", "b"], &[10_000, 15_500, 12_000]);
        let out = input.run(&mut op, 1, vec![first]).await;
        assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        let out = input
            .run(&mut op, 2, vec![rows_at(&["a"], &[14_600])])
            .await;
        let mut got = rows(&out);
        got.sort();
        assert_eq!(
            got,
            [
                "a,{start: 1970-01-01T00:00:10, end: 1970-01-01T00:00:15},1,-D",
                "a,{start: 1970-01-01T00:00:10, end: 1970-01-01T00:00:20.500},3,+I",
                "a,{start: 1970-01-01T00:00:15.500, end: 1970-01-01T00:00:20.500},1,-D",
            ]
        );
        assert_eq!(op.emits(), Emits::Changelog);
    }

    /// Append and complete mode emit no changelog: no row is ever replaced.
    #[tokio::test]
    async fn only_update_mode_emits_a_changelog() {
        let complete = sessions().await.with_changed_only(false);
        assert_eq!(complete.emits(), Emits::WholeResult);
        assert_eq!(complete.output_schema().fields().len(), 3);
    }
}
