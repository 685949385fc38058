-- Nexmark q12. Processing-time windows: bids per bidder per 10 s of processing time.
-- nexmark-flink's queries/q12.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q12.sql
-- PROCTIME() is the time of the micro-batch a row arrives in (_batch_time): the windows
-- are over batch time, closed as the batches pass their end.
SET output_mode = 'append';
CREATE SINK nexmark_q12 WITH (connector = 'blackhole');
CREATE VIEW B AS SELECT *, PROCTIME() as p_time FROM bid;
INSERT INTO nexmark_q12
SELECT
    bidder,
    count(*) as bid_count,
    window_start AS starttime,
    window_end AS endtime
FROM TABLE(
        TUMBLE(TABLE B, DESCRIPTOR(p_time), INTERVAL '10' SECOND))
GROUP BY bidder, window_start, window_end;
