-- Nexmark q14. Calculation: bids filtered by price, classified by the hour of day.
-- nexmark-flink's queries/q14.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q14.sql
-- ADAPTED: count_char is nexmark-flink's Java UDF (CREATE FUNCTION count_char AS
-- 'com.github.nexmark.flink.udf.CountChar'); defined here in SQL, counting the same
-- characters, and called as Flink's text calls it.
CREATE FUNCTION count_char(s TEXT, c TEXT) RETURNS BIGINT
    RETURN length(s) - length(replace(s, c, ''));
CREATE SINK nexmark_q14 WITH (connector = 'blackhole');
INSERT INTO nexmark_q14
SELECT
    auction,
    bidder,
    0.908 * price as price,
    CASE
        WHEN HOUR(date_time) >= 8 AND HOUR(date_time) <= 18 THEN 'dayTime'
        WHEN HOUR(date_time) <= 6 OR HOUR(date_time) >= 20 THEN 'nightTime'
        ELSE 'otherTime'
    END AS bidTimeType,
    date_time,
    extra,
    count_char(extra, 'c') AS c_counts
FROM bid
WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000;
