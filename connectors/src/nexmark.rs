//! The `nexmark` generator: the Nexmark benchmark's online auction, as three streams
//! over one event sequence, by the rules of the standard generator (Beam's and
//! nexmark-flink's `NexmarkGenerator`): of every 50 events, event 0 is a new person,
//! events 1–3 are new auctions and events 4–49 are bids (the 1 : 3 : 46 mix).
//!
//! ```text
//!  CREATE STREAM bid     WITH (connector = 'nexmark', table = 'bid',     event_rate = '10000')
//!  CREATE STREAM person  WITH (connector = 'nexmark', table = 'person',  event_rate = '10000')
//!  CREATE STREAM auction WITH (connector = 'nexmark', table = 'auction', event_rate = '10000')
//! ```
//!
//! The standard columns (RisingWave's and Arroyo's snake-case names of nexmark-flink's
//! `emailAddress`, `creditCard`, `itemName`, `initialBid`, `dateTime`), and the
//! standard distribution:
//! - ids start at 1000 (people, auctions) and categories at 10 (5 of them);
//! - a bid goes to a hot auction (the newest even-numbered one) half the time, else to
//!   one of the 100 auctions in flight (or up to 10 not opened yet); its bidder is a hot
//!   bidder (one in four of the newest people) three times in four, else one of the 1,000
//!   active people (or up to 10 not registered yet); an auction's seller likewise;
//! - prices are `round(10^(6u) * 100)` cents for `u` uniform in [0, 1); an auction's
//!   reserve is its initial bid plus another price, and it expires a random time up to
//!   twice the span of 1,666 events after it opens (100 auctions in flight);
//! - half the bids come through one of 4 hot channels (Google, Facebook, Baidu, Apple),
//!   the rest through `channel-<n>` of 10,000, whose URL carries `&channel_id=<n
//!   bit-reversed>` nine times in ten;
//! - `extra` pads each event to the standard average sizes (person 200 bytes, auction
//!   500, bid 100), ±20 %.
//!
//! `table = 'events'` is the one stream of every event that nexmark-flink's `datagen`
//! table is: `event_type` (0 person, 1 auction, 2 bid), the event as one of three
//! struct columns `person`, `auction`, `bid` (the others null), and its `date_time`;
//! Flink's views over it (`SELECT bid.auction AS auction, ... FROM datagen WHERE
//! event_type = 2`) give the rows the three streams give.
//!
//! Every value is a pure function of the event's number (a SplitMix64 hash), so any
//! range of events can be generated again identically (replay) and the three streams
//! agree with each other. Event `i` happens at `start + i / event_rate` seconds,
//! `start` being one second before the first batch (as the `rate` source); `events =
//! N` stops after N events, so `available_now` finishes.

use std::fmt::Write;
use std::sync::{Arc, OnceLock};

