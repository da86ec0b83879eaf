-- How balance queries scale: 1,000,000 journal lines (500,000 two-line entries over 3 years, 2 currencies),
-- loaded through the real schema (every trigger and constraint on); then run report_queries.sql.
-- Run against a scratch database that has the ledger migrations applied:
--   psql "$DSN" -f services/ledger/bench/million_lines.sql && psql "$DSN" -f services/ledger/bench/report_queries.sql
\timing on
\set ON_ERROR_STOP on

DO $$
DECLARE batch integer;
BEGIN
    FOR batch IN 0..9 LOOP
        WITH e AS (
            INSERT INTO journal_entries (id, currency, source_type, effective_at, line_count, total_minor)
            SELECT gen_random_uuid(), CASE WHEN g % 5 = 0 THEN 'USD' ELSE 'EUR' END, 'bench',
                   timestamptz '2023-01-01 00:00Z' + g * interval '189 seconds', 2, 100 + g % 997
              FROM generate_series(batch * 50000 + 1, (batch + 1) * 50000) g
            RETURNING id, currency, effective_at, total_minor, seq
        )
        INSERT INTO journal_lines (entry_id, line_no, account, currency, effective_at, debit_minor, credit_minor, party)
        SELECT id, 1, CASE WHEN seq % 10 < 5 THEN '1100' WHEN seq % 10 < 8 THEN '6000' ELSE '1000' END,
               currency, effective_at, total_minor, 0,
               CASE WHEN seq % 10 < 5 THEN 'cust-' || seq % 5000 END
          FROM e
        UNION ALL
        SELECT id, 2, CASE WHEN seq % 10 < 5 THEN '4000' WHEN seq % 10 < 8 THEN '2000' ELSE '1100' END,
               currency, effective_at, 0, total_minor,
               CASE WHEN seq % 10 < 5 THEN NULL WHEN seq % 10 < 8 THEN 'vend-' || seq % 300 ELSE 'cust-' || seq % 5000 END
          FROM e;
        COMMIT;
    END LOOP;
END $$;

VACUUM ANALYZE journal_entries;
VACUUM ANALYZE journal_lines;
SELECT count(*) AS lines, count(*) FILTER (WHERE account = '1100') AS receivable_lines FROM journal_lines;

