-- Group commit of in-stock orders: the orders that arrive together are written in one transaction, one commit (one
-- WAL flush, one round trip) for all of them, each by `place_order_in_stock` (0005) in a savepoint of its own, so
-- that an order whose snapshot no longer holds (BOS01), that meets a deadlock, whose Idempotency-Key is held by
-- a request in flight, or that fails in any other way writes nothing and leaves the others as they are; the caller
-- then decides that order as it would have without the group (locking path, or the single statement).
--
-- place_orders_in_stock(p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[]):
--   p_docs is a JSON array of place_order_in_stock's documents; the i-th order's answer is p_bodies[i], and its
--   events' payloads are the next p_counts[i] elements of p_payloads.
-- Returns one row per order, in order: outcome ('placed', 'stored' with the answer stored under the key, 'stale',
-- 'deadlock', 'busy' or 'failed') and the stored answer's hash, status and body.
--
-- Before any order, the products of every order are locked in sku order (the order each single write and the
-- locking path lock them in), so two groups, or a group and any other writer, never wait for each other in a
-- cycle however their orders interleave the products. A group holds at most a few dozen savepoints: the caller
-- keeps it under the 64 subtransactions PostgreSQL tracks without overflowing.
CREATE FUNCTION place_orders_in_stock(p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[])
    RETURNS TABLE (outcome text, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    first integer := 1;
    written record;
BEGIN
    PERFORM 1 FROM products
        WHERE sku IN (SELECT l->>'sku' FROM jsonb_array_elements(p_docs) d, jsonb_array_elements(d->'lines') l)
        ORDER BY sku FOR NO KEY UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_counts, 1), 0) LOOP
        request_hash := NULL;
        status_code := NULL;
        body := NULL;
        BEGIN
            SELECT * INTO written
                FROM place_order_in_stock(p_docs->(i - 1), p_bodies[i], p_payloads[first : first + p_counts[i] - 1]);
            IF written.placed THEN
                outcome := 'placed';
            ELSE
                outcome := 'stored';
                request_hash := written.request_hash;
                status_code := written.status_code;
                body := written.body;
            END IF;
        EXCEPTION
            WHEN SQLSTATE 'BOS01' THEN outcome := 'stale';
            WHEN deadlock_detected THEN outcome := 'deadlock';
            WHEN lock_not_available THEN outcome := 'busy';
            WHEN OTHERS THEN outcome := 'failed';
        END;
        first := first + p_counts[i];
        RETURN NEXT;
    END LOOP;
END $$;
