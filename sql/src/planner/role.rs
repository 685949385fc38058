//! The role of each node of a streaming query's plan, decided from what the rows under
//! it hold ([`Rows`]) and the output mode — a pure function: it builds nothing and
//! changes nothing; the planner (`mod.rs`) acts on what it says. A node that cannot
//! run over a stream is refused here, with the reason.

use datafusion::logical_expr::{Aggregate, Distinct, Expr, Join, LogicalPlan, Window};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use flumen_engine::ops::Emits;

use super::classify::{
    OutputInfo, Rows, groups_by_batch_time, is_window_of_operator, joins_on_batch_time,
    reads_operator_output, reads_stream,
};
use super::{OutputMode, StreamPlanner, join_exprs, mixed, rank, refuse};
use crate::batch_time::BATCH_TIME_COLUMN;
use crate::window::{CUMULATE_WINDOW_FUNCTION, SESSION_WINDOW_FUNCTION, WINDOW_FUNCTION};

/// What one node does in a streaming query.
#[derive(Debug, PartialEq)]
pub(super) enum Role {
    /// Runs per batch as DataFusion planned it; the line says why, for EXPLAIN.
    PerBatch(Option<String>),
    /// It needs a whole result and reads an operator's changed rows: those become the
    /// whole result first (a `Materialize`), then the node is classified again.
    MaterializeInputs,
    /// A `GROUP BY` over appended rows, kept across batches.
    RunningAggregate,
    /// A `GROUP BY` whose group key at this index is a window.
    WindowAggregate(usize),
    /// `DISTINCT` over appended rows.
    Distinct,
    /// A `ROW_NUMBER()` window over a stream: per batch, with the filter on its rank
    /// above it becoming the operator.
    RankWindow,
    /// A filter over a `ROW_NUMBER()` window seen below: perhaps its rank filter.
    RankFilter,
    /// A join of two streams' appended rows over event time.
    StreamJoin,
    /// A projection, filter or alias over a changelog: runs per batch, carrying the
    /// `_op` column through.
    OverChangelog,
    /// A `GROUP BY` over a changelog: signed sums, and a changelog of its groups.
    ChangelogAggregate,
    /// A `GROUP BY` over another aggregate's changed groups (upserts): those become a
    /// changelog first (a `ToChangelog`: each group's old row retracted, its new row
    /// added), then the node is classified again — a `ChangelogAggregate`.
    ChangelogInputs,
}

type Classified = datafusion::error::Result<Role>;