use crate::rate::Pacer;
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array, StringBuilder, TimestampMillisecondArray};
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
    /// Every event, of whichever table, in one stream (nexmark-flink's `datagen`).
    Events,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Person => "person",
            Table::Auction => "auction",
            Table::Bid => "bid",
            Table::Events => "events",
        }
    }

    /// How many of events `[from, to)` are of this table.
    pub fn count_between(self, from: u64, to: u64) -> u64 {
        let per_cycle = match self {
            Table::Person => 1,
            Table::Auction => 3,
            Table::Bid => 46,
            Table::Events => return to.saturating_sub(from),
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
        let ts = |n: &str| Field::new(n, DataType::Timestamp(TimeUnit::Millisecond, None), false);
        let int = |n: &str| Field::new(n, DataType::Int64, false);
        let text = |n: &str| Field::new(n, DataType::Utf8, false);
        Arc::new(Schema::new(match self {
            Table::Events => {
                let record = |t: Table| {
                    Field::new(
                        t.name(),
                        DataType::Struct(t.schema().fields().clone()),
                        true,
                    )
                };
                vec![
                    Field::new("event_type", DataType::Int32, false),
                    record(Table::Person),
                    record(Table::Auction),
                    record(Table::Bid),
                    ts("date_time"),
                ]
            }
            Table::Person => vec![
                int("id"),
                text("name"),
                text("email_address"),
                text("credit_card"),
                text("city"),
                text("state"),
                ts("date_time"),
                text("extra"),
            ],
            Table::Auction => vec![
                int("id"),
                text("item_name"),
                text("description"),
                int("initial_bid"),
                int("reserve"),
                ts("date_time"),
                ts("expires"),
                int("seller"),
                int("category"),
                text("extra"),
            ],
            Table::Bid => vec![
                int("auction"),
                int("bidder"),
                int("price"),
                text("channel"),
                text("url"),
                ts("date_time"),
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

/// A number in `[0, n)` for event `i`'s field `salt`.
fn below(i: u64, salt: u64, n: u64) -> u64 {
    mix(i, salt) % n.max(1)
}

/// A number uniform in `[0, 1)` for event `i`'s field `salt`.
fn unit(i: u64, salt: u64) -> f64 {
    (mix(i, salt) >> 11) as f64 / (1u64 << 53) as f64
}

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const CATEGORIES: u64 = 5;
const ACTIVE_PEOPLE: u64 = 1000;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_CHANNEL_RATIO: u64 = 2;
const CHANNELS: u64 = 10_000;
const PERSON_BYTES: usize = 200;
const AUCTION_BYTES: usize = 500;
const BID_BYTES: usize = 100;

const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// The newest person registered by event `i` (0-based).
fn last_person(i: u64) -> u64 {
    i / 50
}

/// One of the active people at event `i` (or one of the next few to register).
fn next_person(i: u64, salt: u64) -> u64 {
    let people = last_person(i) + 1;
    let active = people.min(ACTIVE_PEOPLE);
    people - active + below(i, salt, active + PERSON_ID_LEAD)
}

/// The newest auction opened by event `i` (0-based; event 0 has none: 0).
fn last_auction(i: u64) -> u64 {
    let (epoch, offset) = (i / 50, i % 50);
    match offset {
        0 => (epoch * 3).saturating_sub(1),
        1..=3 => epoch * 3 + offset - 1,
        _ => epoch * 3 + 2,
    }
}

/// One of the auctions in flight at event `i` (or one of the next few to open).
fn next_auction(i: u64, salt: u64) -> u64 {
    let max = last_auction(i);
    let min = max.saturating_sub(IN_FLIGHT_AUCTIONS);
    min + below(i, salt, max - min + 1 + AUCTION_ID_LEAD)
}

/// A price in cents: `round(10^(6u) * 100)`.
fn price(i: u64, salt: u64) -> i64 {
    (10f64.powf(unit(i, salt) * 6.0) * 100.0).round() as i64
}

/// 8 KiB of lowercase letters and spaces that `text` cuts strings from.
fn pool() -> &'static str {
    static POOL: OnceLock<String> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..8192u64)
            .map(|k| match mix(k, 99) % 27 {
                26 => ' ',
                c => (b'a' + c as u8) as char,
            })
            .collect()
    })
}

/// `len` characters of text for event `i`'s field `salt`.
fn text(i: u64, salt: u64, len: usize) -> &'static str {
    let pool = pool();
    let at = below(i, salt, (pool.len() - len) as u64) as usize;
    &pool[at..at + len]
}

/// A string of 3 to `max - 1` characters (Beam's `nextString`).
fn short_text(i: u64, salt: u64, max: usize) -> &'static str {
    text(i, salt, 3 + below(i, salt + 1000, max as u64 - 3) as usize)
}

/// The padding that brings an event of `size` bytes to `average` ±20 %.
fn extra(i: u64, salt: u64, size: usize, average: usize) -> &'static str {
    if size >= average {
        return "";
    }
    let want = average - size;
    let delta = (want as f64 * 0.2).round() as u64;
    text(
        i,
        salt,
        want - delta as usize + below(i, salt + 1000, 2 * delta + 1) as usize,
    )
}

/// A channel's URL: `https://www.nexmark.com/<a>/<b>/<c>/item.htm?query=1`.
fn base_url(n: u64, salt: u64) -> String {
    format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        short_text(n, salt, 6),
        short_text(n, salt + 1, 6),
        short_text(n, salt + 2, 6)
    )
}

/// Channel `n`'s name and URL (nine in ten URLs name the channel's id).
fn channel(n: u64) -> (&'static str, &'static str) {
    static TABLE: OnceLock<Vec<(String, String)>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..CHANNELS)
            .map(|n| {
                let mut url = base_url(n, 40);
                if below(n, 43, 10) > 0 {
                    let id = (n as i32).reverse_bits().wrapping_abs();
                    url.push_str(&format!("&channel_id={id}"));
                }
                (format!("channel-{n}"), url)
            })
            .collect()
    });
    let (c, u) = &table[n as usize];
    (c, u)
}

