-- Nexmark q2. Selection: the bids on a set of auctions.
-- nexmark-flink's queries/q2.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q2.sql
CREATE SINK nexmark_q2 WITH (connector = 'blackhole');
INSERT INTO nexmark_q2
SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0;
