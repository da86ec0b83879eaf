-- The ship group's check that every order is still as its shipment read it (0009) looks each order up by its key,
-- one index probe per order, instead of joining the group's documents to `orders` filtered by the group's ids.
--
-- Why: the planner chose that join's plan once per connection, with the statistics of the moment, and kept it. On
-- a database started empty (the first minutes of a deployment, every test and probe stack), the plan it kept was a
-- hash join over a sequential scan of all `orders`, and it kept using it as the table grew: after a minute at 700
-- orders/s the check read all 16 000 orders for every group, 120-250 us per order shipped, where the index probes
-- take a few. An order that is gone has no status, so it still fails the check, as the join's `o.id IS NULL` did.
-- The rest of the function is 0009's.

CREATE OR REPLACE FUNCTION _ship_group(p_docs jsonb, p_bodies bytea[], p_payloads bytea[]) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    keys integer;
    written integer;
    skus text[] := ARRAY(SELECT DISTINCT l->>'sku' FROM jsonb_array_elements(p_docs) d, jsonb_array_elements(d->'lines') l);
    ids uuid[] := ARRAY(SELECT (d->>'order_id')::uuid FROM jsonb_array_elements(p_docs) d);
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
    -- The k-th event of the group (in order of its shipments, then of each one's events) has payload p_payloads[k].
    WITH e AS (
        SELECT (x.d->>'order_id')::uuid AS order_id, e.id, e.lane, e.topic, e.key, e.headers, e.type, e.at,
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
