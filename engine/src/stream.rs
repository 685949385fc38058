//! [`Stream`]: the DStream operations, as DataFusion plans over Arrow data.
//!
//! A stateless operation (select, filter, flat_map, union, join, per-batch
//! aggregates...) extends the stream's DataFusion logical plan; a chain of them
//! becomes one physical plan, built once. A stateful operation (windows, running
//! aggregates, `map_with_state`) adds an operator node to the graph whose output slot
//! the next plans read.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    SchemaProvider, TableProvider,
};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::ViewTable;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::functions::core::expr_fn::{coalesce, named_struct};
use datafusion::functions_aggregate::expr_fn::{array_agg, count};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, Partitioning, col, lit, when};
use futures::FutureExt;

use crate::context::StreamingContext;
use crate::error::Result;
use crate::graph::{OperatorNode, OutputKind, OutputNode};
use crate::ops::{BatchWindow, MapWithState, RunningAggregate, StateSpec, StreamOperator};
use crate::sink::Sink;
use crate::slot::BatchSlot;
use crate::time::{Time, check_multiple, format_duration};
use crate::{internal_err, plan_err};

/// Table names of stateful operators' outputs in a stream's plan start with this.
pub const OPERATOR_OUTPUT_PREFIX: &str = "__flumen_op_";

/// A stream of micro-batches, each a set of `RecordBatch`es of one schema.
#[derive(Clone)]
pub struct Stream {
    ctx: StreamingContext,
    df: DataFrame,
    /// This stream has a batch at times that are multiples of `slide` from the zero
    /// time (the batch interval, except downstream of a window).
    slide: Duration,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("schema", self.df.schema())
            .field("slide", &self.slide)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(ctx: StreamingContext, df: DataFrame, slide: Duration) -> Self {
        Self { ctx, df, slide }
    }

    fn derive(&self, what: &str, df: DataFrame) -> Result<Stream> {
        self.ctx.check_initialized(what)?;
        Ok(Stream::new(self.ctx.clone(), df, self.slide))
    }

    /// The schema of each batch.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }

    /// The logical plan of one batch, as a DataFrame.
    pub fn dataframe(&self) -> &DataFrame {
        &self.df
    }

    /// Batches come every `slide` (the batch interval unless windowed).
    pub fn slide_duration(&self) -> Duration {
        self.slide
    }

    pub fn context(&self) -> &StreamingContext {
        &self.ctx
    }

    // ---- stateless ----------------------------------------------------------------

    /// Spark's `map`: one output row per input row, of the given expressions.
    pub fn select(&self, exprs: Vec<Expr>) -> Result<Stream> {
        self.derive("select", self.df.clone().select(exprs)?)
    }

    /// Alias of [`Stream::select`].
    pub fn map(&self, exprs: Vec<Expr>) -> Result<Stream> {
        self.select(exprs)
    }

    /// Spark's `flatMap`: `expr` yields a list per row; each element becomes a row of
    /// one column, named by the expression's alias (or `value`).
    pub fn flat_map(&self, expr: Expr) -> Result<Stream> {
        let name = match &expr {
            Expr::Alias(a) => a.name.clone(),
            _ => "value".to_string(),
        };
        let df = self
            .df
            .clone()
            .select(vec![expr.alias(&name)])?
            .unnest_columns(&[&name])?;
        self.derive("flat_map", df)
    }

    /// Rows for which `predicate` is true.
    pub fn filter(&self, predicate: Expr) -> Result<Stream> {
        self.derive("filter", self.df.clone().filter(predicate)?)
    }

    /// The rows of both streams (same schema, same slide).
    pub fn union(&self, other: &Stream) -> Result<Stream> {
        self.same_slide("union", other)?;
        self.derive("union", self.df.clone().union(other.df.clone())?)
    }

    /// Spread each batch over `n` partitions.
    pub fn repartition(&self, n: usize) -> Result<Stream> {
        if n == 0 {
            return plan_err!("repartition needs at least one partition");
        }
        self.derive(
            "repartition",
            self.df
                .clone()
                .repartition(Partitioning::RoundRobinBatch(n))?,
        )
    }

