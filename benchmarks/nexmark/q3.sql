-- Nexmark q3. Local item suggestion: the people in Oregon, Idaho or California who sell in category 10
-- (a regular join: both sides' rows are kept; SET state_ttl bounds them).
-- nexmark-flink's queries/q3.sql with the streams of ddl.sql (snake-case columns, no
-- backquotes), its blackhole table a Flumen sink:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q3.sql
CREATE SINK nexmark_q3 WITH (connector = 'blackhole');
INSERT INTO nexmark_q3
SELECT
    P.name, P.city, P.state, A.id
FROM
    auction AS A INNER JOIN person AS P on A.seller = P.id
WHERE
    A.category = 10 and (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA');
