-- Nexmark q13. Bounded side input join: each bid joined with a static table by MOD(auction, 10000).
-- nexmark-flink's queries/q13.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q13.sql
-- ADAPTED: Flink reads the side input from a file and joins it as a lookup table
-- (FOR SYSTEM_TIME AS OF B.p_time, with p_time = PROCTIME()). Flumen runs that form too
-- (a stream joined with a table reads it as it is when each batch runs: the same rows);
-- this file joins the table directly so that tests/sql/nexmark_standard.slt can check
-- it against a batch query (which has no PROCTIME()), and the table is generated
-- (10,000 keys) rather than read from side_input.txt.
CREATE SINK nexmark_q13 WITH (connector = 'blackhole');
CREATE TABLE side_input AS
  SELECT value AS key, 'side-' || CAST(value AS TEXT) AS value FROM range(0, 10000);
INSERT INTO nexmark_q13
SELECT
    B.auction,
    B.bidder,
    B.price,
    B.date_time,
    S.value
FROM bid B
JOIN side_input AS S
ON mod(B.auction, 10000) = S.key;
