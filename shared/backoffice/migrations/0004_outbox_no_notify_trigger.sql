-- Writers no longer NOTIFY inside their transactions: PostgreSQL serialises the commits of notifying transactions
-- (one database-wide lock held through the WAL flush), which capped every writing endpoint at one commit per fsync.
-- The relay is woken by the writer's process after its commit instead (see backoffice.outbox).
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
