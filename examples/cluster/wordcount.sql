-- The word count with its batches on a cluster (README, "Running on a cluster"):
--   flumen --cluster df://127.0.0.1:50050 --trigger available-now -f examples/cluster/wordcount.sql
-- One million generated lines of two words; running counts, every batch's changes
-- written to Parquet files.
CREATE STREAM ticks WITH (connector = 'rate', rows_per_second = '200000', rows = '1000000');
CREATE STREAM lines AS
  SELECT concat('w', CAST(value % 1000 AS TEXT), ' v', CAST(value % 7 AS TEXT)) AS line FROM ticks;
CREATE STREAM words AS SELECT unnest(string_to_array(line, ' ')) AS word FROM lines;
CREATE SINK counts WITH (connector = 'files', path = '/tmp/flumen-cluster/wordcount', format = 'parquet') AS
  SELECT word, count(*) AS n FROM words GROUP BY word;
