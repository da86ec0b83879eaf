-- ANALYZE keeps no statistics on the documents stored whole: the events' data, the lines of shipments and returns,
-- the shipping address. They are read with their order and never filtered, joined, grouped or sorted on, so the
-- planner never reads what it gathered; the events' data alone was most of the cost of analysing `order_events`
-- (64 of 68 ms, its jsonb values sorted for their most common values and a histogram). See shared/0006 for why it
-- matters: autovacuum analyses these tables every minute or so under load, in bursts that the tail latency shows.
ALTER TABLE order_events ALTER COLUMN data SET STATISTICS 0;
ALTER TABLE shipments ALTER COLUMN lines SET STATISTICS 0;
ALTER TABLE returns ALTER COLUMN lines SET STATISTICS 0;
ALTER TABLE orders ALTER COLUMN shipping_address SET STATISTICS 0;
