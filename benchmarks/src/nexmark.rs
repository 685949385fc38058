//! Nexmark through the SQL layer: bids pre-generated as Arrow batches (generation is
//! not timed), fed by a source that replays them as micro-batches, queries planned
//! once by `FlumenSession`, results into a blackhole sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use async_trait::async_trait;
use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use flumen_engine::registry::{ConnectorOptions, SinkFactory, SourceFactory};
use flumen_engine::{ConnectorRegistry, QueueSource, Sink, Source, SystemClock, Time, WriteKey};
use flumen_sql::FlumenSession;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// `events` bids in batches of `batch_rows`, 1,000 events per second of event time.
pub fn generate_bids(events: usize, batch_rows: usize) -> Vec<RecordBatch> {
    const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
    let mut rng = SmallRng::seed_from_u64(11);
    let mut out = Vec::new();
    let mut made = 0;
    while made < events {
        let n = batch_rows.min(events - made);
        let ids = made as i64..(made + n) as i64;
        let auction: Int64Array = ids
            .clone()
            .map(|_| 1000 + rng.random_range(0..10_000))
            .collect();
        let bidder: Int64Array = ids
            .clone()
            .map(|_| 1000 + rng.random_range(0..100_000))
            .collect();
        let price: Int64Array = ids.clone().map(|_| rng.random_range(1..100_000)).collect();
        let channel: StringArray = ids
            .clone()
            .map(|i| Some(CHANNELS[(i % 4) as usize]))
            .collect();
        let url: StringArray = ids
            .clone()
            .map(|i| Some(format!("https://www.nexmark.com/item/{}", i % 1000)))
            .collect();
        let date_time =
            TimestampMillisecondArray::from_iter_values(ids.clone().map(|i| 1_700_000_000_000 + i));
        let extra: StringArray = ids.map(|_| Some("")).collect();
        out.push(
            RecordBatch::try_new(
                bid_schema(),
                vec![
                    Arc::new(auction),
                    Arc::new(bidder),
                    Arc::new(price),
                    Arc::new(channel),
                    Arc::new(url),
                    Arc::new(date_time),
                    Arc::new(extra),
                ],
            )
            .unwrap(),
        );
        made += n;
    }
    out
}

fn ts_field() -> Field {
    Field::new(
        "date_time",
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )
}

pub fn person_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        ts_field(),
    ]))
}

pub fn auction_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("initial_bid", DataType::Int64, false),
        ts_field(),
    ]))
}

/// People and auctions of a Nexmark stream of `events` events (Nexmark's mix: of
/// every 50 events, 1 person and 3 auctions; the 46 bids are left out). Event `i` is
/// at 1,000 events per second of event time, as the bids; a seller is one of the 100
/// people who registered last.
pub fn generate_people_and_auctions(
    events: usize,
    batch_rows: usize,
) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
    const CITIES: [&str; 5] = ["Phoenix", "Boise", "Kent", "Redmond", "Portland"];
    const STATES: [&str; 5] = ["AZ", "ID", "WA", "OR", "CA"];
    let mut rng = SmallRng::seed_from_u64(13);
    let people = events / 50;
    let mut persons = Vec::new();
    let mut auctions = Vec::new();
    let mut start = 0;
    while start < people {
        let n = batch_rows.min(people - start);
        let ids = start as i64..(start + n) as i64;
        let id: Int64Array = ids.clone().collect();
        let name: StringArray = ids.clone().map(|i| Some(format!("person {i}"))).collect();
        let city: StringArray = ids
            .clone()
            .map(|i| Some(CITIES[(i % 5) as usize]))
            .collect();
        let state: StringArray = ids
            .clone()
            .map(|i| Some(STATES[(i % 5) as usize]))
            .collect();
        let at = TimestampMillisecondArray::from_iter_values(
            ids.clone().map(|i| 1_700_000_000_000 + i * 50),
        );
        persons.push(
            RecordBatch::try_new(
                person_schema(),
                vec![
                    Arc::new(id),
                    Arc::new(name),
                    Arc::new(city),
                    Arc::new(state),
                    Arc::new(at),
                ],
            )
            .unwrap(),
        );
        // Three auctions after each person, at event numbers 50 k + 1..=3.
        let rows: Vec<(i64, i64)> = ids.flat_map(|p| (1..=3).map(move |j| (p, j))).collect();
        let id: Int64Array = rows.iter().map(|(p, j)| p * 3 + j - 1).collect();
        let seller: Int64Array = rows
            .iter()
            .map(|(p, _)| (p - rng.random_range(0..100)).max(0))
            .collect();
        let category: Int64Array = rows.iter().map(|_| 10 + rng.random_range(0..5)).collect();
        let initial: Int64Array = rows.iter().map(|_| rng.random_range(1..1000)).collect();
        let at = TimestampMillisecondArray::from_iter_values(
            rows.iter().map(|(p, j)| 1_700_000_000_000 + p * 50 + j),
        );
        auctions.push(
            RecordBatch::try_new(
                auction_schema(),
                vec![
                    Arc::new(id),
                    Arc::new(seller),
                    Arc::new(category),
                    Arc::new(initial),
                    Arc::new(at),
                ],
            )
            .unwrap(),
        );
        start += n;
    }
    (persons, auctions)
}

