-- The Nexmark streams as nexmark-flink declares them: one stream of every event (its
-- `datagen` table: event_type, and the event as a person, auction or bid struct) and
-- three views over it, as its ddl_views.sql. The same rows as ddl.sql's three streams;
-- either file goes before a query:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl_views.sql -f benchmarks/nexmark/q5.sql
-- Differences from Flink's DDL: columns in snake case (see ddl.sql); the views name
-- their columns (a struct field keeps its path as its name otherwise).
CREATE STREAM datagen (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'events', event_rate = '1000000', events = '10000000',
        max_records_per_batch = '1000000');
CREATE VIEW person AS
SELECT
    person.id AS id,
    person.name AS name,
    person.email_address AS email_address,
    person.credit_card AS credit_card,
    person.city AS city,
    person.state AS state,
    date_time,
    person.extra AS extra
FROM datagen WHERE event_type = 0;
CREATE VIEW auction AS
SELECT
    auction.id AS id,
    auction.item_name AS item_name,
    auction.description AS description,
    auction.initial_bid AS initial_bid,
    auction.reserve AS reserve,
    date_time,
    auction.expires AS expires,
    auction.seller AS seller,
    auction.category AS category,
    auction.extra AS extra
FROM datagen WHERE event_type = 1;
CREATE VIEW bid AS
SELECT
    bid.auction AS auction,
    bid.bidder AS bidder,
    bid.price AS price,
    bid.channel AS channel,
    bid.url AS url,
    date_time,
    bid.extra AS extra
FROM datagen WHERE event_type = 2;
