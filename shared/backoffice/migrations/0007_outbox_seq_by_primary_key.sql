-- Rows leave the outbox once Kafka has acknowledged them (the relay deletes them; `sent_at` stays NULL), so the
-- partial index of 0002 on the unsent rows' `seq` holds exactly what the primary key holds: every event paid a
-- second entry in the same order. The relay's read (`ORDER BY seq LIMIT n` of the unsent rows of its lanes) and the
-- age of the oldest unsent row walk the primary key instead, and stop after their batch as before; rows an older
-- replica marked sent during a rolling upgrade are skipped by the filter until `purge_sent` deletes them.
DROP INDEX outbox_unsent_seq;