/// Hot channel `k`'s URL.
fn hot_url(k: usize) -> &'static str {
    static URLS: OnceLock<Vec<String>> = OnceLock::new();
    &URLS.get_or_init(|| (0..4).map(|k| base_url(k, 50)).collect())[k]
}

/// The rows of `table` among events `[from, to)`, event `i` at
/// `start_ms + i * 1000 / event_rate`.
pub fn generate(table: Table, from: u64, to: u64, start_ms: i64, event_rate: u64) -> RecordBatch {
    let events: Vec<u64> = (from..to)
        .filter(|i| Table::of_event(*i) == table)
        .collect();
    let at_ms = |i: u64| start_ms + (i as i128 * 1000 / event_rate as i128) as i64;
    let at = || {
        Arc::new(TimestampMillisecondArray::from_iter_values(
            events.iter().map(|i| at_ms(*i)),
        )) as ArrayRef
    };
    let ints = |f: &dyn Fn(u64) -> i64| {
        Arc::new(Int64Array::from_iter_values(events.iter().map(|i| f(*i)))) as ArrayRef
    };
    let n = events.len();
    let columns: Vec<ArrayRef> = match table {
        Table::Events => return generate_events(from, to, start_ms, event_rate),
        Table::Person => {
            let mut names = StringBuilder::with_capacity(n, n * 14);
            let mut emails = StringBuilder::with_capacity(n, n * 17);
            let mut cards = StringBuilder::with_capacity(n, n * 19);
            let mut cities = StringBuilder::with_capacity(n, n * 8);
            let mut states = StringBuilder::with_capacity(n, n * 2);
            let mut extras = StringBuilder::with_capacity(n, n * PERSON_BYTES);
            // Each value written once, straight into its column (no String per row).
            for &i in &events {
                let first = FIRST_NAMES[below(i, 1, 11) as usize];
                let last = LAST_NAMES[below(i, 2, 9) as usize];
                let _ = write!(names, "{first} {last}");
                names.append_value("");
                let _ = write!(emails, "{}@{}.com", text(i, 7, 7), text(i, 8, 5));
                emails.append_value("");
                let r = mix(i, 4);
                let _ = write!(
                    cards,
                    "{:04} {:04} {:04} {:04}",
                    r % 10_000,
                    (r >> 16) % 10_000,
                    (r >> 32) % 10_000,
                    (r >> 48) % 10_000
                );
                cards.append_value("");
                let city = CITIES[below(i, 5, 10) as usize];
                let state = STATES[below(i, 6, 6) as usize];
                cities.append_value(city);
                states.append_value(state);
                // id, name, email (17), card (19), city, state, time.
                let size =
                    8 + first.len() + 1 + last.len() + 17 + 19 + city.len() + state.len() + 8;
                extras.append_value(extra(i, 9, size, PERSON_BYTES));
            }
            vec![
                ints(&|i| FIRST_PERSON_ID + last_person(i) as i64),
                Arc::new(names.finish()),
                Arc::new(emails.finish()),
                Arc::new(cards.finish()),
                Arc::new(cities.finish()),
                Arc::new(states.finish()),
                at(),
                Arc::new(extras.finish()),
            ]
        }
        Table::Auction => {
            // 100 auctions in flight: an auction lasts up to twice the time the next
            // 1,666 events take.
            let horizon_ms = (IN_FLIGHT_AUCTIONS * 50 / 3) as i128 * 1000 / event_rate as i128;
            let length = (2 * horizon_ms).max(1) as u64;
            let mut items = StringBuilder::with_capacity(n, n * 11);
            let mut descriptions = StringBuilder::with_capacity(n, n * 51);
            let mut extras = StringBuilder::with_capacity(n, n * 400);
            let mut initial = Vec::with_capacity(n);
            let mut reserve = Vec::with_capacity(n);
            for &i in &events {
                let item = short_text(i, 10, 20);
                let description = short_text(i, 11, 100);
                items.append_value(item);
                descriptions.append_value(description);
                let size = 8 + item.len() + description.len() + 8 * 6;
                extras.append_value(extra(i, 18, size, AUCTION_BYTES));
                let first = price(i, 12);
                initial.push(first);
                reserve.push(first + price(i, 13));
            }
            vec![
                ints(&|i| FIRST_AUCTION_ID + last_auction(i) as i64),
                Arc::new(items.finish()),
                Arc::new(descriptions.finish()),
                Arc::new(Int64Array::from(initial)),
                Arc::new(Int64Array::from(reserve)),
                at(),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    events
                        .iter()
                        .map(|i| at_ms(*i) + 1 + below(*i, 14, length) as i64),
                )),
                ints(&|i| {
                    let seller = if below(i, 15, HOT_SELLER_RATIO) > 0 {
                        last_person(i) / HOT_SELLER_RATIO * HOT_SELLER_RATIO
                    } else {
                        next_person(i, 16)
                    };
                    FIRST_PERSON_ID + seller as i64
                }),
                ints(&|i| FIRST_CATEGORY_ID + below(i, 17, CATEGORIES) as i64),
                Arc::new(extras.finish()),
            ]
        }
        Table::Bid => {
            let mut channels = StringBuilder::with_capacity(n, n * 10);
            let mut urls = StringBuilder::with_capacity(n, n * 70);
            let mut extras = StringBuilder::with_capacity(n, n * 20);
            for &i in &events {
                let (c, u) = if below(i, 20, HOT_CHANNEL_RATIO) > 0 {
                    let k = below(i, 21, 4) as usize;
                    (HOT_CHANNELS[k], hot_url(k))
                } else {
                    channel(below(i, 22, CHANNELS))
                };
                channels.append_value(c);
                urls.append_value(u);
                extras.append_value(extra(i, 28, 8 * 4 + c.len() + u.len(), BID_BYTES));
            }
            vec![
                ints(&|i| {
                    let auction = if below(i, 23, HOT_AUCTION_RATIO) > 0 {
                        last_auction(i) / HOT_AUCTION_RATIO * HOT_AUCTION_RATIO
                    } else {
                        next_auction(i, 24)
                    };
                    FIRST_AUCTION_ID + auction as i64
                }),
                ints(&|i| {
                    let bidder = if below(i, 25, HOT_BIDDER_RATIO) > 0 {
                        last_person(i) / HOT_BIDDER_RATIO * HOT_BIDDER_RATIO + 1
                    } else {
                        next_person(i, 26)
                    };
                    FIRST_PERSON_ID + bidder as i64
                }),
                ints(&|i| price(i, 27)),
                Arc::new(channels.finish()),
                Arc::new(urls.finish()),
                at(),
                Arc::new(extras.finish()),
            ]
        }
    };
    RecordBatch::try_new(table.schema(), columns).expect("generated columns match the schema")
}

