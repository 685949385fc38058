-- Nexmark q5 (hot items) with its batches on a cluster (README, "Running on a cluster"):
--   flumen --cluster df://127.0.0.1:50050 --trigger available-now -f examples/cluster/q5.sql
-- The auctions with the most bids in each 10 s window sliding every 2 s, over 1,000,000
-- generated events, written to Parquet files as each window closes.
CREATE STREAM bid (auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
    channel TEXT NOT NULL, url TEXT NOT NULL, date_time TIMESTAMP NOT NULL, extra TEXT NOT NULL,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'bid', event_rate = '100000', events = '1000000');
CREATE STREAM counts AS
  SELECT auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND) AS w, count(*) AS num
  FROM bid GROUP BY auction, window(date_time, INTERVAL '10' SECOND, INTERVAL '2' SECOND);
CREATE SINK q5 WITH (connector = 'files', path = '/tmp/flumen-cluster/q5', format = 'parquet') AS
  SELECT c.auction, c.w['start'] AS window_start, c.num
  FROM counts c
  JOIN (SELECT w, max(num) AS maxn FROM counts GROUP BY w) m
    ON c.w = m.w AND c.num >= m.maxn;
