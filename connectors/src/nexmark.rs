//! The `nexmark` generator: the Nexmark benchmark's online auction, as three streams
//! over one event sequence. Of every 50 events, event 0 is a new person, events 1–3
//! are new auctions and events 4–49 are bids (Nexmark's 1 : 3 : 46 mix).
//!
//! ```text
//!  CREATE STREAM bid     WITH (connector = 'nexmark', table = 'bid',     event_rate = '10000')
//!  CREATE STREAM person  WITH (connector = 'nexmark', table = 'person',  event_rate = '10000')
//!  CREATE STREAM auction WITH (connector = 'nexmark', table = 'auction', event_rate = '10000')
//! ```
//!
//! Every value is a pure function of the event's number (a SplitMix64 hash), so any
//! range of events can be generated again identically (replay) and the three streams
//! agree with each other: an auction's seller is a person already registered, a bid
//! names an auction already opened and a registered bidder. Event `i` happens at
//! `start + i / event_rate` seconds, `start` being one second before the first batch
//! (as the `rate` source); `events = N` stops after N events, so `available_now`
//! finishes.

use std::sync::Arc;

use crate::rate::Pacer;
use async_trait::async_trait;
use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::cluster::scan::ClusterScan;
use flumen_engine::registry::{ConnectorOptions, SourceFactory, positive_option};
use flumen_engine::source::{RecordLimit, SourceBatch};
use flumen_engine::{BatchContext, Result, Source, SourceRange, plan_err};
use serde_json::json;

/// Which of the three Nexmark streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Person,
    Auction,
    Bid,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Person => "person",
            Table::Auction => "auction",
            Table::Bid => "bid",
        }
    }

    /// How many of events `[from, to)` are of this table.
    pub fn count_between(self, from: u64, to: u64) -> u64 {
        let per_cycle = match self {
            Table::Person => 1,
            Table::Auction => 3,
            Table::Bid => 46,
        };
        let below = |n: u64| {
            (n / 50) * per_cycle
                + (n / 50 * 50..n)
                    .filter(|i| Table::of_event(*i) == self)
                    .count() as u64
        };
        below(to.max(from)) - below(from)
    }

    fn of_event(i: u64) -> Table {
        match i % 50 {
            0 => Table::Person,
            1..=3 => Table::Auction,
            _ => Table::Bid,
        }
    }

    pub fn schema(self) -> SchemaRef {
        let ts = Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        );
        let int = |n: &str| Field::new(n, DataType::Int64, false);
        let text = |n: &str| Field::new(n, DataType::Utf8, false);
        Arc::new(Schema::new(match self {
            Table::Person => vec![int("id"), text("name"), text("city"), text("state"), ts],
            Table::Auction => vec![
                int("id"),
                int("seller"),
                int("category"),
                int("initial_bid"),
                ts,
            ],
            Table::Bid => vec![
                int("auction"),
                int("bidder"),
                int("price"),
                text("channel"),
                text("url"),
                ts,
                text("extra"),
            ],
        }))
    }
}