    /// Any change to a batch's DataFrame, planned once (Spark's `transform`).
    pub fn transform(&self, f: impl FnOnce(DataFrame) -> Result<DataFrame>) -> Result<Stream> {
        let df = f(self.df.clone())?;
        self.derive("transform", df)
    }

    /// SQL over each batch, which the query calls `batch`. Static tables of the session
    /// are visible too.
    pub async fn sql(&self, query: &str) -> Result<Stream> {
        self.ctx.check_initialized("add a SQL stream")?;
        let (state, plan) = self.df.clone().into_parts();
        let view: Arc<dyn TableProvider> = Arc::new(ViewTable::new(plan, None));
        let overlay = replace_default_schema(&state, |inner| {
            Arc::new(OverlaySchema {
                inner,
                name: "batch".into(),
                table: view,
            })
        })?;
        let sql_state = SessionStateBuilder::new_from_existing(state.clone())
            .with_catalog_list(overlay)
            .build();
        let plan = sql_state.create_logical_plan(query).await?;
        self.derive("add a SQL stream", DataFrame::new(state, plan))
    }

    // ---- per-batch aggregates ---------------------------------------------------------

    /// One row per batch: the number of rows (`count`), 0 for an empty batch.
    pub fn count(&self) -> Result<Stream> {
        self.derive(
            "count",
            self.df
                .clone()
                .aggregate(vec![], vec![count(lit(1)).alias("count")])?,
        )
    }

    /// One row per batch: `aggr` (an aggregate expression, e.g. `sum(col("x"))`).
    pub fn reduce(&self, aggr: Expr) -> Result<Stream> {
        self.derive("reduce", self.df.clone().aggregate(vec![], vec![aggr])?)
    }

    /// Each distinct row of the batch with its `count`.
    pub fn count_by_value(&self) -> Result<Stream> {
        let keys: Vec<Expr> = self
            .df
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        self.derive(
            "count_by_value",
            self.df
                .clone()
                .aggregate(keys, vec![count(lit(1)).alias("count")])?,
        )
    }

    /// Per key, within each batch: `aggrs` (Spark's `reduceByKey`).
    pub fn reduce_by_key(&self, keys: Vec<Expr>, aggrs: Vec<Expr>) -> Result<Stream> {
        self.derive("reduce_by_key", self.df.clone().aggregate(keys, aggrs)?)
    }

    // ---- joins ----------------------------------------------------------------------

    /// Inner join with the same batch of `other` on equal `on` columns. The output has
    /// the key columns once, then the other columns of each side; a right-side column
    /// whose name the left already has gets the suffix `_right`.
    pub fn join(&self, other: &Stream, on: &[&str]) -> Result<Stream> {
        self.same_slide("join", other)?;
        let df = join_frames(self.df.clone(), other.df.clone(), JoinType::Inner, on)?;
        self.derive("join", df)
    }

    /// As [`Stream::join`], keeping left rows without a match (right columns null).
    pub fn left_join(&self, other: &Stream, on: &[&str]) -> Result<Stream> {
        self.same_slide("left_join", other)?;
        let df = join_frames(self.df.clone(), other.df.clone(), JoinType::Left, on)?;
        self.derive("left_join", df)
    }

    /// Spark's `cogroup`: per key present on either side, `left` and `right` as lists of
    /// structs of that side's other columns (empty lists where a side has no row).
    pub fn cogroup(&self, other: &Stream, on: &[&str]) -> Result<Stream> {
        self.same_slide("cogroup", other)?;
        let left = collect_side(self.df.clone(), on, "left")?.alias("l")?;
        let right = collect_side(other.df.clone(), on, "right")?.alias("r")?;
        let left_type = left
            .schema()
            .field_with_unqualified_name("left")?
            .data_type()
            .clone();
        let right_type = right
            .schema()
            .field_with_unqualified_name("right")?
            .data_type()
            .clone();
        let joined = left.join(right, JoinType::Full, on, on, None)?;
        let mut exprs: Vec<Expr> = on
            .iter()
            .map(|k| coalesce(vec![col(format!("l.{k}")), col(format!("r.{k}"))]).alias(*k))
            .collect();
        exprs.push(empty_list_when_null(col("l.left"), &left_type)?.alias("left"));
        exprs.push(empty_list_when_null(col("r.right"), &right_type)?.alias("right"));
        self.derive("cogroup", joined.select(exprs)?)
    }

