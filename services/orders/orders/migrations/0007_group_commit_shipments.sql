-- Group commit of shipments as of in-stock orders (0006): `write_snapshots(p_kind, ...)` writes a group of either,
-- p_kind 'place' (each by place_order_in_stock) or 'ship' (each by ship_order_from_snapshot), with the arguments
-- and the outcomes of 0006's place_orders_in_stock, which now calls it (kept for instances of the previous
-- release during a rolling upgrade).
--
-- Before any write, the products of every document of the group are locked in sku order, as each single write
-- and the locking path lock them: two groups, or a group and another writer, never wait for each other in a cycle
-- on products. A shipment then locks its order; should two writers meet on orders in a cycle, the one PostgreSQL
-- breaks off gets outcome 'deadlock' and is decided by the locking path.
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

CREATE OR REPLACE FUNCTION place_orders_in_stock(p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[])
    RETURNS TABLE (outcome text, request_hash text, status_code integer, body bytea)
    LANGUAGE sql VOLATILE AS $$
    SELECT CASE w.outcome WHEN 'written' THEN 'placed' ELSE w.outcome END, w.request_hash, w.status_code, w.body
        FROM write_snapshots('place', p_docs, p_bodies, p_payloads, p_counts) AS w;
$$;
