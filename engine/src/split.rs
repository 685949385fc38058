//! `SplitUnnestExec`: `unnest(string_to_array(text, 'delimiter'))` in one pass.
//!
//! Splitting text and exploding the parts into rows is how SQL tokenizes (the word
//! count, tags, a field list). DataFusion plans it as two operators, and each copies
//! every part: `string_to_array` builds a list array (its builders sized for one part
//! per row, so they grow and reallocate as they go), then `UnnestExec` builds take
//! indices and copies the list's values once more into the output.
//!
//! ```text
//!  UnnestExec(list column c, depth 1)             SplitUnnestExec
//!    ProjectionExec[.., string_to_array(t, d) AS c]   ─▶    (t split on d, the other
//!      input                                                 projected columns repeated)
//!                                                          input
//! ```
//!
//! The fused operator finds the delimiters with `memchr` and appends each part once to
//! a builder sized beforehand; its output schema, properties, null handling
//! (`preserve_nulls`, empty lists expanded as null) and row order are `UnnestExec`'s,
//! and it yields batches of at most `batch_size` rows, as `UnnestExec` does. It is
//! applied by [`fuse_split_unnest`] to every plan a query builds; any other shape
//! (a delimiter that is not a non-empty literal, a third `null_str` argument that is not NULL,
//! `Utf8View` text, several unnested columns, recursive unnest) stays as DataFusion
//! planned it. (A third argument that is a `NULL` literal is the two-argument form.)

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, GenericStringArray, GenericStringBuilder, OffsetSizeTrait,
    UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DfResult, ScalarValue, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions_nested::string::StringToArray;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;

use crate::Result;

/// Replaces every `UnnestExec` over `string_to_array(text, 'literal')` in `plan` with
/// a [`SplitUnnestExec`].
pub fn fuse_split_unnest(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_up(|node| {
            Ok(match SplitUnnestExec::fuse(&node)? {
                Some(fused) => Transformed::yes(Arc::new(fused) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(node),
            })
        })?
        .data)
}

/// [`fuse_split_unnest`] as a physical optimizer rule: a streaming context's session
/// has it, so every plan the context builds is fused.
#[derive(Debug, Default)]
pub struct FuseSplitUnnest;

impl FuseSplitUnnest {
    pub const NAME: &'static str = "fuse_split_unnest";
}

