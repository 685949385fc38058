-- Nexmark q10. Log to file system: every bid written to files by day.
-- nexmark-flink's queries/q10.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q10.sql
-- ADAPTED: Flink's sink is PARTITIONED BY (dt, hm) and commits a partition (a _SUCCESS
-- file) when the watermark passes its time plus 1 min. Flumen's files sink partitions
-- the same way (partition_by = 'dt, hm': dt=<day>/hm=<HH:mm>/part-...) and commits each
-- batch's files in its _flumen_log; missing: partition commit by partition time. The
-- output columns are named (dt, hm): Flumen's INSERT matches the sink by name.
CREATE SINK nexmark_q10 WITH (connector = 'files', path = '/tmp/flumen-nexmark/q10', format = 'csv',
    partition_by = 'dt, hm');
INSERT INTO nexmark_q10
SELECT auction, bidder, price, date_time, extra, DATE_FORMAT(date_time, 'yyyy-MM-dd') AS dt, DATE_FORMAT(date_time, 'HH:mm') AS hm
FROM bid;
