-- For a write done in one statement: take the (caller, key) lock that `idempotency_claim` takes (a request with this
-- key still in flight is waited for, up to p_wait_ms, then lock_not_available), then store this response under the
-- key. Returns the response already stored under the key instead, when there is one (and then stores nothing).
CREATE FUNCTION idempotency_store(
    p_principal text, p_key text, p_request_hash text, p_status_code integer, p_body bytea, p_wait_ms integer
) RETURNS idempotency_keys
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    stored idempotency_keys;
BEGIN
    PERFORM set_config('lock_timeout', p_wait_ms::text || 'ms', true);
    PERFORM pg_advisory_xact_lock(hashtextextended(p_principal || chr(31) || p_key, 0));
    PERFORM set_config('lock_timeout', '0', true);
    INSERT INTO idempotency_keys (principal, key, request_hash, status_code, body)
        VALUES (p_principal, p_key, p_request_hash, p_status_code, p_body)
        ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO stored FROM idempotency_keys k WHERE k.principal = p_principal AND k.key = p_key;
    RETURN stored;
END $$;