impl datafusion::physical_optimizer::PhysicalOptimizerRule for FuseSplitUnnest {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &datafusion::config::ConfigOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        fuse_split_unnest(plan).map_err(|e| match e {
            crate::Error::DataFusion(e) => e,
            other => datafusion::error::DataFusionError::External(Box::new(other)),
        })
    }

    fn name(&self) -> &str {
        Self::NAME
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Splits a text column on a delimiter, one output row per part (see the module).
#[derive(Debug)]
pub struct SplitUnnestExec {
    input: Arc<dyn ExecutionPlan>,
    split: Arc<Split>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// What a [`SplitUnnestExec`] computes from each input batch.
#[derive(Debug)]
struct Split {
    /// The projection's expressions over the input; at `split_index`, the text split.
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    split_index: usize,
    delimiter: String,
    /// A null text gives one null row (else none).
    preserve_nulls: bool,
    /// An empty text (no parts) gives one null row (else none).
    expand_empty: bool,
    schema: SchemaRef,
}

/// What a [`SplitUnnestExec`] is made of, as the cluster's codec sends it.
pub(crate) struct SplitParts<'a> {
    pub exprs: &'a [Arc<dyn PhysicalExpr>],
    pub split_index: usize,
    pub delimiter: &'a str,
    pub preserve_nulls: bool,
    pub expand_empty: bool,
    pub schema: &'a SchemaRef,
}

impl SplitUnnestExec {
    pub(crate) fn parts(&self) -> SplitParts<'_> {
        SplitParts {
            exprs: &self.split.exprs,
            split_index: self.split.split_index,
            delimiter: &self.split.delimiter,
            preserve_nulls: self.split.preserve_nulls,
            expand_empty: self.split.expand_empty,
            schema: &self.split.schema,
        }
    }

    /// The operator [`Self::parts`] described, over `input` (on an executor). Its
    /// properties are those `UnnestExec` computes: the input's partitioning,
    /// emission and boundedness.
    pub(crate) fn from_parts(
        input: Arc<dyn ExecutionPlan>,
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        split_index: usize,
        delimiter: String,
        preserve_nulls: bool,
        expand_empty: bool,
        schema: SchemaRef,
    ) -> DfResult<Self> {
        if split_index >= exprs.len()
            || exprs.len() != schema.fields().len()
            || delimiter.is_empty()
        {
            return internal_err!(
                "SplitUnnestExec: {} expressions, split at {split_index}, {} output columns",
                exprs.len(),
                schema.fields().len()
            );
        }
        let properties = PlanProperties::new(
            datafusion::physical_expr::EquivalenceProperties::new(Arc::clone(&schema)),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        );
        Ok(Self {
            input,
            split: Arc::new(Split {
                exprs,
                split_index,
                delimiter,
                preserve_nulls,
                expand_empty,
                schema,
            }),
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl SplitUnnestExec {
    /// The fused operator for `node`, when it is an `UnnestExec` of that shape.
    fn fuse(node: &Arc<dyn ExecutionPlan>) -> DfResult<Option<Self>> {
        let Some(unnest) = node.downcast_ref::<UnnestExec>() else {
            return Ok(None);
        };
        let [list] = unnest.list_column_indices() else {
            return Ok(None);
        };
        if list.depth != 1 || !unnest.struct_column_indices().is_empty() {
            return Ok(None);
        }
        let Some(projection) = unnest.input().downcast_ref::<ProjectionExec>() else {
            return Ok(None);
        };
        let exprs: Vec<Arc<dyn PhysicalExpr>> = projection
            .expr()
            .iter()
            .map(|p| Arc::clone(&p.expr))
            .collect();
        let schema = unnest.schema();
        if exprs.len() != schema.fields().len() {
            return Ok(None);
        }
        let split_index = list.index_in_input_schema;
        let Some(call) = exprs
            .get(split_index)
            .and_then(|e| e.downcast_ref::<ScalarFunctionExpr>())
        else {
            return Ok(None);
        };
        // string_to_array(text, delimiter[, NULL]): a NULL `null_str` changes nothing.
        let (text, delimiter) = match call.args() {
            [text, delimiter] => (text, delimiter),
            [text, delimiter, null_str]
                if null_str
                    .downcast_ref::<Literal>()
                    .is_some_and(|l| l.value().is_null()) =>
            {
                (text, delimiter)
            }
            _ => return Ok(None),
        };
        if !call.fun().inner().is::<StringToArray>() {
            return Ok(None);
        }
        let Some(delimiter) = delimiter.downcast_ref::<Literal>() else {
            return Ok(None);
        };
        let delimiter = match delimiter.value() {
            ScalarValue::Utf8(Some(d))
            | ScalarValue::LargeUtf8(Some(d))
            | ScalarValue::Utf8View(Some(d))
                if !d.is_empty() =>
            {
                d.clone()
            }
            _ => return Ok(None),
        };
        let text_type = text.data_type(&projection.input().schema())?;
        if !matches!(text_type, DataType::Utf8 | DataType::LargeUtf8)
            || schema.field(split_index).data_type() != &text_type
        {
            return Ok(None);
        }
        let text = Arc::clone(text);
        let mut exprs = exprs;
        exprs[split_index] = text;
        let options = unnest.options();
        Ok(Some(Self {
            input: Arc::clone(projection.input()),
            split: Arc::new(Split {
                exprs,
                split_index,
                delimiter,
                preserve_nulls: options.preserve_nulls(),
                expand_empty: options.expand_empty_as_null(),
                schema,
            }),
            properties: Arc::clone(unnest.properties()),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

impl Split {
    /// The output rows of one input batch, in batches of at most `batch_size` rows.
    fn split(&self, batch: &RecordBatch, batch_size: usize) -> DfResult<Vec<RecordBatch>> {
        let text = self.exprs[self.split_index]
            .evaluate(batch)?
            .into_array(batch.num_rows())?;
        let (parts, rows) = match text.data_type() {
            DataType::Utf8 => {
                self.split_text(text.as_any().downcast_ref::<GenericStringArray<i32>>())
            }
            DataType::LargeUtf8 => {
                self.split_text(text.as_any().downcast_ref::<GenericStringArray<i64>>())
            }
            other => return internal_err!("SplitUnnestExec: text of type {other}"),
        }?;
        let mut columns = Vec::with_capacity(self.exprs.len());
        for (i, e) in self.exprs.iter().enumerate() {
            if i == self.split_index {
                columns.push(Arc::clone(&parts));
            } else {
                let values = e.evaluate(batch)?.into_array(batch.num_rows())?;
                columns.push(take(&values, &rows, None)?);
            }
        }
        let out = RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(parts.len())),
        )?;
        Ok(crate::slot::slices(&out, batch_size).collect())
    }

    /// The parts of every text, and for each part the input row it came from.
    fn split_text<O: OffsetSizeTrait>(
        &self,
        text: Option<&GenericStringArray<O>>,
    ) -> DfResult<(ArrayRef, UInt32Array)> {
        let Some(text) = text else {
            return internal_err!("SplitUnnestExec: text is not a string array");
        };
        let delimiter = self.delimiter.as_bytes();
        // Sized beforehand: a part per delimiter plus one per row, the text's bytes.
        let offsets = text.value_offsets();
        let (first, last) = (offsets[0].as_usize(), offsets[text.len()].as_usize());
        let bytes = &text.value_data()[first..last];
        let delimiters = match delimiter {
            [d] => memchr::memchr_iter(*d, bytes).count(),
            _ => memchr::memmem::find_iter(bytes, delimiter).count(),
        };
        let capacity = delimiters + text.len();
        let mut parts = GenericStringBuilder::<O>::with_capacity(capacity, bytes.len());
        let mut rows = Vec::with_capacity(if self.exprs.len() > 1 { capacity } else { 0 });
        let track_rows = self.exprs.len() > 1;
        let finder = memchr::memmem::Finder::new(delimiter);
        for i in 0..text.len() {
            let row = i as u32;
            if text.is_null(i) {
                if self.preserve_nulls {
                    parts.append_null();
                    if track_rows {
                        rows.push(row);
                    }
                }
                continue;
            }
            let s = text.value(i);
            if s.is_empty() {
                if self.expand_empty {
                    parts.append_null();
                    if track_rows {
                        rows.push(row);
                    }
                }
                continue;
            }
            let before = parts.len();
            match delimiter {
                [d] => append_parts(&mut parts, s, memchr::memchr_iter(*d, s.as_bytes()), 1),
                _ => append_parts(
                    &mut parts,
                    s,
                    finder.find_iter(s.as_bytes()),
                    delimiter.len(),
                ),
            }
            if track_rows {
                rows.resize(rows.len() + parts.len() - before, row);
            }
        }
        Ok((Arc::new(parts.finish()), UInt32Array::from(rows)))
    }
}

/// The parts of `s` between the delimiters found at `at` (each `len` bytes long).
fn append_parts<O: OffsetSizeTrait>(
    parts: &mut GenericStringBuilder<O>,
    s: &str,
    at: impl Iterator<Item = usize>,
    len: usize,
) {
    let mut start = 0;
    for end in at {
        parts.append_value(&s[start..end]);
        start = end + len;
    }
    parts.append_value(&s[start..]);
}

impl DisplayAs for SplitUnnestExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SplitUnnestExec: unnest(string_to_array({}, {:?})) as {}",
            self.split.exprs[self.split.split_index],
            self.split.delimiter,
            self.split.schema.field(self.split.split_index).name()
        )
    }
}

impl ExecutionPlan for SplitUnnestExec {
    fn name(&self) -> &str {
        "SplitUnnestExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        for e in &self.split.exprs {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("SplitUnnestExec has one input, given {}", children.len());
        }
        Ok(Arc::new(Self {
            input: children.swap_remove(0),
            split: Arc::clone(&self.split),
            properties: Arc::clone(&self.properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let batch_size = context.session_config().batch_size();
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let split = Arc::clone(&self.split);
        let out = input.flat_map(move |batch| {
            let timer = metrics.elapsed_compute().timer();
            let result = batch.and_then(|b| split.split(&b, batch_size));
            timer.done();
            let items: Vec<DfResult<RecordBatch>> = match result {
                Ok(batches) => {
                    for b in &batches {
                        metrics.record_output(b.num_rows());
                    }
                    batches.into_iter().map(Ok).collect()
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.split.schema),
            out,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, LargeStringArray, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::common::{NullHandling, UnnestOptions};
    use datafusion::datasource::MemTable;
    use datafusion::physical_plan::{collect, displayable};
    use datafusion::prelude::{DataFrame, SessionConfig, SessionContext, col, lit};

    /// Texts with every edge: nulls, empty, leading/trailing/repeated delimiters,
    /// multi-byte characters, and a second column to repeat.
    fn context(large: bool) -> SessionContext {
        let texts = vec![
            Some("a b c"),
            None,
            Some(""),
            Some(" lead"),
            Some("trail "),
            Some("two  spaces"),
            Some(" "),
            Some("héllo wörld--x"),
            Some("one"),
            Some("a--b----c--"),
        ];
        let text_type = if large {
            DataType::LargeUtf8
        } else {
            DataType::Utf8
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("t", text_type, true),
        ]));
        let t: ArrayRef = if large {
            Arc::new(LargeStringArray::from(texts.clone()))
        } else {
            Arc::new(StringArray::from(texts.clone()))
        };
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..texts.len() as i64)),
                t,
            ],
        )
        .unwrap();
        // Batches of 4 rows: the output is cut to the batch size as UnnestExec's is.
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(4));
        let table = MemTable::try_new(schema, vec![vec![batch.slice(0, 6), batch.slice(6, 4)]]);
        ctx.register_table("texts", Arc::new(table.unwrap()))
            .unwrap();
        ctx
    }

    /// The rows of `df` as DataFusion runs it, and as the fused plan runs it (with that
    /// plan's text); the fused plan's batches never exceed the batch size.
    async fn both(df: DataFrame) -> (String, String, String, Vec<RecordBatch>) {
        let task = Arc::new(df.task_ctx());
        let plan = df.create_physical_plan().await.unwrap();
        let fused = fuse_split_unnest(Arc::clone(&plan)).unwrap();
        let text = displayable(fused.as_ref()).indent(false).to_string();
        let expected = collect(plan, Arc::clone(&task)).await.unwrap();
        let actual = collect(fused, task).await.unwrap();
        assert!(actual.iter().all(|b| b.num_rows() <= 4), "{text}");
        // As sorted lines: DataFusion's unnest may emit a row's parts in two batches
        // around other rows' parts when it cuts its output to the batch size.
        let show = |b: &[RecordBatch]| {
            let text = pretty_format_batches(b).unwrap().to_string();
            let mut lines: Vec<&str> = text.lines().collect();
            lines.sort();
            lines.join("\n")
        };
        (show(&expected), show(&actual), text, actual)
    }

    #[tokio::test]
    async fn a_streaming_context_fuses_every_plan_its_session_builds() {
        let ctx = crate::StreamingContext::builder(std::time::Duration::from_secs(1))
            .with_session(context(false))
            .with_exclusive(false)
            .build()
            .unwrap();
        let df = ctx
            .session()
            .sql("SELECT unnest(string_to_array(t, ' ')) AS w FROM texts")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        let unfused = |t: &str| t.lines().any(|l| l.trim_start().starts_with("UnnestExec"));
        assert!(
            text.contains("SplitUnnestExec") && !unfused(&text),
            "{text}"
        );
        // A plain DataFusion session does not.
        let df = context(false)
            .sql("SELECT unnest(string_to_array(t, ' ')) AS w FROM texts")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(false).to_string();
        assert!(unfused(&text), "{text}");
    }

    #[tokio::test]
    async fn fused_split_matches_datafusion_on_every_edge() {
        for large in [false, true] {
            let ctx = context(large);
            for delimiter in [" ", "--", "ö"] {
                let sql = format!(
                    "SELECT id, unnest(string_to_array(t, '{delimiter}')) AS w, id * 2 AS d \
                     FROM texts"
                );
                let (expected, actual, plan, _) = both(ctx.sql(&sql).await.unwrap()).await;
                assert!(plan.contains("SplitUnnestExec"), "{plan}");
                assert!(
                    !plan
                        .lines()
                        .any(|l| l.trim_start().starts_with("UnnestExec")),
                    "{plan}"
                );
                assert_eq!(actual, expected, "delimiter {delimiter:?}, large {large}");
            }
            // The word count's shape: the parts are the only column.
            let sql = "SELECT w, count(*) AS n FROM \
                       (SELECT unnest(string_to_array(t, ' ')) AS w FROM texts) \
                       GROUP BY w ORDER BY w";
            let (expected, actual, plan, _) = both(ctx.sql(sql).await.unwrap()).await;
            assert!(plan.contains("SplitUnnestExec"), "{plan}");
            assert_eq!(actual, expected);
            // " lead", "trail ", "two  spaces" and " " hold five empty words.
            assert!(actual.contains("|             | 5 |"), "{actual}");
        }
    }

    #[tokio::test]
    async fn null_handling_follows_the_unnest_options() {
        let ctx = context(false);
        for handling in [
            NullHandling::Drop,
            NullHandling::Preserve,
            NullHandling::PreserveAndExpandEmpty,
        ] {
            let df = ctx
                .table("texts")
                .await
                .unwrap()
                .select(vec![
                    col("id"),
                    datafusion::functions_nested::expr_fn::string_to_array(
                        col("t"),
                        lit(" "),
                        lit("lead"),
                    )
                    .alias("w"),
                ])
                .unwrap();
            // string_to_array(t, ' ', 'lead') turns 'lead' parts into nulls: not fused.
            let (expected, actual, plan, _) = both(
                df.clone()
                    .unnest_columns_with_options(
                        &["w"],
                        UnnestOptions::new().with_null_handling(handling),
                    )
                    .unwrap(),
            )
            .await;
            assert!(!plan.contains("SplitUnnestExec"), "{plan}");
            assert_eq!(actual, expected);
            let two_args = ctx
                .sql("SELECT id, string_to_array(t, ' ') AS w FROM texts")
                .await
                .unwrap()
                .unnest_columns_with_options(
                    &["w"],
                    UnnestOptions::new().with_null_handling(handling),
                )
                .unwrap();
            let (expected, actual, plan, batches) = both(two_args).await;
            assert!(plan.contains("SplitUnnestExec"), "{handling:?}: {plan}");
            assert_eq!(actual, expected, "{handling:?}");
            let nulls: usize = batches.iter().map(|b| b.column(1).null_count()).sum();
            let want = match handling {
                NullHandling::Drop => 0,
                NullHandling::Preserve => 1,
                NullHandling::PreserveAndExpandEmpty => 2,
            };
            assert_eq!(nulls, want, "{handling:?}");
        }
    }

    #[tokio::test]
    async fn a_null_third_argument_is_the_two_argument_form() {
        let ctx = context(false);
        let sql = "SELECT id, unnest(string_to_array(t, ' ', NULL)) AS w FROM texts";
        let (expected, actual, plan, _) = both(ctx.sql(sql).await.unwrap()).await;
        assert!(plan.contains("SplitUnnestExec"), "{plan}");
        assert_eq!(actual, expected);
    }

    #[tokio::test]
    async fn other_shapes_are_left_to_datafusion() {
        let ctx = context(false);
        for sql in [
            // A delimiter per row, an empty one, a null one.
            "SELECT unnest(string_to_array(t, t)) FROM texts",
            "SELECT unnest(string_to_array(t, '')) FROM texts",
            "SELECT unnest(string_to_array(t, NULL)) FROM texts",
            // Two lists unnested side by side.
            "SELECT unnest(string_to_array(t, ' ')), unnest(string_to_array(t, 'a')) FROM texts",
        ] {
            let (expected, actual, plan, _) = both(ctx.sql(sql).await.unwrap()).await;
            assert!(!plan.contains("SplitUnnestExec"), "{sql}: {plan}");
            assert_eq!(actual, expected, "{sql}");
        }
    }
}
