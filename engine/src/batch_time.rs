//! `_batch_time`: every stream's rows carry the time of the batch they arrive in
//! (Spark DStream semantics). The value comes from a per-query cell that a listener
//! sets when each batch starts, read by the volatile `flumen_batch_time()` function.
//! On a cluster the function travels with the cell's value (`cluster::codec`), and the
//! executor's copy reads a cell fixed at it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::{StreamingListener, Time};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The function's name.
pub const BATCH_TIME_FUNCTION: &str = "flumen_batch_time";

/// Holds the time of the batch being processed.
#[derive(Debug, Default)]
pub struct BatchTimeCell(AtomicI64);

impl BatchTimeCell {
    /// A cell holding `millis` (what an executor's copy of the function reads).
    pub fn fixed(millis: i64) -> Self {
        Self(AtomicI64::new(millis))
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

impl StreamingListener for BatchTimeCell {
    fn on_batch_started(&self, _batch_id: u64, batch_time: Time) {
        self.0.store(batch_time.as_millis(), Ordering::Release);
    }
}

/// `flumen_batch_time()` reading `cell`.
pub fn batch_time_udf(cell: Arc<BatchTimeCell>) -> ScalarUDF {
    ScalarUDF::new_from_impl(BatchTimeFunction {
        signature: Signature::nullary(Volatility::Volatile),
        cell: CellRef(cell),
    })
}

/// The batch time `udf` reads now, when it is `flumen_batch_time()`.
pub(crate) fn batch_time_of(udf: &ScalarUDF) -> Option<i64> {
    udf.inner()
        .downcast_ref::<BatchTimeFunction>()
        .map(|f| f.cell.0.get())
}

#[derive(Debug)]
struct CellRef(Arc<BatchTimeCell>);

impl PartialEq for CellRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CellRef {}

impl std::hash::Hash for CellRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct BatchTimeFunction {
    signature: Signature,
    cell: CellRef,
}

impl ScalarUDFImpl for BatchTimeFunction {
    fn name(&self) -> &str {
        BATCH_TIME_FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Millisecond, None))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
            Some(self.cell.0.get()),
            None,
        )))
    }
}