/// SplitMix64: a well-mixed 64-bit hash of `x` (salted per field).
fn mix(x: u64, salt: u64) -> u64 {
    let mut z = x
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const CITIES: [&str; 5] = ["Phoenix", "Boise", "Kent", "Redmond", "Portland"];
const STATES: [&str; 5] = ["AZ", "ID", "WA", "OR", "CA"];
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// The rows of `table` among events `[from, to)`, event `i` at
/// `start_ms + i * 1000 / event_rate`.
pub fn generate(table: Table, from: u64, to: u64, start_ms: i64, event_rate: u64) -> RecordBatch {
    let events: Vec<u64> = (from..to)
        .filter(|i| Table::of_event(*i) == table)
        .collect();
    let at = TimestampMillisecondArray::from_iter_values(
        events
            .iter()
            .map(|i| start_ms + (*i as i128 * 1000 / event_rate as i128) as i64),
    );
    let person = |i: u64| (i / 50) as i64;
    // The newest auction opened before event i (auctions are events 50k+1..=3).
    let last_auction = |i: u64| ((i / 50) * 3 + (i % 50).clamp(1, 4) - 2) as i64;
    let columns: Vec<Arc<dyn datafusion::arrow::array::Array>> = match table {
        Table::Person => vec![
            Arc::new(Int64Array::from_iter_values(
                events.iter().map(|i| person(*i)),
            )),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|i| format!("person {}", person(*i))),
            )),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|i| CITIES[(mix(*i, 1) % 5) as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|i| STATES[(mix(*i, 2) % 5) as usize]),
            )),
            Arc::new(at),
        ],
        Table::Auction => vec![
            Arc::new(Int64Array::from_iter_values(
                events.iter().map(|i| ((i / 50) * 3 + i % 50 - 1) as i64),
            )),
            // One of the 100 people who registered last.
            Arc::new(Int64Array::from_iter_values(
                events
                    .iter()
                    .map(|i| (person(*i) - (mix(*i, 3) % 100) as i64).max(0)),
            )),
            Arc::new(Int64Array::from_iter_values(
                events.iter().map(|i| 10 + (mix(*i, 4) % 5) as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                events.iter().map(|i| 1 + (mix(*i, 5) % 1000) as i64),
            )),
            Arc::new(at),
        ],
        Table::Bid => {
            // Bids go to one of the last 1,000 auctions opened, by one of the last
            // 10,000 people registered.
            let auction: Vec<i64> = events
                .iter()
                .map(|i| (last_auction(*i) - (mix(*i, 6) % 1000) as i64).max(0))
                .collect();
            vec![
                Arc::new(Int64Array::from(auction.clone())),
                Arc::new(Int64Array::from_iter_values(
                    events
                        .iter()
                        .map(|i| (person(*i) - (mix(*i, 7) % 10_000) as i64).max(0)),
                )),
                Arc::new(Int64Array::from_iter_values(
                    events.iter().map(|i| 1 + (mix(*i, 8) % 100_000) as i64),
                )),
                Arc::new(StringArray::from_iter_values(
                    events.iter().map(|i| CHANNELS[(mix(*i, 9) % 4) as usize]),
                )),
                Arc::new(StringArray::from_iter_values(
                    auction
                        .iter()
                        .map(|a| format!("https://www.nexmark.com/item/{a}")),
                )),
                Arc::new(at),
                Arc::new(StringArray::from_iter_values(events.iter().map(|_| ""))),
            ]
        }
    };
    RecordBatch::try_new(table.schema(), columns).expect("generated columns match the schema")
}

#[derive(Debug)]
pub struct NexmarkSource {
    name: String,
    table: Table,
    pacer: Pacer,
}

impl NexmarkSource {
    pub fn new(name: &str, table: Table, event_rate: u64, events: Option<u64>) -> Self {
        Self {
            name: name.to_string(),
            table,
            // Under available_now, everything in one batch (record caps still apply).
            pacer: Pacer::new(
                format!("nexmark stream '{name}'"),
                event_rate,
                events,
                u64::MAX,
            ),
        }
    }
}

