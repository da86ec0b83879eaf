-- ANALYZE keeps no statistics on the shared tables' payloads: no statement filters, joins, groups or sorts on them,
-- so the planner never reads what it gathered, and gathering it was most of each analysis of these tables (the
-- headers' jsonb values are sorted to find the most common ones and a histogram). Autovacuum analyses a table each
-- time a tenth of it has changed, so a busy outbox is analysed every minute or so: in the bench's pipeline at about
-- 100 orders/s, the orders database's analyses took 0.8-1.6 s of CPU within 2 s, every one of its outbox's
-- analyses 0.2-0.6 s, and the end-to-end p99 of the orders in flight rose with them (see 0010 of orders).
ALTER TABLE outbox ALTER COLUMN headers SET STATISTICS 0, ALTER COLUMN payload SET STATISTICS 0;
ALTER TABLE idempotency_keys ALTER COLUMN body SET STATISTICS 0;
