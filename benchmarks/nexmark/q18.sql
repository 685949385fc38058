-- Nexmark q18. Find last bid: each bidder's last bid on each auction (top-1 per key).
-- nexmark-flink's queries/q18.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q18.sql
SET output_mode = 'update';
CREATE SINK nexmark_q18 WITH (connector = 'blackhole');
INSERT INTO nexmark_q18
SELECT auction, bidder, price, channel, url, date_time, extra
 FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number
       FROM bid)
 WHERE rank_number <= 1;