    /// Join each batch with a static table (a DataFrame over a session table), e.g.
    /// `JoinType::LeftAnti` to drop blacklisted rows. Key columns are named `on` on
    /// both sides.
    pub fn join_table(&self, table: DataFrame, join_type: JoinType, on: &[&str]) -> Result<Stream> {
        let df = join_frames(self.df.clone(), table, join_type, on)?;
        self.derive("join_table", df)
    }

    // ---- state across batches -----------------------------------------------------

    /// Feed this stream into a stateful operator; returns the operator's output
    /// stream, which has a batch every `output_slide`. The extension point the SQL
    /// planner uses for its own operators.
    pub fn with_operator(
        &self,
        op: Box<dyn StreamOperator>,
        output_slide: Duration,
    ) -> Result<Stream> {
        self.add_operator("add an operator", op, output_slide)
    }

    fn add_operator(
        &self,
        what: &str,
        op: Box<dyn StreamOperator>,
        output_slide: Duration,
    ) -> Result<Stream> {
        self.ctx.check_initialized(what)?;
        let target = self.ctx.session().state().config().target_partitions();
        let slot = BatchSlot::new(op.output_schema(), target);
        let mut graph = self.ctx.shared().graph.lock();
        let Some(graph) = graph.as_mut() else {
            return internal_err!("graph missing in an initialized context");
        };
        // Named so planners can tell an operator's output (a changelog) from a source.
        let scan = LogicalPlanBuilder::scan(
            format!("{OPERATOR_OUTPUT_PREFIX}{}", graph.operators.len()),
            provider_as_source(slot.table()?),
            None,
        )?
        .build()?;
        let df = DataFrame::new(self.ctx.session().state(), scan);
        graph.operators.push(OperatorNode {
            input: self.df.clone(),
            input_slide: self.slide,
            op,
            slot,
        });
        Ok(Stream::new(self.ctx.clone(), df, output_slide))
    }

    /// Spark's `updateStateByKey` for aggregates: per key, `aggrs` over every batch so
    /// far; each batch emits every key with its current values. Any aggregate that
    /// DataFusion can merge works (count, sum, avg, min, max, count(distinct),
    /// approx_distinct, stddev, user-defined).
    pub fn update_state_by_key(&self, keys: Vec<Expr>, aggrs: Vec<Expr>) -> Result<Stream> {
        let op = RunningAggregate::try_new(&self.df, keys, aggrs)?
            .with_state_config(self.ctx.state_config().clone());
        self.add_operator("update_state_by_key", Box::new(op), self.slide)
    }

    /// Spark's `mapWithState`: see [`StateSpec`].
    pub fn map_with_state(&self, keys: &[&str], spec: StateSpec) -> Result<Stream> {
        let op = MapWithState::try_new(
            self.schema(),
            keys.iter().map(|k| k.to_string()).collect(),
            spec,
        )?
        .with_state_config(self.ctx.state_config().clone())?;
        self.add_operator("map_with_state", Box::new(op), self.slide)
    }

