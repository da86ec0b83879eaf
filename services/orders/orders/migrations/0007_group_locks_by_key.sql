-- From this migration, the group commit of 0006 locks its products through their primary key. It named them with
-- `sku IN (SELECT ...)` over the documents' lines, which the planner estimates at a hundred rows or more: a hash join
-- over a sequential scan of every product, for each group. The bench's 200 products were read whole 546 times in a
-- 15 s pipeline step; with 5,000 products, EXPLAIN still gives that plan. `sku = ANY (ARRAY(SELECT ...))` is an
-- index scan of the group's own products (once the table is more than a few pages), in sku order as before.
-- Nothing else changes.
CREATE OR REPLACE FUNCTION write_snapshots(p_kind text, p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[])
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
        WHERE sku = ANY (ARRAY(SELECT l->>'sku' FROM jsonb_array_elements(p_docs) d, jsonb_array_elements(d->'lines') l))
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
