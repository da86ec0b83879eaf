-- EXPLAIN ANALYZE of the ledger's report queries, as store.py issues them (after million_lines.sql).
\timing on

-- Reconciliation: receivable, credit and payable balances per party.
EXPLAIN (ANALYZE, BUFFERS)
SELECT account, party, currency, sum(debit_minor)::bigint AS d, sum(credit_minor)::bigint AS c
  FROM journal_lines WHERE account = ANY('{1100,2000,2300}'::text[]) GROUP BY account, party, currency;

-- An account balance as of a time: the hottest account (1100, 60% of all lines), EUR, as of the middle.
EXPLAIN (ANALYZE, BUFFERS)
SELECT coalesce(sum(debit_minor), 0)::bigint, coalesce(sum(credit_minor), 0)::bigint
  FROM journal_lines WHERE account = '1100' AND currency = 'EUR' AND effective_at <= '2024-06-30T00:00Z';

-- A quiet account (1000, 10% of lines), as of now.
EXPLAIN (ANALYZE, BUFFERS)
SELECT coalesce(sum(debit_minor), 0)::bigint, coalesce(sum(credit_minor), 0)::bigint
  FROM journal_lines WHERE account = '1000' AND currency = 'EUR' AND effective_at <= now();

-- The trial balance: one index-only range scan per account.
EXPLAIN (ANALYZE, BUFFERS)
SELECT a.code, a.name, a.type, t.d, t.c FROM accounts a CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(l.debit_minor), 0)::bigint AS d, coalesce(sum(l.credit_minor), 0)::bigint AS c
      FROM journal_lines l WHERE l.account = a.code AND l.currency = 'EUR' AND l.effective_at <= now()) t
 WHERE t.n > 0 ORDER BY a.code;

-- The running balance before a general-ledger page (the same range scan as a balance).
EXPLAIN (ANALYZE, BUFFERS)
SELECT coalesce(sum(debit_minor), 0)::bigint, coalesce(sum(credit_minor), 0)::bigint
  FROM journal_lines WHERE account = '1100' AND currency = 'EUR' AND (effective_at, id) < ('2024-06-30T00:00Z', 0);

-- A general-ledger page deep inside the hottest account (keyset).
EXPLAIN (ANALYZE, BUFFERS)
SELECT l.id, l.entry_id, l.currency, l.effective_at, e.posted_at, e.source_type, e.memo, l.debit_minor, l.credit_minor,
       l.party
  FROM journal_lines l JOIN journal_entries e ON e.id = l.entry_id
 WHERE l.account = '1100' AND l.currency = 'EUR' AND l.effective_at <= now()
   AND (l.effective_at, l.id) > ('2024-06-30T00:00Z', 0)
 ORDER BY l.currency, l.effective_at, l.id LIMIT 51;