impl StreamPlanner<'_> {
    /// The role of `node`, by what its inputs hold.
    pub(super) fn classify(&self, node: &LogicalPlan) -> Classified {
        // DataFusion turns `IN (SELECT ...)`, `EXISTS` and scalar subqueries into joins
        // after this planner has run: over a stream, such a join would see only the
        // subquery's rows of the same batch.
        let mut streamed_subquery = false;
        node.apply_subqueries(|sub| {
            streamed_subquery |= reads_stream(sub, self.scope.streams);
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })?;
        if streamed_subquery {
            return refuse(
                "a subquery over a stream (IN, EXISTS or a scalar subquery) would see only the \
                 rows of the same batch: join the two streams instead (a join bounded in time \
                 keeps both sides' rows as state), or read a table in the subquery",
            );
        }
        if self.rows(node) == Rows::Changelog {
            // (Append mode never has a changelog: the join refuses it.)
            return over_changelog(node);
        }
        let needs_whole = matches!(
            node,
            LogicalPlan::Aggregate(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Union(_)
        );
        if needs_whole && self.rows(node) == Rows::Changes {
            if let LogicalPlan::Aggregate(agg) = node
                && self.changelog_route(agg)
            {
                return Ok(Role::ChangelogInputs);
            }
            return Ok(Role::MaterializeInputs);
        }
        match node {
            LogicalPlan::Aggregate(agg) => self.aggregate_role(agg),
            LogicalPlan::Distinct(Distinct::All(input)) => match self.rows(input) {
                Rows::Appends => Ok(Role::Distinct),
                Rows::Whole => Ok(Role::PerBatch(Some(
                    "Per-batch DISTINCT over the whole result of a stateful operator".into(),
                ))),
                Rows::Mixed => refuse(mixed("DISTINCT")),
                _ => Ok(Role::PerBatch(None)),
            },
            LogicalPlan::Distinct(Distinct::On(_)) if self.rows(node) != Rows::Static => {
                refuse("DISTINCT ON over a stream is not supported yet; use GROUP BY")
            }
            LogicalPlan::Join(j) => self.join_role(node, j),
            LogicalPlan::Window(w) => self.window_role(w),
            LogicalPlan::Filter(_) if self.rank_windows > self.rank_filters => Ok(Role::RankFilter),
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
                let sort = matches!(node, LogicalPlan::Sort(_));
                match self.rows(node.inputs()[0]) {
                    Rows::Whole => Ok(Role::PerBatch(Some(format!(
                        "Per-batch {} over the whole result of a stateful operator",
                        if sort { "ORDER BY" } else { "LIMIT" }
                    )))),
                    Rows::Appends if !sort => refuse(
                        "LIMIT over a stream would keep the first rows of every batch, not of \
                         the stream; aggregate first (LIMIT then runs over the whole result in \
                         complete mode), or use ROW_NUMBER() OVER (ORDER BY ...) <= N for the \
                         top rows",
                    ),
                    Rows::Mixed => refuse(mixed("ORDER BY / LIMIT")),
                    _ => Ok(Role::PerBatch(None)),
                }
            }
            LogicalPlan::Union(_) => match self.rows(node) {
                Rows::Mixed => refuse(mixed("UNION")),
                _ => Ok(Role::PerBatch(None)),
            },
            _ => Ok(Role::PerBatch(None)),
        }
    }

    /// Whether an aggregate over changed rows can read them as a changelog: the
    /// aggregate takes rows back out (`SignedAggregate::check`), every node between
    /// reads them row by row (projection, filter, alias), and each scan of changed
    /// rows has a key to retract the old row by. Otherwise the rows are kept whole and
    /// the aggregate recomputed over them (`Materialize`).
    fn changelog_route(&self, agg: &Aggregate) -> bool {
        if super::changelog_agg::SignedAggregate::check(agg).is_err() {
            return false;
        }
        let mut ok = true;
        let _ = agg.input.apply(|n| {
            if self.rows(n) != Rows::Changes {
                return Ok(TreeNodeRecursion::Jump);
            }
            match n {
                LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::SubqueryAlias(_) => {}
                LogicalPlan::TableScan(s) => {
                    ok &= matches!(
                        self.scope.outputs.get(s.table_name.table()),
                        Some(OutputInfo { emits: Emits::Changes { keys }, .. }) if !keys.is_empty()
                    );
                }
                _ => ok = false,
            }
            Ok(TreeNodeRecursion::Continue)
        });
        ok
    }

    fn aggregate_role(&self, agg: &Aggregate) -> Classified {
        let over_operator = reads_operator_output(&agg.input);
        match self.rows(&agg.input) {
            // (`classify` answers for a changelog first.)
            Rows::Changelog => refused_over_changelog("an aggregate"),
            Rows::Static | Rows::Changes => Ok(Role::PerBatch(None)),
            Rows::Mixed => refuse(mixed("an aggregate")),
            // Each batch of the input holds its whole result: an aggregate over it, per
            // batch, is exact.
            Rows::Whole => Ok(Role::PerBatch(Some(format!(
                "Per-batch aggregate over the whole result of a stateful operator: \
                 group by [{}], recomputed each batch",
                join_exprs(&agg.group_expr)
            )))),
            // Every row of a batch has the same _batch_time: a per-batch aggregate,
            // Spark's reduceByKey on each batch. No state.
            Rows::Appends if groups_by_batch_time(agg) && !over_operator => {
                Ok(Role::PerBatch(Some(format!(
                    "Per-batch aggregate (GROUP BY {BATCH_TIME_COLUMN}): group by [{}], no state",
                    join_exprs(&agg.group_expr)
                ))))
            }
            // In append mode a windowed aggregate emits all rows of a window in the
            // batch whose watermark closes it: grouped by that window, an aggregate
            // over them, per batch, is exact.
            Rows::Appends
                if self.mode() == OutputMode::Append
                    && !reads_stream(&agg.input, self.scope.streams)
                    && agg.group_expr.iter().any(|e| {
                        is_window_of_operator(&agg.input, e, &self.scope.outputs.window_keys())
                    }) =>
            {
                Ok(Role::PerBatch(Some(format!(
                    "Per-batch aggregate over the closed windows of a streaming aggregate: \
                     group by [{}], no state",
                    join_exprs(&agg.group_expr)
                ))))
            }
            Rows::Appends => {
                let window_key = agg.group_expr.iter().position(|e| {
                    matches!(e, Expr::ScalarFunction(f)
                            if f.name() == WINDOW_FUNCTION
                                || f.name() == SESSION_WINDOW_FUNCTION
                                || f.name() == CUMULATE_WINDOW_FUNCTION)
                });
                match window_key {
                    Some(k) => Ok(Role::WindowAggregate(k)),
                    None if self.mode() == OutputMode::Append => refuse(format!(
                        "output mode append cannot run a running aggregate (GROUP BY {}): its \
                         rows change with every batch; use SET output_mode = 'update' or \
                         'complete'",
                        join_exprs(&agg.group_expr)
                    )),
                    None => Ok(Role::RunningAggregate),
                }
            }
        }
    }

    fn join_role(&self, node: &LogicalPlan, j: &Join) -> Classified {
        let only_sources =
            |p: &LogicalPlan| reads_stream(p, self.scope.streams) && !reads_operator_output(p);
        match (self.rows(&j.left), self.rows(&j.right)) {
            (Rows::Static, _) | (_, Rows::Static) => Ok(Role::PerBatch(
                (self.rows(node) == Rows::Whole).then(|| {
                    "Per-batch join of the whole result of a stateful operator with a table"
                        .to_string()
                }),
            )),
            // Rows of different batches never match: a join within each batch is the
            // whole answer (DStream join semantics).
            (Rows::Appends, Rows::Appends)
                if joins_on_batch_time(j) && only_sources(&j.left) && only_sources(&j.right) =>
            {
                Ok(Role::PerBatch(Some(format!(
                    "Same-batch join ({BATCH_TIME_COLUMN} = {BATCH_TIME_COLUMN}): runs per batch, no state"
                ))))
            }
            // Two streams of rows that never change: a join over event time with state
            // on both sides; its matches never change either.
            (Rows::Appends, Rows::Appends) => Ok(Role::StreamJoin),
            (Rows::Whole, Rows::Whole) => Ok(Role::PerBatch(Some(
                "Per-batch join of the whole results of two stateful operators".into(),
            ))),
            _ => refuse(
                "a join of a stream's new rows with the whole result of a streaming aggregate \
                 would match each batch's rows against a result that keeps changing; use SET \
                 output_mode = 'append' (a windowed aggregate then emits each window once, \
                 when the watermark closes it) or join two aggregates",
            ),
        }
    }

    fn window_role(&self, w: &Window) -> Classified {
        match self.rows(&w.input) {
            // (`classify` answers for a changelog first.)
            Rows::Changelog => refused_over_changelog("a window function"),
            Rows::Static | Rows::Changes => Ok(Role::PerBatch(None)),
            Rows::Whole => Ok(Role::PerBatch(Some(format!(
                "Per-batch window functions over the whole result of a stateful operator: \
                 [{}], recomputed each batch",
                join_exprs(&w.window_expr)
            )))),
            Rows::Mixed => refuse(mixed("a window function")),
            // Top-N per window: a window's rows all arrive in the batch that closes it,
            // so a window function partitioned by it runs per batch.
            Rows::Appends
                if self.mode() == OutputMode::Append
                    && !reads_stream(&w.input, self.scope.streams)
                    && w.window_expr.iter().all(|e| match e.clone().unalias() {
                        Expr::WindowFunction(f) => f.params.partition_by.iter().any(|p| {
                            is_window_of_operator(&w.input, p, &self.scope.outputs.window_keys())
                        }),
                        _ => false,
                    }) =>
            {
                Ok(Role::PerBatch(Some(format!(
                    "Per-batch window functions over the closed windows of a streaming \
                     aggregate (partitioned by the window): [{}], no state",
                    join_exprs(&w.window_expr)
                ))))
            }
            // ROW_NUMBER(): runs under a filter on its own rank (checked there).
            Rows::Appends if rank::row_number(w).is_some() => Ok(Role::RankWindow),
            Rows::Appends => refuse(
                "window functions (OVER ...) over a stream would need every row it ever had; \
                 only ROW_NUMBER() filtered by itself runs over a stream — deduplication \
                 (WHERE rn = 1) or the top N rows per key (WHERE rn <= N): SELECT * FROM \
                 (SELECT *, ROW_NUMBER() OVER (PARTITION BY key ORDER BY x) AS rn FROM s) \
                 WHERE rn <= 3; over an aggregate's result they run in every output mode",
            ),
        }
    }
}

