-- A group's products are locked once, by the statement that writes the group, and no longer again inside it.
--
-- Until now a pair of groups written together (0012) locked the products of both, then each group's set write
-- (`_place_group`, `_ship_group`) locked its own again, inside the savepoint that lets a refused set fall back to
-- the write-by-write loop: three locking scans a transaction where one does. Rows this transaction already holds
-- cost no new lock, but each statement still read the products, sorted them and checked every row's lock. `perf`
-- of the orders database's backends in the bench's pipeline at 400 orders/s put 8.1 % of their samples in those
-- statements' scans and sorts of the products (3.5 % with this migration).
--
-- Now `_lock_products` locks the distinct products of the documents, in sku order as every writer of stock does,
-- before the savepoint: the lock holds whether the set write is kept or undone, so the loop that writes a refused
-- set write by write finds them locked too (it still takes its own, which then costs a read and no new lock).
-- `write_snapshots` (a group of one kind) and `write_snapshot_groups` (a pair) each lock once and then write
-- through `_write_group`; the set writes no longer lock. Their bodies are those of 0008 and 0011 otherwise, save
-- that what both repeated (claiming the keys, appending the events) is now one function each.

CREATE FUNCTION _lock_products(p_docs jsonb) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM products
        WHERE sku = ANY (ARRAY(SELECT DISTINCT l->>'sku' FROM jsonb_array_elements(p_docs) d,
                                                              jsonb_array_elements(d->'lines') l))
        ORDER BY sku FOR NO KEY UPDATE;
END $$;

