-- Group commit of the one-statement writes of 0005: the in-stock orders (or the shipments) that arrive together are
-- written in one transaction (one commit: one WAL flush, one round trip), each by its single function
-- (`place_order_in_stock` or `ship_order_from_snapshot`) in a savepoint of its own. A write whose snapshot no longer
-- holds (BOS01), that meets a deadlock, whose Idempotency-Key is held by a request in flight, or that fails in any
-- other way writes nothing and leaves the others as they are; the caller then decides it as without a group.
--
-- write_snapshots(p_kind text, p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[]):
--   p_kind is 'place' or 'ship'; p_docs is a JSON array of the single function's documents; the i-th write's answer
--   is p_bodies[i], and its events' payloads are the next p_counts[i] elements of p_payloads.
-- Returns one row per write, in order: outcome ('written', 'stored' with the answer stored under the key, 'stale',
-- 'deadlock', 'busy' or 'failed') and the stored answer's hash, status and body.
--
-- Before any write, the products of every document of the group are locked in sku order, as each single write and
-- the locking path lock them: two groups, or a group and another writer, never wait for each other in a cycle on
-- products. A shipment then locks its order; should two writers meet on orders in a cycle, the one PostgreSQL breaks
-- off gets outcome 'deadlock' and is decided by the locking path. A group holds at most a few dozen savepoints: the
-- caller keeps it under the 64 subtransactions PostgreSQL tracks without overflowing.
CREATE FUNCTION write_snapshots(p_kind text, p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[])
    RETURNS TABLE (outcome text, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    first integer := 1;
    done boolean;
    doc jsonb;
    payloads bytea[];
BEGIN
    IF p_kind NOT IN ('place', 'ship') THEN
        RAISE EXCEPTION 'unknown kind of snapshot write: %', p_kind;
    END IF;
    PERFORM 1 FROM products
        WHERE sku IN (SELECT l->>'sku' FROM jsonb_array_elements(p_docs) d, jsonb_array_elements(d->'lines') l)
        ORDER BY sku FOR NO KEY UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_counts, 1), 0) LOOP
        request_hash := NULL;
        status_code := NULL;
        body := NULL;
        doc := p_docs->(i - 1);
        payloads := p_payloads[first : first + p_counts[i] - 1];
        BEGIN
            IF p_kind = 'place' THEN
                SELECT w.placed, w.request_hash, w.status_code, w.body INTO done, request_hash, status_code, body
                    FROM place_order_in_stock(doc, p_bodies[i], payloads) AS w;
            ELSE
                SELECT w.shipped, w.request_hash, w.status_code, w.body INTO done, request_hash, status_code, body
                    FROM ship_order_from_snapshot(doc, p_bodies[i], payloads) AS w;
            END IF;
            outcome := CASE WHEN done THEN 'written' ELSE 'stored' END;
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