/// Events `[from, to)` as one stream: each event's type, its row as a struct in its
/// table's column (the other two null), its time.
fn generate_events(from: u64, to: u64, start_ms: i64, event_rate: u64) -> RecordBatch {
    use datafusion::arrow::array::{Int32Array, StructArray, UInt32Array};
    use datafusion::arrow::compute::take;
    let tables = [Table::Person, Table::Auction, Table::Bid];
    let mut records: Vec<ArrayRef> = Vec::with_capacity(3);
    for t in tables {
        let rows = StructArray::from(generate(t, from, to, start_ms, event_rate));
        // The k-th row of table t at its event's position, null elsewhere.
        let mut k = 0u32;
        let indices: UInt32Array = (from..to)
            .map(|i| {
                (Table::of_event(i) == t).then(|| {
                    k += 1;
                    k - 1
                })
            })
            .collect();
        records.push(take(&rows, &indices, None).expect("indices within the table's rows"));
    }
    let types = Int32Array::from_iter_values((from..to).map(|i| match Table::of_event(i) {
        Table::Person => 0,
        Table::Auction => 1,
        _ => 2,
    }));
    let at = TimestampMillisecondArray::from_iter_values(
        (from..to).map(|i| start_ms + (i as i128 * 1000 / event_rate as i128) as i64),
    );
    let mut columns: Vec<ArrayRef> = vec![Arc::new(types)];
    columns.extend(records);
    columns.push(Arc::new(at));
    RecordBatch::try_new(Table::Events.schema(), columns)
        .expect("generated columns match the schema")
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
        Some("events") => Table::Events,
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
        Some("events") => Ok(Table::Events),
        Some(other) => {
            plan_err!("nexmark table '{other}' is not one of: bid, person, auction, events")
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
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;

    fn ints(b: &RecordBatch, name: &str) -> Vec<i64> {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn streams_agree_and_ranges_regenerate_identically() {
        let bids = generate(Table::Bid, 0, 50_000, 0, 1000);
        let people = generate(Table::Person, 0, 50_000, 0, 1000);
        let auctions = generate(Table::Auction, 0, 50_000, 0, 1000);
        assert_eq!(people.num_rows(), 1000);
        assert_eq!(auctions.num_rows(), 3000);
        assert_eq!(bids.num_rows(), 46_000);
        // A range cut in two gives the same rows as in one piece.
        let a = generate(Table::Bid, 0, 25_013, 0, 1000);
        let b = generate(Table::Bid, 25_013, 50_000, 0, 1000);
        let joined =
            datafusion::arrow::compute::concat_batches(&Table::Bid.schema(), &[a, b]).unwrap();
        assert_eq!(joined, bids);
        // Ids from 1000; every bid names an auction opened (or at most 10 ahead) and a
        // person registered (or at most 10 ahead); every seller likewise.
        assert_eq!(ints(&people, "id"), (1000..2000).collect::<Vec<_>>());
        assert_eq!(ints(&auctions, "id"), (1000..4000).collect::<Vec<_>>());
        assert!(
            ints(&bids, "auction")
                .iter()
                .all(|a| (1000..4010).contains(a))
        );
        assert!(
            ints(&bids, "bidder")
                .iter()
                .all(|p| (1000..2010).contains(p))
        );
        assert!(
            ints(&auctions, "seller")
                .iter()
                .all(|p| (1000..2010).contains(p))
        );
        assert!(
            ints(&auctions, "category")
                .iter()
                .all(|c| (10..15).contains(c))
        );
    }

    #[test]
    fn the_standard_distribution() {
        let bids = generate(Table::Bid, 0, 100_000, 0, 1000);
        let n = bids.num_rows() as f64;
        // Bidders: many distinct people, not a handful (hot bidders are 1 in 4 of the
        // newest, so a quarter of the people bid three quarters of the bids).
        let mut bidders = ints(&bids, "bidder");
        bidders.sort();
        bidders.dedup();
        assert!(bidders.len() > 400, "{} bidders", bidders.len());
        // Half the bids go to hot channels.
        let channels = bids.column_by_name("channel").unwrap().as_string::<i32>();
        let hot = channels
            .iter()
            .filter(|c| HOT_CHANNELS.contains(&c.unwrap()))
            .count() as f64;
        assert!((hot / n - 0.5).abs() < 0.02, "hot share {}", hot / n);
        // Nine in ten other channels' URLs carry the channel id.
        let urls = bids.column_by_name("url").unwrap().as_string::<i32>();
        let cold: Vec<&str> = channels
            .iter()
            .zip(urls.iter())
            .filter(|(c, _)| !HOT_CHANNELS.contains(&c.unwrap()))
            .map(|(_, u)| u.unwrap())
            .collect();
        let with_id = cold.iter().filter(|u| u.contains("&channel_id=")).count() as f64;
        assert!((with_id / cold.len() as f64 - 0.9).abs() < 0.03);
        // Prices from $1 to $1,000,000 in cents, log-uniform: the median near $1,000.
        let mut prices = ints(&bids, "price");
        prices.sort();
        assert!(prices[0] >= 100 && *prices.last().unwrap() <= 100_000_000);
        let median = prices[prices.len() / 2];
        assert!((50_000..200_000).contains(&median), "median {median}");
        // Padded to about 100 bytes a bid.
        let extra = bids.column_by_name("extra").unwrap().as_string::<i32>();
        let size: usize = (0..bids.num_rows())
            .map(|r| 32 + channels.value(r).len() + urls.value(r).len() + extra.value(r).len())
            .sum();
        let average = size as f64 / n;
        assert!(
            (90.0..110.0).contains(&average),
            "average bid {average} bytes"
        );
        // Auctions: reserve above the initial bid, expiry after the opening.
        let auctions = generate(Table::Auction, 0, 100_000, 0, 1000);
        let (initial, reserve) = (ints(&auctions, "initial_bid"), ints(&auctions, "reserve"));
        assert!(initial.iter().zip(&reserve).all(|(i, r)| r > i));
        let opened = auctions.column_by_name("date_time").unwrap();
        let expires = auctions.column_by_name("expires").unwrap();
        let (opened, expires) = (
            opened.as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>(),
            expires.as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>(),
        );
        assert!((0..auctions.num_rows()).all(|r| expires.value(r) > opened.value(r)));
    }
}