/// The role of `node` over a changelog (a regular outer join's rows, some of them
/// retracting rows emitted before): rows pass through projections and filters with
/// their `_op`, and a `GROUP BY` counts them with a sign (`changelog_agg.rs`);
/// anything else that combines rows would have to undo a retracted row's part in its
/// result, which no operator here does yet.
fn over_changelog(node: &LogicalPlan) -> Classified {
    match node {
        // (A scan: the operator's output, seen again when a derived stream's plan is
        // read by another query.)
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::TableScan(_) => Ok(Role::OverChangelog),
        LogicalPlan::Aggregate(_) => Ok(Role::ChangelogAggregate),
        other => {
            let what = match other {
                LogicalPlan::Distinct(_) => "DISTINCT",
                LogicalPlan::Window(_) => "a window function",
                LogicalPlan::Sort(_) => "ORDER BY",
                LogicalPlan::Limit(_) => "LIMIT",
                LogicalPlan::Join(_) => "a join",
                LogicalPlan::Union(_) => "UNION",
                _ => "this query",
            };
            refused_over_changelog(what)
        }
    }
}

/// The refusal of `what` over a changelog.
fn refused_over_changelog(what: &str) -> Classified {
    refuse(format!(
        "{what} over a regular outer join of two streams is not supported yet: the \
                 join retracts a row it emitted without a match (padded with nulls) when the \
                 first match arrives, and {what} here cannot take a row back out of its \
                 result (GROUP BY with COUNT, SUM and AVG can). Run the join alone (its rows carry _op = '+I' or '-D'), write an \
                 inner join, or bound the join in time (e.g. r.ts BETWEEN l.ts AND l.ts + \
                 INTERVAL '1' HOUR, with watermarks: its unmatched rows then come out once, \
                 when they can no longer match)"
    ))
}