    /// The rows of the last `length` of batches, every `slide`. Both must be whole
    /// multiples of this stream's slide (the batch interval unless already windowed).
    pub fn window(&self, length: Duration, slide: Duration) -> Result<Stream> {
        let (unit_what, unit) = if self.slide == self.ctx.batch_interval() {
            ("batch interval", self.slide)
        } else {
            ("parent stream's slide", self.slide)
        };
        check_multiple("window length", length, unit_what, unit)?;
        check_multiple("window slide", slide, unit_what, unit)?;
        if slide > length {
            return plan_err!(
                "window slide {} is longer than the window length {}; rows between \
                 windows would be skipped",
                format_duration(slide),
                format_duration(length)
            );
        }
        let op = BatchWindow::new(self.schema(), length, slide);
        self.add_operator("window", Box::new(op), slide)
    }

    /// `window(length, slide).count()`.
    pub fn count_by_window(&self, length: Duration, slide: Duration) -> Result<Stream> {
        self.window(length, slide)?.count()
    }

    /// `window(length, slide).reduce(aggr)`.
    pub fn reduce_by_window(
        &self,
        aggr: Expr,
        length: Duration,
        slide: Duration,
    ) -> Result<Stream> {
        self.window(length, slide)?.reduce(aggr)
    }

    /// `window(length, slide).reduce_by_key(keys, aggrs)`.
    pub fn reduce_by_key_and_window(
        &self,
        keys: Vec<Expr>,
        aggrs: Vec<Expr>,
        length: Duration,
        slide: Duration,
    ) -> Result<Stream> {
        self.window(length, slide)?.reduce_by_key(keys, aggrs)
    }

    /// `window(length, slide).count_by_value()`.
    pub fn count_by_value_and_window(&self, length: Duration, slide: Duration) -> Result<Stream> {
        self.window(length, slide)?.count_by_value()
    }

    // ---- outputs --------------------------------------------------------------------

    fn add_output(&self, kind: OutputKind) -> Result<()> {
        self.ctx.check_initialized("add an output")?;
        let mut graph = self.ctx.shared().graph.lock();
        let Some(graph) = graph.as_mut() else {
            return internal_err!("graph missing in an initialized context");
        };
        graph.outputs.push(OutputNode {
            df: self.df.clone(),
            slide: self.slide,
            kind,
        });
        Ok(())
    }

    /// Print the first `n` rows of every batch to stdout, in Spark's layout.
    pub fn print(&self, n: usize) -> Result<()> {
        self.add_output(OutputKind::Print(n))
    }

    /// Call `f` with every batch's time and result (a DataFrame over it).
    pub fn foreach_batch<F, Fut>(&self, f: F) -> Result<()>
    where
        F: Fn(Time, DataFrame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.add_output(OutputKind::ForeachBatch(Arc::new(move |t, df| {
            f(t, df).boxed()
        })))
    }

    /// Write every batch to `sink`, keyed by (query, batch time, partition).
    pub fn write_to(&self, sink: Arc<dyn Sink>) -> Result<()> {
        self.add_output(OutputKind::Sink(sink))
    }

    fn same_slide(&self, what: &str, other: &Stream) -> Result<()> {
        if self.slide != other.slide {
            return plan_err!(
                "{what} needs streams with the same slide, got {} and {}",
                format_duration(self.slide),
                format_duration(other.slide)
            );
        }
        Ok(())
    }
}

/// Equi-join two frames on same-named columns; keys once, then each side's others.
fn join_frames(
    left: DataFrame,
    right: DataFrame,
    join_type: JoinType,
    on: &[&str],
) -> Result<DataFrame> {
    for k in on {
        if left.schema().field_with_unqualified_name(k).is_err() {
            return plan_err!("join key '{k}' is not a column of the left stream");
        }
        if right.schema().field_with_unqualified_name(k).is_err() {
            return plan_err!("join key '{k}' is not a column of the right side");
        }
    }
    let left_names: Vec<String> = left
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let right_names: Vec<String> = right
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let left = left.alias("l")?;
    let right = right.alias("r")?;
    let joined = left.join(right, join_type, on, on, None)?;
    if matches!(join_type, JoinType::LeftAnti | JoinType::LeftSemi) {
        return Ok(joined);
    }
    let mut exprs: Vec<Expr> = on.iter().map(|k| col(format!("l.{k}")).alias(*k)).collect();
    for n in &left_names {
        if !on.contains(&n.as_str()) {
            exprs.push(col(format!("l.{n}")).alias(n));
        }
    }
    for n in &right_names {
        if !on.contains(&n.as_str()) {
            let out = if left_names.contains(n) {
                format!("{n}_right")
            } else {
                n.clone()
            };
            exprs.push(col(format!("r.{n}")).alias(out));
        }
    }
    Ok(joined.select(exprs)?)
}

