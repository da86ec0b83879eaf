-- ANALYZE keeps no statistics on a timeline item's subject and summary: they are shown, never filtered, joined,
-- grouped or sorted on, and they were the costliest columns of each analysis of `timeline_items`, which autovacuum
-- runs every minute or so under load (see shared/0006).
ALTER TABLE timeline_items ALTER COLUMN subject SET STATISTICS 0, ALTER COLUMN summary SET STATISTICS 0;
