-- ANALYZE keeps no statistics on the lines stored whole with invoices, credit notes and bills: they are read with
-- their document and never filtered, joined, grouped or sorted on. Their jsonb values were the costliest column of
-- each analysis of `invoices`, which autovacuum runs every minute or so under load (see shared/0006).
ALTER TABLE invoices ALTER COLUMN lines SET STATISTICS 0;
ALTER TABLE credit_notes ALTER COLUMN lines SET STATISTICS 0;
ALTER TABLE bills ALTER COLUMN lines SET STATISTICS 0;
