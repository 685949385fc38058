-- Nexmark q20. Expand bid with auction: bids on auctions of category 10, with the auction's columns
-- (a regular join).
-- nexmark-flink's queries/q20.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q20.sql
-- ADAPTED: the two date_time and extra columns are aliased (Flink names the output by the
-- sink's columns; Flumen's output columns must have distinct names).
CREATE SINK nexmark_q20 WITH (connector = 'blackhole');
INSERT INTO nexmark_q20
SELECT
    auction, bidder, price, channel, url, B.date_time AS bid_date_time, B.extra AS bid_extra,
    item_name, description, initial_bid, reserve, A.date_time AS auction_date_time, expires, seller, category, A.extra AS auction_extra
FROM
    bid AS B INNER JOIN auction AS A on B.auction = A.id
WHERE A.category = 10;