/// The pre-generated data of one run.
pub struct Data {
    pub bids: Arc<Vec<RecordBatch>>,
    pub persons: Arc<Vec<RecordBatch>>,
    pub auctions: Arc<Vec<RecordBatch>>,
    /// Events in the Nexmark stream the data stands for.
    pub events: usize,
}

impl Data {
    /// The rows query `name` reads: bids, or for q8 people and auctions (counted
    /// alone, not as the whole Nexmark stream they stand for).
    pub fn rows_read(&self, name: &str) -> usize {
        let rows = |b: &Arc<Vec<RecordBatch>>| b.iter().map(|b| b.num_rows()).sum::<usize>();
        if name == "q8" {
            rows(&self.persons) + rows(&self.auctions)
        } else {
            rows(&self.bids)
        }
    }
}

/// `connector = 'pregenerated'`: each query gets a queue holding the batches, one
/// element (micro-batch) per `per_batch` input batches.
#[derive(Debug)]
struct Pregenerated {
    batches: Arc<Vec<RecordBatch>>,
    per_batch: usize,
}

impl SourceFactory for Pregenerated {
    fn options(&self) -> &[&'static str] {
        &[]
    }

    fn create(
        &self,
        name: &str,
        schema: SchemaRef,
        _options: &ConnectorOptions,
    ) -> flumen_engine::Result<Arc<dyn Source>> {
        let q = QueueSource::new(name, schema, true);
        for chunk in self.batches.chunks(self.per_batch) {
            q.push(chunk.to_vec())?;
        }
        Ok(q)
    }
}

/// `connector = 'blackhole'`: counts rows, keeps nothing.
#[derive(Debug, Default)]
struct Blackhole {
    rows: AtomicU64,
}

#[async_trait]
impl Sink for Blackhole {
    fn name(&self) -> &str {
        "blackhole"
    }

