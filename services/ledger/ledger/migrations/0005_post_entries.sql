-- Posting a run of entries in one round trip: what `post_entry` (0004) does for one, in three statements for any
-- number. The ledger's consumer takes each poll's billing events in one transaction; one call per entry cost a
-- round trip, twenty-one parameters and a function call each.
--
-- post_entries(p jsonb, p_payloads bytea[]): p is a JSON array of entries, in order:
--   {"id", "currency", "memo", "source_type", "source_event_id", "reverses_entry_id", "effective_at", "posted_at",
--    "total_minor", "lines": [{"account", "debit", "credit", "party"}], "event": EVENT}
-- EVENT: the outbox row of its `JournalEntryPosted` ({"id", "lane", "topic", "key", "headers"}), whose payload is
-- p_payloads[i] for the i-th entry. Lines are numbered from 1 in the order given.
-- Returns the ids of the entries posted: an entry whose source event was posted already (before, or earlier in the
-- run) writes nothing, and is not announced. The deferred balance check of every entry posted is fired before the
-- call returns, so an entry that does not balance fails the call (and the caller's savepoint), not the commit.
-- `post_entry` stays for instances of the previous release during a rolling upgrade.
CREATE FUNCTION post_entries(p jsonb, p_payloads bytea[]) RETURNS uuid[]
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    posted uuid[];
BEGIN
    WITH inserted AS (
        INSERT INTO journal_entries (id, currency, memo, source_type, source_event_id, reverses_entry_id,
                                     effective_at, posted_at, line_count, total_minor)
            SELECT e.id, e.currency, e.memo, e.source_type, e.source_event_id, e.reverses_entry_id, e.effective_at,
                   e.posted_at, jsonb_array_length(e.lines), e.total_minor
            FROM ROWS FROM (jsonb_to_recordset(p) AS (id uuid, currency text, memo text, source_type text,
                     source_event_id uuid, reverses_entry_id uuid, effective_at timestamptz, posted_at timestamptz,
                     total_minor bigint, lines jsonb)) WITH ORDINALITY
                AS e(id, currency, memo, source_type, source_event_id, reverses_entry_id, effective_at, posted_at,
                     total_minor, lines, n)
            ORDER BY e.n
            ON CONFLICT (source_event_id) DO NOTHING
            RETURNING id
    )
    SELECT coalesce(array_agg(id), '{}') INTO posted FROM inserted;
    IF cardinality(posted) = 0 THEN
        RETURN posted;
    END IF;
    INSERT INTO journal_lines (entry_id, line_no, account, currency, effective_at, debit_minor, credit_minor, party)
        SELECT e.id, l.no, l.account, e.currency, e.effective_at, l.debit, l.credit, l.party
        FROM ROWS FROM (jsonb_to_recordset(p) AS (id uuid, currency text, effective_at timestamptz, lines jsonb))
                 WITH ORDINALITY AS e(id, currency, effective_at, lines, n),
             ROWS FROM (jsonb_to_recordset(e.lines) AS (account text, debit bigint, credit bigint, party text))
                 WITH ORDINALITY AS l(account, debit, credit, party, no)
        WHERE e.id = ANY(posted)
        ORDER BY e.n, l.no;
    INSERT INTO outbox (event_id, lane, topic, key, headers, payload)
        SELECT v.id, v.lane, v.topic, v.key, v.headers, p_payloads[e.n]
        FROM ROWS FROM (jsonb_to_recordset(p) AS (id uuid, event jsonb)) WITH ORDINALITY AS e(id, event, n),
             jsonb_to_record(e.event) AS v(id uuid, lane smallint, topic text, key text, headers jsonb)
        WHERE e.id = ANY(posted)
        ORDER BY e.n;
    SET CONSTRAINTS journal_entries_balance IMMEDIATE;
    SET CONSTRAINTS journal_entries_balance DEFERRED;
    RETURN posted;
END $$;
