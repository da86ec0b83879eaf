-- The relay reads unsent rows in `seq` order for the lanes it holds. Indexed by (lane, seq), that read sorted every
-- unsent row of those lanes to return the first batch (slow under a backlog); indexed by seq, it stops after a batch.
CREATE INDEX outbox_unsent_seq ON outbox (seq) WHERE sent_at IS NULL;
DROP INDEX outbox_unsent;
