-- Nexmark q0. Passthrough: the cost of reading and writing.
-- nexmark-flink's queries/q0.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q0.sql
CREATE SINK nexmark_q0 WITH (connector = 'blackhole');
INSERT INTO nexmark_q0
SELECT auction, bidder, price, date_time, extra FROM bid;
