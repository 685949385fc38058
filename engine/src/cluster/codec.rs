//! [`FlumenCodec`]: how Flumen's own plan nodes and functions cross the wire to a
//! Ballista scheduler and its executors.
//!
//! Ballista serializes physical plans with DataFusion's protobuf format; a node or a
//! function DataFusion does not know goes through the extension codec. Ours wraps
//! Ballista's own (its shuffle nodes) and adds:
//!
//! - `SplitUnnestExec` (`split.rs`): its expressions as DataFusion's protobuf
//!   expressions, its delimiter, null handling and output schema;
//! - `StatePartitionsExec` (`state.rs`): its partial aggregate as a DataFusion plan
//!   over an empty input (or a dedup's key and kept columns), where its state
//!   partitions live, the versions it reads and writes;
//! - `ReadScanExec` (`scan.rs`): the kind of scan, the source's schema, the projection
//!   (its parts travel in its input, an in-memory table);
//! - `WriteExec` (`write.rs`): the kind of sink, its spec (JSON), the batch time;
//! - `flumen_batch_time()` (`batch_time.rs`): a volatile function reading a per-query
//!   cell on the driver. It travels as the cell's value when the plan is encoded and
//!   arrives reading a cell fixed at it, so every task of the batch sees the batch's
//!   time (Spark evaluates `current_timestamp()` on the driver the same way).
//!
//! Every other function travels by name and is found in the scheduler's and the
//! executors' function registry, which `flumen scheduler` / `flumen executor` fill
//! with Flumen's functions (`node.rs`).

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::PhysicalExprNode;
use datafusion_proto::protobuf::PhysicalPlanNode;
use prost::Message;

use crate::batch_time::{BatchTimeCell, batch_time_of, batch_time_udf};
use crate::cluster::join::JoinFold;
use crate::cluster::scan::ReadScanExec;
use crate::cluster::state::{FirstRows, Fold, Spec, StatePartitionsExec, Versions, WindowSpec};
use crate::cluster::write::{ClusterWrite, WriteExec};
use crate::ops::aggregate::multiset::{Over, SignedMultiset, signed_multiset};
use crate::split::SplitUnnestExec;

/// First byte of an encoded node: whose it is.
const BALLISTA_NODE: u8 = 0;
const SPLIT_UNNEST_NODE: u8 = 1;
const STATE_PARTITIONS_NODE: u8 = 3;
const READ_SCAN_NODE: u8 = 4;
const WRITE_NODE: u8 = 5;
/// First byte of an encoded function that travels as a value.
const BATCH_TIME: u8 = 2;
/// First byte of an encoded aggregate over a changelog's values (`SignedMultiset`).
const SIGNED_MULTISET: u8 = 6;

/// The codec of every Flumen driver, scheduler and executor (see the module).
#[derive(Debug, Default)]
pub struct FlumenCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

#[derive(Clone, PartialEq, Message)]
struct SplitUnnestNode {
    #[prost(message, repeated, tag = "1")]
    exprs: Vec<PhysicalExprNode>,
    #[prost(uint32, tag = "2")]
    split_index: u32,
    #[prost(string, tag = "3")]
    delimiter: String,
    #[prost(bool, tag = "4")]
    preserve_nulls: bool,
    #[prost(bool, tag = "5")]
    expand_empty: bool,
    #[prost(message, optional, tag = "6")]
    schema: Option<datafusion_proto::protobuf::Schema>,
}

