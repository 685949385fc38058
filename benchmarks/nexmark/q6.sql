-- Nexmark q6. Average selling price by seller: the average of each seller's last 10 winning bids.
-- nexmark-flink's queries/q6.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q6.sql
-- NOT SUPPORTED: Flumen refuses it, naming the reason: a window function other than
-- ROW_NUMBER() over a stream (AVG ... OVER (ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)).
SET output_mode = 'update';
CREATE SINK nexmark_q6 WITH (connector = 'blackhole');
INSERT INTO nexmark_q6
SELECT
    Q.seller,
    AVG(Q.price) OVER
        (PARTITION BY Q.seller ORDER BY Q.date_time ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY A.id, A.seller ORDER BY B.price DESC) AS rownum
    FROM (SELECT A.id, A.seller, B.price, B.date_time
        FROM auction AS A,
            bid AS B
        WHERE A.id = B.auction
            and B.date_time between A.date_time and A.expires)
    WHERE rownum <= 1
) AS Q;
