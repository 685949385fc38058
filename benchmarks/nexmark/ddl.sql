-- The Nexmark streams, as nexmark-flink's ddl_gen.sql and ddl_views.sql declare them:
-- the standard schema and generator (connector 'nexmark'), the watermark 4 s behind the
-- newest event. Run a query with it:
--   flumen --trigger available-now -f benchmarks/nexmark/ddl.sql -f benchmarks/nexmark/q3.sql
-- 10,000,000 events at 1,000,000 events per second of event time (Flink's suite runs
-- 100,000,000 at 10,000,000 a second: the same 10 s of event time), at most 1,000,000
-- events a batch.
--
-- Differences from Flink's DDL: one stream per table instead of one `datagen` table of
-- nested rows split by three views; columns in snake case (RisingWave's and Arroyo's
-- names): dateTime -> date_time, emailAddress -> email_address, creditCard ->
-- credit_card, itemName -> item_name, initialBid -> initial_bid.
CREATE STREAM person (id BIGINT NOT NULL, name TEXT NOT NULL, email_address TEXT NOT NULL,
    credit_card TEXT NOT NULL, city TEXT NOT NULL, state TEXT NOT NULL,
    date_time TIMESTAMP NOT NULL, extra TEXT NOT NULL,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'person', event_rate = '1000000', events = '10000000',
        max_records_per_batch = '1000000');
CREATE STREAM auction (id BIGINT NOT NULL, item_name TEXT NOT NULL, description TEXT NOT NULL,
    initial_bid BIGINT NOT NULL, reserve BIGINT NOT NULL, date_time TIMESTAMP NOT NULL,
    expires TIMESTAMP NOT NULL, seller BIGINT NOT NULL, category BIGINT NOT NULL,
    extra TEXT NOT NULL,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'auction', event_rate = '1000000', events = '10000000',
        max_records_per_batch = '1000000');
CREATE STREAM bid (auction BIGINT NOT NULL, bidder BIGINT NOT NULL, price BIGINT NOT NULL,
    channel TEXT NOT NULL, url TEXT NOT NULL, date_time TIMESTAMP NOT NULL, extra TEXT NOT NULL,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (connector = 'nexmark', table = 'bid', event_rate = '1000000', events = '10000000',
        max_records_per_batch = '1000000');
