-- Nexmark q17. Auction statistics report: bids and prices per auction per day.
-- nexmark-flink's queries/q17.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q17.sql
SET output_mode = 'update';
CREATE SINK nexmark_q17 WITH (connector = 'blackhole');
INSERT INTO nexmark_q17
SELECT
     auction,
     DATE_FORMAT(date_time, 'yyyy-MM-dd') as day,
     count(*) AS total_bids,
     count(*) filter (where price < 10000) AS rank1_bids,
     count(*) filter (where price >= 10000 and price < 1000000) AS rank2_bids,
     count(*) filter (where price >= 1000000) AS rank3_bids,
     min(price) AS min_price,
     max(price) AS max_price,
     avg(price) AS avg_price,
     sum(price) AS sum_price
FROM bid
GROUP BY auction, DATE_FORMAT(date_time, 'yyyy-MM-dd');