-- A group of one kind, its products locked by the caller: as one set when it can be, else write by write.
CREATE FUNCTION _write_group(p_kind text, p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[])
    RETURNS TABLE (outcome text, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    writes integer := coalesce(array_length(p_counts, 1), 0);
BEGIN
    IF p_kind IN ('place', 'ship') AND writes > 1 THEN
        BEGIN
            IF p_kind = 'place' THEN
                PERFORM _place_group(p_docs, p_bodies, p_payloads);
            ELSE
                PERFORM _ship_group(p_docs, p_bodies, p_payloads);
            END IF;
            RETURN QUERY SELECT 'written'::text, NULL::text, NULL::integer, NULL::bytea FROM generate_series(1, writes);
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- undone: written write by write below (the products stay locked: the lock is not the savepoint's)
        END;
    END IF;
    RETURN QUERY SELECT * FROM _write_each(p_kind, p_docs, p_bodies, p_payloads, p_counts);
END $$;

CREATE OR REPLACE FUNCTION write_snapshots(p_kind text, p_docs jsonb, p_bodies bytea[], p_payloads bytea[], p_counts integer[])
    RETURNS TABLE (outcome text, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM _lock_products(p_docs);
    RETURN QUERY SELECT * FROM _write_group(p_kind, p_docs, p_bodies, p_payloads, p_counts);
END $$;

-- The products of both groups are locked in one statement, all in sku order: locked group by group, a product of
-- the second group could come before one the first group already holds.
CREATE OR REPLACE FUNCTION write_snapshot_groups(
    p_kind_a text, p_docs_a jsonb, p_bodies_a bytea[], p_payloads_a bytea[], p_counts_a integer[],
    p_kind_b text, p_docs_b jsonb, p_bodies_b bytea[], p_payloads_b bytea[], p_counts_b integer[]
)
    RETURNS TABLE (outcome text, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM _lock_products(p_docs_a || p_docs_b);
    RETURN QUERY SELECT * FROM _write_group(p_kind_a, p_docs_a, p_bodies_a, p_payloads_a, p_counts_a);
    RETURN QUERY SELECT * FROM _write_group(p_kind_b, p_docs_b, p_bodies_b, p_payloads_b, p_counts_b);
END $$;

-- What both set writes did alike is one function each: claiming the group's Idempotency-Keys, appending its events.

-- Every key once in the group, free (no request holding it, as `idempotency_store` would wait for) and new, then
-- stored with its answer; BOS02 otherwise.
CREATE FUNCTION _claim_group_keys(p_docs jsonb, p_bodies bytea[]) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    keys integer;
    written integer;
BEGIN
    SELECT count(*) INTO keys FROM jsonb_array_elements(p_docs) d WHERE d->>'key' IS NOT NULL;
    IF keys = 0 THEN
        RETURN;
    END IF;
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
END $$;

-- The group's events, in its outbox and in their orders' history: the k-th event of the group (in order of its
-- writes, then of each write's events) has payload p_payloads[k]; the events of the i-th write are those of order
-- p_order_ids[i].
CREATE FUNCTION _append_group_events(p_docs jsonb, p_order_ids uuid[], p_payloads bytea[]) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    WITH e AS (
        SELECT p_order_ids[x.i] AS order_id, e.id, e.lane, e.topic, e.key, e.headers, e.type, e.at,
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

-- The set writes of 0008 and 0011, without their own lock of the products, through the two functions above.
CREATE OR REPLACE FUNCTION _place_group(p_docs jsonb, p_bodies bytea[], p_payloads bytea[]) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    written integer;
    skus text[] := ARRAY(SELECT DISTINCT l->>'sku' FROM jsonb_array_elements(p_docs) d, jsonb_array_elements(d->'lines') l);
BEGIN
    PERFORM _claim_group_keys(p_docs, p_bodies);

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
    PERFORM _append_group_events(p_docs, ARRAY(SELECT (x.d->'order'->>'id')::uuid
                                                FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS x(d, i)
                                                ORDER BY x.i), p_payloads);
END $$;

CREATE OR REPLACE FUNCTION _ship_group(p_docs jsonb, p_bodies bytea[], p_payloads bytea[]) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    written integer;
    skus text[] := ARRAY(SELECT DISTINCT l->>'sku' FROM jsonb_array_elements(p_docs) d, jsonb_array_elements(d->'lines') l);
    ids uuid[] := ARRAY(SELECT (x.d->>'order_id')::uuid FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS x(d, i)
                        ORDER BY x.i);
BEGIN
    PERFORM _claim_group_keys(p_docs, p_bodies);

    -- Each product's stock for the whole group: what the group ships leaves the shelf and its reservation. Taken one
    -- shipment after another, as the loop does, each would find enough exactly when the sums do.
    WITH need AS (
        SELECT m.sku, sum(m.quantity) AS quantity, max((x.d->>'now')::timestamptz) AS at
        FROM jsonb_array_elements(p_docs) AS x(d),
             jsonb_to_recordset(x.d->'lines') AS m(sku text, quantity integer)
        GROUP BY m.sku
    )
    UPDATE products p SET on_hand = p.on_hand - need.quantity, reserved = p.reserved - need.quantity,
                          updated_at = need.at
        FROM need
        WHERE p.sku = ANY (skus) AND p.sku = need.sku AND p.reserved >= need.quantity AND p.on_hand >= need.quantity;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written <> cardinality(skus) THEN
        RAISE EXCEPTION 'the stock of a product of the group changed' USING ERRCODE = 'BOS02';
    END IF;

    -- Every order once, locked (after its products), then read again by statements that each see what committed
    -- before them: its status, lines and history as the shipment read them.
    IF (SELECT count(DISTINCT id) FROM unnest(ids) AS id) <> cardinality(ids) THEN
        RAISE EXCEPTION 'an order is shipped twice in the group' USING ERRCODE = 'BOS02';
    END IF;
    PERFORM 1 FROM orders WHERE id = ANY (ids) ORDER BY id FOR UPDATE;
    -- Each order looked up by its key (an order gone has no status, which differs from the one it was read with).
    IF EXISTS (
        SELECT 1
        FROM jsonb_array_elements(p_docs) AS x(d), LATERAL (SELECT (x.d->>'order_id')::uuid AS id) AS k
        WHERE (SELECT o.status FROM orders o WHERE o.id = k.id) IS DISTINCT FROM x.d->>'read_status'
           OR (SELECT array_agg(concat_ws(' ', l.sku, l.reserved, l.shipped, l.returned, l.cancelled) ORDER BY l.line_no)
               FROM order_lines l WHERE l.order_id = k.id)
              IS DISTINCT FROM ARRAY(SELECT jsonb_array_elements_text(x.d->'read_lines'))
           OR (SELECT count(*) FROM order_events e WHERE e.order_id = k.id) <> (x.d->>'read_history')::bigint
    ) THEN
        RAISE EXCEPTION 'an order of the group changed since it was read' USING ERRCODE = 'BOS02';
    END IF;

    UPDATE orders o SET status = x.d->>'status', updated_at = (x.d->>'now')::timestamptz
        FROM jsonb_array_elements(p_docs) AS x(d)
        WHERE o.id = ANY (ids) AND o.id = (x.d->>'order_id')::uuid;
    UPDATE order_lines l SET reserved = l.reserved - m.quantity, shipped = l.shipped + m.quantity
        FROM (SELECT (x.d->>'order_id')::uuid AS order_id, s.sku, s.quantity
              FROM jsonb_array_elements(p_docs) AS x(d),
                   jsonb_to_recordset(x.d->'lines') AS s(sku text, quantity integer)) AS m
        WHERE l.order_id = ANY (ids) AND l.order_id = m.order_id AND l.sku = m.sku;
    INSERT INTO shipments (id, order_id, lines, subtotal_minor, carrier, tracking_number, shipped_at)
        SELECT s.id, (x.d->>'order_id')::uuid, s.lines, s.subtotal_minor, s.carrier, s.tracking_number,
               (x.d->>'now')::timestamptz
        FROM jsonb_array_elements(p_docs) WITH ORDINALITY AS x(d, i),
             jsonb_to_record(x.d->'shipment')
                 AS s(id uuid, lines jsonb, subtotal_minor bigint, carrier text, tracking_number text)
        ORDER BY x.i;
    PERFORM _append_group_events(p_docs, ids, p_payloads);
END $$;