#[derive(Clone, PartialEq, Message)]
struct StatePartitionsNode {
    /// The partial aggregate over an empty input, as DataFusion's protobuf plan
    /// (an aggregate's state partitions).
    #[prost(bytes = "vec", tag = "1")]
    template: Vec<u8>,
    #[prost(string, tag = "2")]
    dir: String,
    #[prost(uint32, tag = "3")]
    partitions: u32,
    #[prost(bool, tag = "4")]
    changed_only: bool,
    #[prost(uint64, tag = "5")]
    memory: u64,
    #[prost(uint64, optional, tag = "6")]
    ttl_ms: Option<u64>,
    #[prost(int64, optional, tag = "7")]
    prev: Option<i64>,
    #[prost(int64, tag = "8")]
    now: i64,
    #[prost(int64, optional, tag = "9")]
    keep_from: Option<i64>,
    #[prost(message, optional, tag = "10")]
    schema: Option<datafusion_proto::protobuf::Schema>,
    /// A windowed aggregate: the window's key index (absent otherwise).
    #[prost(uint32, optional, tag = "11")]
    window_key: Option<u32>,
    #[prost(bool, tag = "12")]
    evict_closed: bool,
    #[prost(int64, optional, tag = "13")]
    watermark: Option<i64>,
    #[prost(bool, tag = "14")]
    append: bool,
    #[prost(bool, tag = "15")]
    close: bool,
    /// A dedup's state partitions (no aggregate `template` then).
    #[prost(bool, tag = "16")]
    first_rows: bool,
    #[prost(uint32, repeated, tag = "17")]
    keys: Vec<u32>,
    #[prost(uint32, repeated, tag = "18")]
    values: Vec<u32>,
    #[prost(bool, tag = "19")]
    emit_all: bool,
    #[prost(int64, optional, tag = "20")]
    watermark_right: Option<i64>,
    /// A stream join's state partitions.
    #[prost(message, optional, tag = "21")]
    join: Option<JoinNode>,
    /// A top-N's state partitions.
    #[prost(message, optional, tag = "22")]
    top_n: Option<TopNNode>,
    /// A windowed aggregate over session windows.
    #[prost(bool, tag = "23")]
    sessions: bool,
}

#[derive(Clone, PartialEq, Message)]
struct TopNNode {
    #[prost(uint32, repeated, tag = "1")]
    keys: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    order: Vec<u32>,
    #[prost(bool, repeated, tag = "3")]
    descending: Vec<bool>,
    #[prost(bool, repeated, tag = "4")]
    nulls_first: Vec<bool>,
    #[prost(uint32, tag = "5")]
    rank: u32,
    #[prost(uint64, tag = "6")]
    limit: u64,
    #[prost(bool, tag = "7")]
    emit_all: bool,
}

#[derive(Clone, PartialEq, Message)]
struct JoinNode {
    /// The join over two in-memory leaves, as DataFusion's protobuf plan.
    #[prost(bytes = "vec", tag = "1")]
    plan: Vec<u8>,
    #[prost(bool, repeated, tag = "2")]
    leaf_sides: Vec<bool>,
    #[prost(message, optional, tag = "3")]
    left: Option<datafusion_proto::protobuf::Schema>,
    #[prost(message, optional, tag = "4")]
    right: Option<datafusion_proto::protobuf::Schema>,
    #[prost(uint32, repeated, tag = "5")]
    left_keys: Vec<u32>,
    #[prost(uint32, repeated, tag = "6")]
    right_keys: Vec<u32>,
    /// Each side's time column (none in a regular join).
    #[prost(uint32, optional, tag = "7")]
    left_time: Option<u32>,
    #[prost(uint32, optional, tag = "8")]
    right_time: Option<u32>,
    #[prost(int64, optional, tag = "9")]
    lo: Option<i64>,
    #[prost(int64, optional, tag = "10")]
    hi: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct ReadScanNode {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(message, optional, tag = "2")]
    schema: Option<datafusion_proto::protobuf::Schema>,
    #[prost(bool, tag = "3")]
    projected: bool,
    #[prost(uint32, repeated, tag = "4")]
    projection: Vec<u32>,
    #[prost(string, tag = "5")]
    stream: String,
}

#[derive(Clone, PartialEq, Message)]
struct WriteNode {
    #[prost(string, tag = "1")]
    kind: String,
    /// The sink's spec, JSON.
    #[prost(string, tag = "2")]
    spec: String,
    #[prost(int64, tag = "3")]
    batch_ms: i64,
}

fn decode_error(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("Flumen codec: cannot decode {what}: {e}"))
}

