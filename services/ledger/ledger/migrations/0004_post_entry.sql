-- Posting an entry in one round trip: the entry, its lines and the event announcing it (outbox), then the deferred
-- balance check fired at once, so that a broken entry fails on this call (inside the caller's savepoint) rather than
-- at commit. Returns false, writing nothing, when the source event was posted already (unique source_event_id).
CREATE FUNCTION post_entry(
    p_id uuid, p_currency text, p_memo text, p_source_type text, p_source_event_id uuid, p_reverses_entry_id uuid,
    p_effective_at timestamptz, p_posted_at timestamptz, p_line_count integer, p_total_minor bigint,
    p_line_nos integer[], p_accounts text[], p_debits bigint[], p_credits bigint[], p_parties text[],
    p_event_id uuid, p_lane smallint, p_topic text, p_key text, p_headers text, p_payload bytea
) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO journal_entries (id, currency, memo, source_type, source_event_id, reverses_entry_id, effective_at,
                                 posted_at, line_count, total_minor)
        VALUES (p_id, p_currency, p_memo, p_source_type, p_source_event_id, p_reverses_entry_id, p_effective_at,
                p_posted_at, p_line_count, p_total_minor)
        ON CONFLICT (source_event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO journal_lines (entry_id, line_no, account, currency, effective_at, debit_minor, credit_minor, party)
        SELECT p_id, l.no, l.account, p_currency, p_effective_at, l.debit, l.credit, l.party
        FROM unnest(p_line_nos, p_accounts, p_debits, p_credits, p_parties) AS l(no, account, debit, credit, party);
    INSERT INTO outbox (event_id, lane, topic, key, headers, payload)
        VALUES (p_event_id, p_lane, p_topic, p_key, p_headers::jsonb, p_payload);
    SET CONSTRAINTS journal_entries_balance IMMEDIATE;
    SET CONSTRAINTS journal_entries_balance DEFERRED;
    RETURN true;
END $$;
