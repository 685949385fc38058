-- Nexmark q4. Average price per category: the average of each auction's winning bid, per category
-- (an aggregate over an aggregate over a join: update mode).
-- nexmark-flink's queries/q4.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q4.sql
SET output_mode = 'update';
CREATE SINK nexmark_q4 WITH (connector = 'blackhole');
INSERT INTO nexmark_q4
SELECT
    Q.category,
    AVG(Q.final)
FROM (
    SELECT MAX(B.price) AS final, A.category
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.category
) Q
GROUP BY Q.category;