impl PhysicalExtensionCodec for FlumenCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match buf.split_first() {
            Some((&BALLISTA_NODE, rest)) => {
                self.ballista.try_decode(rest, inputs, ctx, proto_converter)
            }
            Some((&SPLIT_UNNEST_NODE, rest)) => {
                let node = SplitUnnestNode::decode(rest)
                    .map_err(|e| decode_error("SplitUnnestExec", e))?;
                let [input] = inputs else {
                    return internal_err!("SplitUnnestExec has one input, given {}", inputs.len());
                };
                let input_schema = input.schema();
                let exprs = node
                    .exprs
                    .iter()
                    .map(|e| parse_physical_expr(e, ctx, &input_schema, self))
                    .collect::<Result<Vec<_>>>()?;
                let schema: Schema = node
                    .schema
                    .as_ref()
                    .ok_or_else(|| decode_error("SplitUnnestExec", "no schema"))?
                    .try_into()
                    .map_err(|e| decode_error("SplitUnnestExec's schema", e))?;
                let exec = SplitUnnestExec::from_parts(
                    Arc::clone(input),
                    exprs,
                    node.split_index as usize,
                    node.delimiter,
                    node.preserve_nulls,
                    node.expand_empty,
                    Arc::new(schema),
                )
                .map_err(|e| decode_error("SplitUnnestExec", e))?;
                Ok(Arc::new(exec))
            }
            Some((&STATE_PARTITIONS_NODE, rest)) => {
                let node = StatePartitionsNode::decode(rest)
                    .map_err(|e| decode_error("StatePartitionsExec", e))?;
                let [input] = inputs else {
                    return internal_err!(
                        "StatePartitionsExec has one input, given {}",
                        inputs.len()
                    );
                };
                let fold = if let Some(t) = &node.top_n {
                    use datafusion::arrow::compute::SortOptions;
                    Fold::TopN(crate::ops::top_n::Ranked {
                        keys: t.keys.iter().map(|i| *i as usize).collect(),
                        order: t
                            .order
                            .iter()
                            .zip(&t.descending)
                            .zip(&t.nulls_first)
                            .map(|((i, d), n)| crate::ops::top_n::OrderColumn {
                                index: *i as usize,
                                options: SortOptions {
                                    descending: *d,
                                    nulls_first: *n,
                                },
                            })
                            .collect(),
                        rank: t.rank as usize,
                        limit: t.limit as usize,
                        emit_all: t.emit_all,
                    })
                } else if let Some(j) = &node.join {
                    let schema =
                        |s: &Option<datafusion_proto::protobuf::Schema>| -> Result<SchemaRef> {
                            let s: Schema = s
                                .as_ref()
                                .ok_or_else(|| decode_error("a stream join's side", "no schema"))?
                                .try_into()
                                .map_err(|e| decode_error("a stream join's side", e))?;
                            Ok(Arc::new(s))
                        };
                    let ids = |v: &[u32]| v.iter().map(|i| *i as usize).collect();
                    Fold::Join(Box::new(JoinFold {
                        plan: PhysicalPlanNode::decode(j.plan.as_slice())
                            .map_err(|e| decode_error("a stream join's plan", e))?
                            .try_into_physical_plan(ctx, self)?,
                        leaf_sides: j.leaf_sides.clone(),
                        left: schema(&j.left)?,
                        right: schema(&j.right)?,
                        left_keys: ids(&j.left_keys),
                        right_keys: ids(&j.right_keys),
                        left_time: j.left_time.map(|t| t as usize),
                        right_time: j.right_time.map(|t| t as usize),
                        lo: j.lo,
                        hi: j.hi,
                    }))
                } else if node.first_rows {
                    let ids = |v: &[u32]| v.iter().map(|i| *i as usize).collect();
                    Fold::FirstRows(FirstRows {
                        keys: ids(&node.keys),
                        values: ids(&node.values),
                        emit_all: node.emit_all,
                    })
                } else {
                    Fold::Aggregate(
                        PhysicalPlanNode::decode(node.template.as_slice())
                            .map_err(|e| decode_error("StatePartitionsExec's aggregate", e))?
                            .try_into_physical_plan(ctx, self)?,
                    )
                };
                let schema: Schema = node
                    .schema
                    .as_ref()
                    .ok_or_else(|| decode_error("StatePartitionsExec", "no schema"))?
                    .try_into()
                    .map_err(|e| decode_error("StatePartitionsExec's schema", e))?;
                let spec = Spec {
                    dir: node.dir.into(),
                    partitions: node.partitions as usize,
                    changed_only: node.changed_only,
                    memory: node.memory as usize,
                    ttl: node.ttl_ms.map(std::time::Duration::from_millis),
                    window: node.window_key.map(|k| WindowSpec {
                        key_index: k as usize,
                        evict_closed: node.evict_closed,
                        append: node.append,
                        sessions: node.sessions,
                    }),
                };
                let versions = Versions {
                    prev: node.prev,
                    now: node.now,
                    keep_from: node.keep_from,
                    watermark: node.watermark,
                    close: node.close,
                    watermark_right: node.watermark_right,
                };
                Ok(Arc::new(StatePartitionsExec::try_new(
                    Arc::clone(input),
                    fold,
                    Arc::new(spec),
                    Arc::new(parking_lot::Mutex::new(versions)),
                    Arc::new(schema),
                )?))
            }
            Some((&READ_SCAN_NODE, rest)) => {
                let node =
                    ReadScanNode::decode(rest).map_err(|e| decode_error("ReadScanExec", e))?;
                let [input] = inputs else {
                    return internal_err!("ReadScanExec has one input, given {}", inputs.len());
                };
                let schema: Schema = node
                    .schema
                    .as_ref()
                    .ok_or_else(|| decode_error("ReadScanExec", "no schema"))?
                    .try_into()
                    .map_err(|e| decode_error("ReadScanExec's schema", e))?;
                let projection = node
                    .projected
                    .then(|| node.projection.iter().map(|i| *i as usize).collect());
                Ok(Arc::new(ReadScanExec::try_new(
                    Arc::clone(input),
                    node.kind,
                    node.stream,
                    Arc::new(schema),
                    projection,
                )?))
            }
            Some((&WRITE_NODE, rest)) => {
                let node = WriteNode::decode(rest).map_err(|e| decode_error("WriteExec", e))?;
                let [input] = inputs else {
                    return internal_err!("WriteExec has one input, given {}", inputs.len());
                };
                let spec = serde_json::from_str(&node.spec)
                    .map_err(|e| decode_error("WriteExec's spec", e))?;
                Ok(Arc::new(WriteExec::try_new(
                    Arc::clone(input),
                    Arc::new(ClusterWrite {
                        kind: node.kind,
                        spec,
                    }),
                    node.batch_ms,
                )?))
            }
            _ => internal_err!("Flumen codec: a plan node it did not encode"),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(split) = node.downcast_ref::<SplitUnnestExec>() {
            let parts = split.parts();
            let message = SplitUnnestNode {
                exprs: parts
                    .exprs
                    .iter()
                    .map(|e| serialize_physical_expr(e, self))
                    .collect::<Result<Vec<_>>>()?,
                split_index: parts.split_index as u32,
                delimiter: parts.delimiter.to_string(),
                preserve_nulls: parts.preserve_nulls,
                expand_empty: parts.expand_empty,
                schema: Some(
                    parts
                        .schema
                        .as_ref()
                        .try_into()
                        .map_err(|e| DataFusionError::Internal(format!("{e}")))?,
                ),
            };
            buf.push(SPLIT_UNNEST_NODE);
            message
                .encode(buf)
                .map_err(|e| DataFusionError::Internal(format!("{e}")))?;
            return Ok(());
        }
        if let Some(exec) = node.downcast_ref::<WriteExec>() {
            let message = WriteNode {
                kind: exec.write().kind.clone(),
                spec: exec.write().spec.to_string(),
                batch_ms: exec.batch_ms(),
            };
            buf.push(WRITE_NODE);
            message
                .encode(buf)
                .map_err(|e| DataFusionError::Internal(format!("{e}")))?;
            return Ok(());
        }
        if let Some(exec) = node.downcast_ref::<ReadScanExec>() {
            let message = ReadScanNode {
                kind: exec.kind().to_string(),
                schema: Some(
                    exec.source_schema()
                        .as_ref()
                        .try_into()
                        .map_err(|e| DataFusionError::Internal(format!("{e}")))?,
                ),
                projected: exec.projection().is_some(),
                projection: exec
                    .projection()
                    .unwrap_or_default()
                    .iter()
                    .map(|i| *i as u32)
                    .collect(),
                stream: exec.stream().to_string(),
            };
            buf.push(READ_SCAN_NODE);
            message
                .encode(buf)
                .map_err(|e| DataFusionError::Internal(format!("{e}")))?;
            return Ok(());
        }
        if let Some(exec) = node.downcast_ref::<StatePartitionsExec>() {
            let ids = |v: &[usize]| v.iter().map(|i| *i as u32).collect();
            let proto_schema = |s: &SchemaRef| -> Result<datafusion_proto::protobuf::Schema> {
                s.as_ref()
                    .try_into()
                    .map_err(|e| DataFusionError::Internal(format!("{e}")))
            };
            let spec = exec.spec();
            let versions = exec.versions();
            let mut message = StatePartitionsNode {
                watermark_right: versions.watermark_right,
                dir: spec.dir.to_string_lossy().into_owned(),
                partitions: spec.partitions as u32,
                changed_only: spec.changed_only,
                memory: spec.memory as u64,
                ttl_ms: spec.ttl.map(|t| t.as_millis() as u64),
                prev: versions.prev,
                now: versions.now,
                keep_from: versions.keep_from,
                window_key: spec.window.map(|w| w.key_index as u32),
                evict_closed: spec.window.is_some_and(|w| w.evict_closed),
                watermark: versions.watermark,
                append: spec.window.is_some_and(|w| w.append),
                sessions: spec.window.is_some_and(|w| w.sessions),
                close: versions.close,
                schema: Some(proto_schema(&exec.schema())?),
                ..Default::default()
            };
            // What the task folds with: one of the fold's fields set.
            match exec.fold() {
                Fold::Aggregate(t) => {
                    message.template =
                        PhysicalPlanNode::try_from_physical_plan(Arc::clone(t), self)?
                            .encode_to_vec();
                }
                Fold::FirstRows(f) => {
                    message.first_rows = true;
                    message.keys = ids(&f.keys);
                    message.values = ids(&f.values);
                    message.emit_all = f.emit_all;
                }
                Fold::TopN(r) => {
                    message.top_n = Some(TopNNode {
                        keys: ids(&r.keys),
                        order: r.order.iter().map(|o| o.index as u32).collect(),
                        descending: r.order.iter().map(|o| o.options.descending).collect(),
                        nulls_first: r.order.iter().map(|o| o.options.nulls_first).collect(),
                        rank: r.rank as u32,
                        limit: r.limit as u64,
                        emit_all: r.emit_all,
                    });
                }
                Fold::Join(j) => {
                    message.join = Some(JoinNode {
                        plan: PhysicalPlanNode::try_from_physical_plan(Arc::clone(&j.plan), self)?
                            .encode_to_vec(),
                        leaf_sides: j.leaf_sides.clone(),
                        left: Some(proto_schema(&j.left)?),
                        right: Some(proto_schema(&j.right)?),
                        left_keys: ids(&j.left_keys),
                        right_keys: ids(&j.right_keys),
                        left_time: j.left_time.map(|t| t as u32),
                        right_time: j.right_time.map(|t| t as u32),
                        lo: j.lo,
                        hi: j.hi,
                    });
                }
            }
            buf.push(STATE_PARTITIONS_NODE);
            message
                .encode(buf)
                .map_err(|e| DataFusionError::Internal(format!("{e}")))?;
            return Ok(());
        }
        if node.downcast_ref::<StreamingTableExec>().is_some() {
            // The driver replaces every scan of a stream's slot with the slot's rows
            // before a plan leaves (`cluster::ship`); one left is a scan it does not own.
            return internal_err!(
                "a streaming scan reached the cluster without its rows: {}",
                datafusion::physical_plan::displayable(node.as_ref()).one_line()
            );
        }
        buf.push(BALLISTA_NODE);
        self.ballista.try_encode(node, buf, proto_converter).map_err(|e| {
            DataFusionError::Plan(format!(
                "this query cannot run on a cluster: its plan has a node Ballista cannot send to \
                 executors ({e})"
            ))
        })
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match buf.split_first() {
            Some((&BATCH_TIME, rest)) => {
                let bytes: [u8; 8] = rest
                    .try_into()
                    .map_err(|_| decode_error(name, "a timestamp of 8 bytes"))?;
                Ok(Arc::new(batch_time_udf(Arc::new(BatchTimeCell::fixed(
                    i64::from_le_bytes(bytes),
                )))))
            }
            _ => self.ballista.try_decode_udf(name, buf),
        }
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        match batch_time_of(node) {
            Some(millis) => {
                buf.push(BATCH_TIME);
                buf.extend_from_slice(&millis.to_le_bytes());
                Ok(())
            }
            None => self.ballista.try_encode_udf(node, buf),
        }
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        match buf {
            [SIGNED_MULTISET, code] => Over::from_code(*code)
                .map(signed_multiset)
                .ok_or_else(|| decode_error(name, "a known multiset aggregate")),
            _ => self.ballista.try_decode_udaf(name, buf),
        }
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        match node.inner().as_ref().downcast_ref::<SignedMultiset>() {
            Some(m) => {
                buf.extend_from_slice(&[SIGNED_MULTISET, m.over().code()]);
                Ok(())
            }
            None => self.ballista.try_encode_udaf(node, buf),
        }
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.ballista.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode_udwf(node, buf)
    }
}
