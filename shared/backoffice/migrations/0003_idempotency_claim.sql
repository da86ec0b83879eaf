-- One round trip for the common case of an Idempotency-Key: try the (caller, key) lock, and once held, look up the
-- stored response. A VOLATILE function reads with a snapshot taken after the lock, so a first request that committed
-- just before is seen. `locked` false: the key is in use by a request still in flight (the caller then waits).
CREATE FUNCTION idempotency_claim(p_principal text, p_key text)
    RETURNS TABLE (locked boolean, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(p_principal || chr(31) || p_key, 0)) THEN
        RETURN QUERY SELECT false, NULL::text, NULL::integer, NULL::bytea;
        RETURN;
    END IF;
    RETURN QUERY
        SELECT true, k.request_hash, k.status_code, k.body FROM (SELECT 1) AS one
        LEFT JOIN idempotency_keys k ON k.principal = p_principal AND k.key = p_key;
END $$;
