//! The `rate` generator (Spark's rate source): `rows_per_second` rows of
//! `(timestamp, value)`, value counting from 0, timestamps spread evenly over each
//! second. `rows = N` stops after N rows (so `AvailableNow` can finish).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::registry::{ConnectorOptions, SourceFactory, check_options, positive_option};
use flumen_engine::source::check_schema;
use flumen_engine::{BatchContext, Result, Source, SourceRange, plan_err};
use parking_lot::Mutex;
use serde_json::json;

/// The columns of a rate stream.
pub fn rate_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("value", DataType::Int64, false),
    ]))
}

#[derive(Debug)]
pub struct RateSource {
    name: String,
    schema: SchemaRef,
    rows_per_second: u64,
    limit: Option<u64>,
    state: Mutex<RateState>,
}

/// A generator's position: the next row (or event) number and the time of row 0, so a
/// range read again after a restart stamps the same times.
pub(crate) fn position(n: u64, start_ms: i64) -> serde_json::Value {
    json!({"n": n, "start_ms": start_ms})
}

pub(crate) fn parse_position(v: &serde_json::Value) -> Option<(u64, i64)> {
    Some((v.get("n")?.as_u64()?, v.get("start_ms")?.as_i64()?))
}

#[derive(Debug, Default)]
struct RateState {
    /// Time (ms) at which value 0 is stamped: one second before the first batch.
    start_ms: Option<i64>,
    planned: u64,
    available_now: bool,
}

impl RateSource {
    pub fn new(name: &str, rows_per_second: u64, limit: Option<u64>) -> Self {
        Self {
            name: name.to_string(),
            schema: rate_schema(),
            rows_per_second: rows_per_second.max(1),
            limit,
            state: Mutex::new(RateState::default()),
        }
    }
}

#[async_trait]
impl Source for RateSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn freeze_available_now(&self) -> Result<()> {
        if self.limit.is_none() {
            return plan_err!(
                "rate stream '{}' never ends, so the available_now trigger would never stop; give it rows = N",
                self.name
            );
        }
        self.state.lock().available_now = true;
        Ok(())
    }

    async fn plan_batch(&self, batch: &BatchContext) -> Result<SourceRange> {
        let mut st = self.state.lock();
        let t = batch.batch_time.as_millis();
        let start_ms = *st.start_ms.get_or_insert(t - 1000);
        let due = if st.available_now {
            st.planned + self.rows_per_second
        } else {
            ((t - start_ms).max(0) as u64).saturating_mul(self.rows_per_second) / 1000
        };
        let mut end = due.max(st.planned);
        if let Some(limit) = self.limit {
            end = end.min(limit);
        }
        if let Some(max) = batch.max_records {
            end = end.min(st.planned + max);
        }
        let range = SourceRange {
            start: position(st.planned, start_ms),
            end: position(end, start_ms),
        };
        st.planned = end;
        Ok(range)
    }

    async fn restore(&self, last: &SourceRange) -> Result<()> {
        let Some((end, start_ms)) = parse_position(&last.end) else {
            return plan_err!("rate source {}: bad range {last:?}", self.name);
        };
        let mut st = self.state.lock();
        st.planned = end;
        st.start_ms = Some(start_ms);
        Ok(())
    }

    async fn read_batch(&self, range: &SourceRange) -> Result<Vec<Vec<RecordBatch>>> {
        let (Some((from, start_ms)), Some((to, _))) =
            (parse_position(&range.start), parse_position(&range.end))
        else {
            return plan_err!("rate source {}: bad range {range:?}", self.name);
        };
        let rate = self.rows_per_second as i64;
        let values = Int64Array::from_iter_values(from as i64..to as i64);
        let stamps = TimestampMillisecondArray::from_iter_values(
            (from as i64..to as i64).map(|v| start_ms + v * 1000 / rate),
        );
        let batch = RecordBatch::try_new(
            Arc::clone(&self.schema),
            vec![Arc::new(stamps), Arc::new(values)],
        )?;
        check_schema(&self.name, &self.schema, &batch)?;
        Ok(vec![vec![batch]])
    }

    fn honours_record_limit(&self) -> bool {
        true
    }

    async fn is_drained(&self) -> Result<bool> {
        let st = self.state.lock();
        Ok(self.limit.is_some_and(|l| st.planned >= l))
    }
}

/// `connector = 'rate'`.
#[derive(Debug)]
pub struct RateFactory;

impl SourceFactory for RateFactory {
    fn options(&self) -> &[&'static str] {
        &["rows_per_second", "rows"]
    }

    fn create(
        &self,
        name: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Source>> {
        check_options("rate", options, self.options())?;
        let number = |key: &str| positive_option("rate", options, key);
        let expected = rate_schema();
        if schema.fields() != expected.fields() {
            return plan_err!(
                "a rate stream has the columns (timestamp TIMESTAMP NOT NULL, value BIGINT NOT NULL); declare those or none"
            );
        }
        Ok(Arc::new(RateSource::new(
            name,
            number("rows_per_second")?.unwrap_or(1),
            number("rows")?,
        )))
    }

    fn default_schema(&self, _options: &ConnectorOptions) -> Option<SchemaRef> {
        Some(rate_schema())
    }
}