/// `keys..., <name>: list<struct<other columns>>` per key.
fn collect_side(df: DataFrame, on: &[&str], name: &str) -> Result<DataFrame> {
    let mut fields = Vec::new();
    for f in df.schema().fields() {
        if !on.contains(&f.name().as_str()) {
            fields.push(lit(f.name().clone()));
            fields.push(col(f.name()));
        }
    }
    if fields.is_empty() {
        return plan_err!("cogroup needs a column besides the keys on the {name} side");
    }
    let keys = on.iter().map(|k| col(*k)).collect();
    Ok(df.aggregate(keys, vec![array_agg(named_struct(fields)).alias(name)])?)
}

fn empty_list_when_null(
    e: Expr,
    list_type: &datafusion::arrow::datatypes::DataType,
) -> Result<Expr> {
    let empty = ScalarValue::try_from(list_type)?;
    let empty = match empty {
        ScalarValue::List(_) => {
            let datafusion::arrow::datatypes::DataType::List(item) = list_type else {
                return internal_err!("list type expected, got {list_type}");
            };
            ScalarValue::List(ScalarValue::new_list_nullable(&[], item.data_type()))
        }
        other => other,
    };
    Ok(when(e.clone().is_null(), lit(empty)).otherwise(e)?)
}

/// The session's catalogs with the default schema replaced by `make(original)`: how
/// a plan gets names of its own (`batch`, a query's streams) over the session's tables.
pub fn replace_default_schema(
    state: &datafusion::execution::SessionState,
    make: impl FnOnce(Option<Arc<dyn SchemaProvider>>) -> Arc<dyn SchemaProvider>,
) -> Result<Arc<dyn CatalogProviderList>> {
    let options = state.config().options();
    let default_catalog = options.catalog.default_catalog.clone();
    let default_schema = options.catalog.default_schema.clone();
    let list = Arc::new(MemoryCatalogProviderList::new());
    let original = state.catalog_list();
    let mut make = Some(make);
    for catalog_name in original.catalog_names() {
        let Some(catalog) = original.catalog(&catalog_name) else {
            continue;
        };
        if catalog_name != default_catalog {
            list.register_catalog(catalog_name, catalog);
            continue;
        }
        let copy = MemoryCatalogProvider::new();
        for schema_name in catalog.schema_names() {
            let inner = catalog.schema(&schema_name);
            let schema = if schema_name == default_schema {
                match make.take() {
                    Some(make) => make(inner),
                    None => continue,
                }
            } else {
                match inner {
                    Some(s) => s,
                    None => continue,
                }
            };
            copy.register_schema(&schema_name, schema)?;
        }
        if let Some(make) = make.take() {
            copy.register_schema(&default_schema, make(None))?;
        }
        list.register_catalog(catalog_name, Arc::new(copy));
    }
    Ok(list)
}

/// A schema that shows one extra table over another schema.
#[derive(Debug)]
struct OverlaySchema {
    inner: Option<Arc<dyn SchemaProvider>>,
    name: String,
    table: Arc<dyn TableProvider>,
}

#[async_trait]
impl SchemaProvider for OverlaySchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self
            .inner
            .as_ref()
            .map(|s| s.table_names())
            .unwrap_or_default();
        names.push(self.name.clone());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        if name == self.name {
            return Ok(Some(Arc::clone(&self.table)));
        }
        match &self.inner {
            Some(s) => s.table(name).await,
            None => Ok(None),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        name == self.name || self.inner.as_ref().is_some_and(|s| s.table_exist(name))
    }
}
