//! The `rate` generator (Spark's rate source): `rows_per_second` rows of
//! `(timestamp, value)`, value counting from 0, timestamps spread evenly over each
//! second. `rows = N` stops after N rows (so `AvailableNow` can finish).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Int64Array, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::cluster::scan::ClusterScan;
use flumen_engine::registry::{ConnectorOptions, SourceFactory, positive_option};
use flumen_engine::source::{RecordLimit, SourceBatch, check_schema};
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
    pacer: Pacer,
}

impl Pacer {
    /// The rate and limit: what rows a position stands for.
    pub(crate) fn describe(&self) -> String {
        match self.limit {
            Some(n) => format!("{} per second, {n} in all", self.rate),
            None => format!("{} per second", self.rate),
        }
    }
}

/// The pacing both generators share: rows (events) numbered from 0, row `n` due at
/// `start + n / rate` with `start` one second before the first batch, at most `limit`
/// of them. A position is `{n, start_ms}`, so a range read again after a restart
/// stamps the same times.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// For errors: "rate source x", "nexmark source x".
    what: String,
    rate: u64,
    limit: Option<u64>,
    /// Under `AvailableNow`: how many rows one batch takes.
    available_now_step: u64,
    state: Mutex<PacerState>,
}

#[derive(Debug, Default)]
struct PacerState {
    start_ms: Option<i64>,
    planned: u64,
    available_now: bool,
}

fn position(n: u64, start_ms: i64) -> serde_json::Value {
    json!({"n": n, "start_ms": start_ms})
}

fn parse_position(v: &serde_json::Value) -> Option<(u64, i64)> {
    Some((v.get("n")?.as_u64()?, v.get("start_ms")?.as_i64()?))
}

impl Pacer {
    pub fn new(what: String, rate: u64, limit: Option<u64>, available_now_step: u64) -> Self {
        Self {
            what,
            rate: rate.max(1),
            limit,
            available_now_step,
            state: Mutex::default(),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// `AvailableNow`: batches take `available_now_step` rows each until `limit`;
    /// refused without a limit (`hint` says which option gives one).
    pub fn freeze(&self, hint: &str) -> Result<()> {
        if self.limit.is_none() {
            return plan_err!(
                "{} never ends, so the available_now trigger would never stop; give it {hint}",
                self.what
            );
        }
        self.state.lock().available_now = true;
        Ok(())
    }

    pub fn plan(&self, batch: &BatchContext) -> SourceRange {
        let mut st = self.state.lock();
        let t = batch.batch_time.as_millis();
        let start_ms = *st.start_ms.get_or_insert(t - 1000);
        let due = if st.available_now {
            st.planned.saturating_add(self.available_now_step)
        } else {
            ((t - start_ms).max(0) as u64).saturating_mul(self.rate) / 1000
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
        range
    }

    pub fn restore(&self, last: &SourceRange) -> Result<()> {
        let Some((end, start_ms)) = parse_position(&last.end) else {
            return plan_err!("{}: bad range {last:?}", self.what);
        };
        let mut st = self.state.lock();
        st.planned = end;
        st.start_ms = Some(start_ms);
        Ok(())
    }

    /// `(from, to, start_ms)` of a range this pacer planned.
    pub fn range(&self, range: &SourceRange) -> Result<(u64, u64, i64)> {
        match (parse_position(&range.start), parse_position(&range.end)) {
            (Some((from, start_ms)), Some((to, _))) => Ok((from, to, start_ms)),
            _ => plan_err!("{}: bad range {range:?}", self.what),
        }
    }

    pub fn drained(&self) -> bool {
        let st = self.state.lock();
        self.limit.is_some_and(|l| st.planned >= l)
    }
}

impl RateSource {
    pub fn new(name: &str, rows_per_second: u64, limit: Option<u64>) -> Self {
        Self {
            name: name.to_string(),
            schema: rate_schema(),
            // Under available_now, one second's worth per batch.
            pacer: Pacer::new(
                format!("rate stream '{name}'"),
                rows_per_second,
                limit,
                rows_per_second.max(1),
            ),
        }
    }
}

#[async_trait]
impl Source for RateSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!("rate {}", self.pacer.describe())
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn freeze_available_now(&self) -> Result<()> {
        self.pacer.freeze("rows = N")
    }

    async fn plan_batch(&self, batch: &BatchContext) -> Result<SourceRange> {
        Ok(self.pacer.plan(batch))
    }

    async fn restore(&self, last: &SourceRange) -> Result<()> {
        self.pacer.restore(last)
    }

    async fn read_batch(&self, range: &SourceRange) -> Result<SourceBatch> {
        let (from, to, start_ms) = self.pacer.range(range)?;
        let batch = rate_rows(&self.schema, from, to, start_ms, self.pacer.rate())?;
        check_schema(&self.name, &self.schema, &batch)?;
        Ok(SourceBatch::rows(vec![vec![batch]]))
    }

    fn cluster_scan(&self, range: &SourceRange, partitions: usize) -> Result<Option<ClusterScan>> {
        let (from, to, start_ms) = self.pacer.range(range)?;
        let rate = self.pacer.rate();
        Ok(Some(ClusterScan {
            kind: "rate".into(),
            parts: split_range(from, to, partitions)
                .into_iter()
                .map(|(from, to)| json!({"from": from, "to": to, "start_ms": start_ms, "rate": rate}))
                .collect(),
            rows: Some(to - from),
            ..Default::default()
        }))
    }

    fn record_limit(&self) -> RecordLimit {
        RecordLimit::Honoured
    }

    async fn is_drained(&self) -> Result<bool> {
        Ok(self.pacer.drained())
    }
}

/// Rows `[from, to)` of a rate stream: value `v` stamped `start_ms + v / rate`.
fn rate_rows(
    schema: &SchemaRef,
    from: u64,
    to: u64,
    start_ms: i64,
    rate: u64,
) -> Result<RecordBatch> {
    let rate = rate.max(1) as i64;
    let values = Int64Array::from_iter_values(from as i64..to as i64);
    let stamps = TimestampMillisecondArray::from_iter_values(
        (from as i64..to as i64).map(|v| start_ms + v * 1000 / rate),
    );
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(stamps), Arc::new(values)],
    )?)
}