    async fn write(&self, _key: &WriteKey, batches: Vec<RecordBatch>) -> flumen_engine::Result<()> {
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        self.rows.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn commit(
        &self,
        _query_id: &str,
        _batch_time: Time,
        _partitions: usize,
    ) -> flumen_engine::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct BlackholeFactory(Arc<Blackhole>);

impl SinkFactory for BlackholeFactory {
    fn options(&self) -> &[&'static str] {
        &[]
    }

    fn create(
        &self,
        _name: &str,
        _options: &ConnectorOptions,
    ) -> flumen_engine::Result<Arc<dyn Sink>> {
        Ok(self.0.clone())
    }
}

pub const QUERIES: [(&str, &str); 7] = [
    (
        "q0",
        "SELECT auction, bidder, price, date_time, extra FROM bid",
    ),
    (
        "q1",
        "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
    ),
    (
        "q2",
        "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    ),
    // The stateful half of q5: bids per auction in 10 s windows sliding every 2 s,
    // each window emitted once when the watermark closes it (append), state evicted.
    (
        "q5-counts",
        "SELECT auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)['start'] AS ws, \
         count(*) AS num FROM bid \
         GROUP BY auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND) EMIT FINAL",
    ),
    // q5 whole: the auctions with the most bids per window; the maximum per closed
    // window runs per batch, the join is a stream join on the same window.
    (
        "q5",
        "SELECT a.auction, a.ws, a.num FROM            (SELECT auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)['start'] AS ws, count(*) AS num               FROM bid GROUP BY auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)) a            JOIN            (SELECT ws, max(num) AS maxn FROM               (SELECT auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND)['start'] AS ws, count(*) AS num                  FROM bid GROUP BY auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND))             GROUP BY ws) b            ON a.ws = b.ws AND a.num >= b.maxn EMIT FINAL",
    ),
    // q7: the highest bids of each 10 s window: bids joined with the maximum per window.
    (
        "q7",
        "SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b            JOIN (SELECT max(price) AS maxprice, window(date_time, INTERVAL '10' SECOND)['end'] AS window_end                    FROM bid GROUP BY window(date_time, INTERVAL '10' SECOND)) m            ON b.price = m.maxprice AND b.date_time >= m.window_end - INTERVAL '10' SECOND               AND b.date_time < m.window_end EMIT FINAL",
    ),
    // q8: people who opened an auction in the 10 s window in which they registered:
    // two windowed aggregates joined on the same window.
    (
        "q8",
        "SELECT p.id, p.name, p.starttime FROM \
           (SELECT id, name, window(date_time, INTERVAL '10' SECOND)['start'] AS starttime \
              FROM person GROUP BY id, name, window(date_time, INTERVAL '10' SECOND)) p \
           JOIN (SELECT seller, window(date_time, INTERVAL '10' SECOND)['start'] AS starttime \
              FROM auction GROUP BY seller, window(date_time, INTERVAL '10' SECOND)) a \
           ON p.id = a.seller AND p.starttime = a.starttime EMIT FINAL",
    ),
];

/// Runs `query` over the data in micro-batches of `per_batch_events` Nexmark events;
/// returns `events` (the rows the query reads) per second.
pub async fn run_query(
    sql: &str,
    data: &Data,
    events: usize,
    per_batch_events: usize,
) -> Result<(f64, u64, usize)> {
    let sink = Arc::new(Blackhole::default());
    let mut registry = ConnectorRegistry::with_builtins();
    // Each stream is cut into the same number of micro-batches: one per
    // `per_batch_events` events of the Nexmark stream.
    let micro_batches = data.events.div_ceil(per_batch_events).max(1);
    for (name, batches) in [
        ("pregenerated", &data.bids),
        ("pregenerated_person", &data.persons),
        ("pregenerated_auction", &data.auctions),
    ] {
        registry.register_source(
            name,
            Arc::new(Pregenerated {
                batches: Arc::clone(batches),
                per_batch: batches.len().div_ceil(micro_batches).max(1),
            }),
        );
    }
    registry.register_sink("blackhole", Arc::new(BlackholeFactory(sink.clone())));
    let mut session = FlumenSession::new(registry, Arc::new(SystemClock));
    let cols = "auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL, channel TEXT NOT NULL, \
                url TEXT NOT NULL, date_time TIMESTAMP NOT NULL, extra TEXT NOT NULL, \
                WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND";
    session
        .execute_script(&format!(
            "SET trigger = 'available_now'; SET batch_interval = '100 ms';
             CREATE STREAM bid ({cols}) WITH (connector = 'pregenerated');
             CREATE STREAM person (id BIGINT NOT NULL, name TEXT NOT NULL, city TEXT NOT NULL,
               state TEXT NOT NULL, date_time TIMESTAMP NOT NULL,
               WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'pregenerated_person');
             CREATE STREAM auction (id BIGINT NOT NULL, seller BIGINT NOT NULL, category BIGINT NOT NULL,
               initial_bid BIGINT NOT NULL, date_time TIMESTAMP NOT NULL,
               WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
               WITH (connector = 'pregenerated_auction');
             CREATE SINK out WITH (connector = 'blackhole');"
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    session
        .execute(&format!("INSERT INTO out {sql}"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    session
        .await_all()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = started.elapsed().as_secs_f64();
    let batches = session
        .queries()
        .next()
        .map(|q| q.ctx.recent_batches().len())
        .unwrap_or(0);
    if batches == 0 {
        bail!("no batch ran");
    }
    Ok((
        events as f64 / secs,
        sink.rows.load(Ordering::Relaxed),
        batches,
    ))
}
