-- Nexmark q19. Auction top-10 price: the 10 highest bids of each auction.
-- nexmark-flink's queries/q19.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q19.sql
SET output_mode = 'update';
CREATE SINK nexmark_q19 WITH (connector = 'blackhole');
INSERT INTO nexmark_q19
SELECT * FROM
(SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number FROM bid)
WHERE rank_number <= 10;
