-- Nexmark q7. Highest bid: the bids with the highest price of each 10 s window.
-- nexmark-flink's queries/q7.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q7.sql
SET output_mode = 'append';
CREATE SINK nexmark_q7 WITH (connector = 'blackhole');
INSERT INTO nexmark_q7
SELECT B.auction, B.price, B.bidder, B.date_time, B.extra
from bid B
JOIN (
  SELECT MAX(price) AS maxprice, window_end as date_time
  FROM TABLE(
          TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
  GROUP BY window_start, window_end
) B1
ON B.price = B1.maxprice
WHERE B.date_time BETWEEN B1.date_time  - INTERVAL '10' SECOND AND B1.date_time;