/// Event numbers `[from, to)` cut into at most `partitions` ranges of at least
/// [`MIN_PART`] events (one range, maybe empty, for few).
pub(crate) fn split_range(from: u64, to: u64, partitions: usize) -> Vec<(u64, u64)> {
    let n = to.saturating_sub(from);
    let parts = (partitions.max(1) as u64).min(n / MIN_PART).max(1);
    let per = n.div_ceil(parts).max(1);
    let mut out = Vec::new();
    let mut i = from;
    loop {
        let j = (i + per).min(to);
        out.push((i, j));
        if j >= to {
            return out;
        }
        i = j;
    }
}

/// The fewest events a part of a generator's scan on a cluster holds.
const MIN_PART: u64 = 8192;

/// A part of a rate scan (`cluster_scan`), read on an executor.
pub(crate) fn read_part(part: &serde_json::Value, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let field = |k: &str| {
        part.get(k).and_then(|v| v.as_i64()).ok_or_else(|| {
            flumen_engine::Error::Internal(format!("a rate scan's part without '{k}': {part}"))
        })
    };
    Ok(vec![rate_rows(
        schema,
        field("from")? as u64,
        field("to")? as u64,
        field("start_ms")?,
        field("rate")? as u64,
    )?])
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

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_split_into_parts_of_whole_events() {
        assert_eq!(super::split_range(5, 5, 4), [(5, 5)]);
        assert_eq!(super::split_range(0, 100, 4), [(0, 100)]);
        assert_eq!(
            super::split_range(0, 20_000, 4),
            [(0, 10_000), (10_000, 20_000)]
        );
        let parts = super::split_range(3, 100_003, 4);
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0].0, parts[3].1), (3, 100_003));
        assert!(parts.windows(2).all(|w| w[0].1 == w[1].0));
    }
}
