-- Nexmark q10. Log to file system: every bid written to files by day.
-- nexmark-flink's queries/q10.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q10.sql
-- ADAPTED: Flink's sink is PARTITIONED BY (dt, hm) and commits a partition (a _SUCCESS
-- file) when the watermark passes its time plus 1 min. Flumen's files sink does the same
-- with its options: partition_by = 'dt, hm' (dt=<day>/hm=<HH:mm>/part-...), and
-- partition_commit_trigger / partition_commit_delay / partition_time_pattern for Flink's
-- sink.partition-commit.trigger / .delay and partition.time-extractor.timestamp-pattern
-- (the watermark: bid's declared one, date_time - 4 s). Flink's rolling policy is not
-- needed: each batch writes its own files. The output columns are named (dt, hm):
-- Flumen's INSERT matches the sink by name.
CREATE SINK nexmark_q10 WITH (connector = 'files', path = '/tmp/flumen-nexmark/q10', format = 'csv',
    partition_by = 'dt, hm', partition_commit_trigger = 'partition-time',
    partition_commit_delay = '1 min', partition_time_pattern = '$dt $hm:00');
INSERT INTO nexmark_q10
SELECT auction, bidder, price, date_time, extra, DATE_FORMAT(date_time, 'yyyy-MM-dd') AS dt, DATE_FORMAT(date_time, 'HH:mm') AS hm
FROM bid;