#[async_trait]
impl Source for NexmarkSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!("nexmark {:?} events {}", self.table, self.pacer.describe())
    }

    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    async fn freeze_available_now(&self) -> Result<()> {
        self.pacer.freeze("events = N")
    }

    async fn plan_batch(&self, batch: &BatchContext) -> Result<SourceRange> {
        Ok(self.pacer.plan(batch))
    }

    async fn restore(&self, last: &SourceRange) -> Result<()> {
        self.pacer.restore(last)
    }

    async fn read_batch(&self, range: &SourceRange) -> Result<SourceBatch> {
        let (from, to, start_ms) = self.pacer.range(range)?;
        Ok(SourceBatch::rows(vec![generate_sliced(
            self.table,
            from,
            to,
            start_ms,
            self.pacer.rate(),
        )]))
    }

    fn cluster_scan(&self, range: &SourceRange, partitions: usize) -> Result<Option<ClusterScan>> {
        let (from, to, start_ms) = self.pacer.range(range)?;
        let rate = self.pacer.rate();
        let table = self.table.name();
        Ok(Some(ClusterScan {
            kind: "nexmark".into(),
            parts: crate::rate::split_range(from, to, partitions)
                .into_iter()
                .map(|(from, to)| {
                    json!({"table": table, "from": from, "to": to, "start_ms": start_ms, "event_rate": rate})
                })
                .collect(),
            rows: Some(self.table.count_between(from, to)),
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

/// Events `[from, to)` of `table`, generated in slices, so a large batch is several
/// moderate RecordBatches.
fn generate_sliced(table: Table, from: u64, to: u64, start_ms: i64, rate: u64) -> Vec<RecordBatch> {
    const SLICE: u64 = 64 * 1024;
    let mut out = Vec::new();
    let mut i = from;
    while i < to {
        let j = (i + SLICE).min(to);
        let b = generate(table, i, j, start_ms, rate);
        if b.num_rows() > 0 {
            out.push(b);
        }
        i = j;
    }
    out
}

/// A part of a nexmark scan (`cluster_scan`), read on an executor.
pub(crate) fn read_part(part: &serde_json::Value, _schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let bad = || flumen_engine::Error::Internal(format!("a nexmark scan's bad part: {part}"));
    let field = |k: &str| part.get(k).and_then(|v| v.as_i64()).ok_or_else(bad);
    let table = match part.get("table").and_then(|t| t.as_str()) {
        Some("person") => Table::Person,
        Some("auction") => Table::Auction,
        Some("bid") => Table::Bid,
        _ => return Err(bad()),
    };
    Ok(generate_sliced(
        table,
        field("from")? as u64,
        field("to")? as u64,
        field("start_ms")?,
        field("event_rate")? as u64,
    ))
}

/// `connector = 'nexmark'`.
#[derive(Debug)]
pub struct NexmarkFactory;

fn table_option(options: &ConnectorOptions) -> Result<Table> {
    match options
        .get("table")
        .map(|t| t.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("bid") => Ok(Table::Bid),
        Some("person") => Ok(Table::Person),
        Some("auction") => Ok(Table::Auction),
        Some(other) => {
            plan_err!("nexmark table '{other}' is not one of: bid, person, auction")
        }
    }
}

impl SourceFactory for NexmarkFactory {
    fn options(&self) -> &[&'static str] {
        &["table", "event_rate", "events"]
    }

    fn create(
        &self,
        name: &str,
        schema: SchemaRef,
        options: &ConnectorOptions,
    ) -> Result<Arc<dyn Source>> {
        let table = table_option(options)?;
        let expected = table.schema();
        if schema.fields() != expected.fields() {
            let cols: Vec<String> = expected
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect();
            return plan_err!(
                "stream {name}: a nexmark {table:?} stream has the columns ({}); declare those (NOT NULL) or none",
                cols.join(", ")
            );
        }
        Ok(Arc::new(NexmarkSource::new(
            name,
            table,
            positive_option("nexmark", options, "event_rate")?.unwrap_or(10_000),
            positive_option("nexmark", options, "events")?,
        )))
    }

    fn default_schema(&self, options: &ConnectorOptions) -> Option<SchemaRef> {
        table_option(options).ok().map(Table::schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_agree_and_ranges_regenerate_identically() {
        let bids = generate(Table::Bid, 0, 5000, 0, 1000);
        let people = generate(Table::Person, 0, 5000, 0, 1000);
        let auctions = generate(Table::Auction, 0, 5000, 0, 1000);
        assert_eq!(people.num_rows(), 100);
        assert_eq!(auctions.num_rows(), 300);
        assert_eq!(bids.num_rows(), 4600);
        // A range cut in two gives the same rows as in one piece.
        let a = generate(Table::Bid, 0, 2500, 0, 1000);
        let b = generate(Table::Bid, 2500, 5000, 0, 1000);
        let joined =
            datafusion::arrow::compute::concat_batches(&Table::Bid.schema(), &[a, b]).unwrap();
        assert_eq!(joined, bids);
        // Every bid names an auction opened before it; every seller is registered.
        let col = |b: &RecordBatch, i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        };
        let max_auction = *col(&auctions, 0).iter().max().unwrap();
        assert!(col(&bids, 0).iter().all(|a| *a <= max_auction));
        assert!(col(&auctions, 1).iter().all(|s| (0..100).contains(s)));
    }
}
