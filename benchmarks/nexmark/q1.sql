-- Nexmark q1. Currency conversion: bid prices from dollars to euros.
-- nexmark-flink's queries/q1.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q1.sql
CREATE SINK nexmark_q1 WITH (connector = 'blackhole');
INSERT INTO nexmark_q1
SELECT
    auction,
    bidder,
    0.908 * price as price, -- convert dollar to euro
    date_time,
    extra
FROM bid;
