-- A group of in-stock orders (write_snapshots of 0006/0007, kind 'place') is first tried as one set: each table is
-- written by one statement for the whole group, where the loop of 0006 runs the dozen statements of
-- `place_order_in_stock` once per order, each order in a savepoint of its own. The set is written only if every
-- order of it would be written by the loop: every Idempotency-Key of the group is free at once and new, and every
-- product has the price each order was priced with and free stock for all the group's orders together. Anything
-- else (a key in flight or stored, a price or stock that changed, any error) undoes the attempt, and the group is
-- written by the loop of 0007, order by order, with the outcome each order has on its own. The rows written are
-- the loop's, in the same order (orders, lines, outbox and history in the group's order).
--
-- Measured on the bench's HTTP closed loop (groups of about nine): 0.53 ms of PostgreSQL time per order in
-- write_snapshots, against 0.95 for the loop. A group of one costs more this way (1.68 ms against 1.29 for
-- `place_order_in_stock`), so a group of one, and a group of shipments, go through the loop as before.

-- Raises BOS02 unless it wrote the whole group of in-stock orders. It locks the group's products in sku order first,
-- as `_write_each` does (and does again when the attempt is undone).
CREATE FUNCTION _place_group(p_docs jsonb, p_bodies bytea[], p_payloads bytea[]) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    keys integer;
    written integer;
    skus text[] := ARRAY(SELECT DISTINCT l->>'sku' FROM jsonb_array_elements(p_docs) d, jsonb_array_elements(d->'lines') l);
BEGIN
    PERFORM 1 FROM products WHERE sku = ANY (skus) ORDER BY sku FOR NO KEY UPDATE;
    -- Every key once in the group, free (no request holding it, as `idempotency_store` would wait for) and new.
    SELECT count(*) INTO keys FROM jsonb_array_elements(p_docs) d WHERE d->>'key' IS NOT NULL;
    IF keys > 0 THEN
        IF (SELECT count(DISTINCT (d->>'principal', d->>'key')) FROM jsonb_array_elements(p_docs) d
            WHERE d->>'key' IS NOT NULL) <> keys
           OR NOT (SELECT bool_and(pg_try_advisory_xact_lock(hashtextextended((d->>'principal') || chr(31) || (d->>'key'), 0)))
                   FROM jsonb_array_elements(p_docs) d WHERE d->>'key' IS NOT NULL)
        THEN
            RAISE EXCEPTION 'a key of the group is used twice or held' USING ERRCODE = 'BOS02';
        END IF;
        INSERT INTO idempotency_keys (principal, key, request_hash, status_code, body)
            SELECT x.d->>'principal', x.d->>'key', x.d->>'request_hash', (x.d->>'status_code')::integer, p_bodies[x.i]
            FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS x(d, i)
            WHERE x.d->>'key' IS NOT NULL
            ORDER BY x.i
            ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS written = ROW_COUNT;
        IF written <> keys THEN
            RAISE EXCEPTION 'a key of the group holds a stored answer' USING ERRCODE = 'BOS02';
        END IF;
    END IF;

    -- Each product's reservation for the whole group, at the one price and currency every order read. The products
    -- are named by key too: the plan a session keeps stays an index scan as the catalogue grows.
    WITH need AS (
        SELECT l.sku, sum(l.reserved) AS reserved, min(l.price) AS price, max(l.price) AS highest,
               min(x.d->'order'->>'currency') AS currency, max(x.d->'order'->>'currency') AS other,
               max((x.d->>'now')::timestamptz) AS at
        FROM jsonb_array_elements(p_docs) AS x(d),
             jsonb_to_recordset(x.d->'lines') AS l(sku text, reserved integer, price bigint)
        GROUP BY l.sku
    )
    UPDATE products p SET reserved = p.reserved + need.reserved, updated_at = need.at
        FROM need
        WHERE p.sku = ANY (skus) AND p.sku = need.sku AND need.price = need.highest AND need.currency = need.other
          AND p.currency = need.currency AND p.unit_price_minor = need.price
          AND p.on_hand - p.reserved >= need.reserved;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written <> cardinality(skus) THEN
        RAISE EXCEPTION 'the stock or price of a product of the group changed' USING ERRCODE = 'BOS02';
    END IF;

    INSERT INTO orders (id, customer_id, currency, status, shipping_address, allow_backorder, total_minor, placed_at,
                        confirmed_at, updated_at)
        SELECT o.id, o.customer_id, o.currency, o.status, o.shipping_address, o.allow_backorder, o.total_minor,
               o.placed_at, o.confirmed_at, (x.d->>'now')::timestamptz
        FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS x(d, i),
             jsonb_to_record(x.d->'order') AS o(id uuid, customer_id text, currency text, status text,
                 shipping_address jsonb, allow_backorder boolean, total_minor bigint, placed_at timestamptz,
                 confirmed_at timestamptz)
        ORDER BY x.i;
    INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_minor, reserved)
        SELECT (x.d->'order'->>'id')::uuid, l.n - 1, l.sku, l.quantity, l.price, l.reserved
        FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS x(d, i),
             ROWS FROM (jsonb_to_recordset(x.d->'lines') AS (sku text, quantity integer, price bigint, reserved integer))
                 WITH ORDINALITY AS l(sku, quantity, price, reserved, n)
        ORDER BY x.i, l.n;
    -- The k-th event of the group (in order of its orders, then of each order's events) has payload p_payloads[k].
    WITH e AS (
        SELECT (x.d->'order'->>'id')::uuid AS order_id, e.id, e.lane, e.topic, e.key, e.headers, e.type, e.at,
               row_number() OVER (ORDER BY x.i, e.n) AS k
        FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS x(d, i),
             ROWS FROM (jsonb_to_recordset(x.d->'events') AS (id uuid, lane smallint, topic text, key text,
                 headers jsonb, type text, at timestamptz))
                 WITH ORDINALITY AS e(id, lane, topic, key, headers, type, at, n)
    ), sent AS (
        INSERT INTO outbox (event_id, lane, topic, key, headers, payload)
            SELECT e.id, e.lane, e.topic, e.key, e.headers, p_payloads[e.k] FROM e ORDER BY e.k
    )
    INSERT INTO order_events (event_id, order_id, type, occurred_at, data)
        SELECT e.id, e.order_id, e.type, e.at, convert_from(p_payloads[e.k], 'UTF8')::jsonb FROM e ORDER BY e.k;
END $$;

-- The order-by-order write of 0007, kept whole under another name; write_snapshots tries the set first.
ALTER FUNCTION write_snapshots(text, jsonb, bytea[], bytea[], integer[]) RENAME TO _write_each;

CREATE FUNCTION write_snapshots(p_kind text, p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[])
    RETURNS TABLE (outcome text, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    writes integer := coalesce(array_length(p_counts, 1), 0);
BEGIN
    IF p_kind = 'place' AND writes > 1 THEN
        BEGIN
            PERFORM _place_group(p_docs, p_bodies, p_payloads);
            RETURN QUERY SELECT 'written'::text, NULL::text, NULL::integer, NULL::bytea FROM generate_series(1, writes);
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- undone: written order by order below
        END;
    END IF;
    RETURN QUERY SELECT * FROM _write_each(p_kind, p_docs, p_bodies, p_payloads, p_counts);
END $$;
