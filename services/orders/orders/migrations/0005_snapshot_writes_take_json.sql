-- The two snapshot writes of migrations 0003 and 0004, each taking its arguments as one JSON document (and the
-- bytes that must be stored exactly as built: the answer and the events' payloads) instead of some thirty
-- parameters. They decide and write exactly as before; only the way in changes. The client's cost of a call grows
-- with its parameters (each is typed, encoded and sent on its own, arrays element by element): measured at about
-- 130 us of the orders process's CPU per call with 29 parameters against about 60 us with one, on a request that
-- costs about 1.3 ms in all. The document is `jsonb`, parsed once; the answer and the payloads stay `bytea` (they
-- are most of the bytes, and a `json` document would be parsed again by every field it is asked for).
--
-- The functions of 0003 and 0004 stay for instances of the previous release during a rolling upgrade; a later
-- migration drops them.
--
-- place_order_in_stock(p jsonb, p_body bytea, p_payloads bytea[]), p:
--   {"principal", "key", "request_hash", "status_code", "wait_ms",
--    "order": {"id", "customer_id", "currency", "status", "shipping_address", "allow_backorder", "total_minor",
--              "placed_at", "confirmed_at"},
--    "now", "lines": [{"sku", "quantity", "price", "reserved"}], "events": [EVENT]}
-- ship_order_from_snapshot(p jsonb, p_body bytea, p_payloads bytea[]), p:
--   {"principal", "key", "request_hash", "status_code", "wait_ms",
--    "order_id", "read_status", "read_lines" (as `concat_ws(' ', sku, reserved, shipped, returned, cancelled)`),
--    "read_history", "status", "now", "lines": [{"sku", "quantity"}],
--    "shipment": {"id", "lines" (any JSON), "subtotal_minor", "carrier", "tracking_number"}, "events": [EVENT]}
-- EVENT: {"id", "lane", "topic", "key", "headers" ([[name, value], ...]), "type", "at"}; p_payloads[i] is the
-- payload of the i-th event.
-- Both return what the originals return.

-- The shared `idempotency_store` with the caller, key, hash, status and wait of the document.
CREATE FUNCTION _store_answer(p jsonb, p_body bytea) RETURNS idempotency_keys LANGUAGE sql VOLATILE AS $$
    SELECT idempotency_store(p->>'principal', p->>'key', p->>'request_hash', (p->>'status_code')::integer, p_body,
                             (p->>'wait_ms')::integer);
$$;

CREATE FUNCTION _record_events(p_order_id uuid, p_events jsonb, p_payloads bytea[]) RETURNS void
    LANGUAGE sql VOLATILE AS $$
    INSERT INTO outbox (event_id, lane, topic, key, headers, payload)
        SELECT e.id, e.lane, e.topic, e.key, e.headers, e.payload
        FROM ROWS FROM (jsonb_to_recordset(p_events) AS (id uuid, lane smallint, topic text, key text, headers jsonb),
                        unnest(p_payloads)) WITH ORDINALITY
            AS e(id, lane, topic, key, headers, payload, n)
        ORDER BY e.n;
    INSERT INTO order_events (event_id, order_id, type, occurred_at, data)
        SELECT h.id, p_order_id, h.type, h.at, convert_from(h.payload, 'UTF8')::jsonb
        FROM ROWS FROM (jsonb_to_recordset(p_events) AS (id uuid, type text, at timestamptz), unnest(p_payloads))
            WITH ORDINALITY AS h(id, type, at, payload, n)
        ORDER BY h.n;
$$;

CREATE FUNCTION place_order_in_stock(p jsonb, p_body bytea, p_payloads bytea[]) RETURNS TABLE (placed boolean, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    line record;
    o record;
    stored idempotency_keys;
    v_now timestamptz := (p->>'now')::timestamptz;
BEGIN
    IF p->>'key' IS NOT NULL THEN
        stored := _store_answer(p, p_body);
        IF stored.key IS NOT NULL THEN
            RETURN QUERY SELECT false, stored.request_hash, stored.status_code, stored.body;
            RETURN;
        END IF;
    END IF;

    SELECT * INTO o FROM jsonb_to_record(p->'order') AS x(id uuid, customer_id text, currency text, status text,
        shipping_address jsonb, allow_backorder boolean, total_minor bigint, placed_at timestamptz,
        confirmed_at timestamptz);

    FOR line IN
        SELECT l.sku, l.reserved, l.price FROM jsonb_to_recordset(p->'lines') AS l(sku text, reserved integer, price bigint)
        ORDER BY l.sku
    LOOP
        UPDATE products SET reserved = reserved + line.reserved, updated_at = v_now
            WHERE sku = line.sku AND currency = o.currency AND unit_price_minor = line.price
              AND on_hand - reserved >= line.reserved;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the stock or price of % changed since it was read', line.sku USING ERRCODE = 'BOS01';
        END IF;
    END LOOP;

    INSERT INTO orders (id, customer_id, currency, status, shipping_address, allow_backorder, total_minor, placed_at,
                        confirmed_at, updated_at)
        VALUES (o.id, o.customer_id, o.currency, o.status, o.shipping_address, o.allow_backorder, o.total_minor,
                o.placed_at, o.confirmed_at, v_now);
    INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_minor, reserved)
        SELECT o.id, l.n - 1, l.sku, l.quantity, l.price, l.reserved
        FROM ROWS FROM (jsonb_to_recordset(p->'lines') AS (sku text, quantity integer, price bigint, reserved integer))
            WITH ORDINALITY AS l(sku, quantity, price, reserved, n);
    PERFORM _record_events(o.id, p->'events', p_payloads);
    RETURN QUERY SELECT true, NULL::text, NULL::integer, NULL::bytea;
END $$;

CREATE FUNCTION ship_order_from_snapshot(p jsonb, p_body bytea, p_payloads bytea[]) RETURNS TABLE (shipped boolean, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    line record;
    stored idempotency_keys;
    v_order_id uuid := (p->>'order_id')::uuid;
    v_now timestamptz := (p->>'now')::timestamptz;
BEGIN
    IF p->>'key' IS NOT NULL THEN
        stored := _store_answer(p, p_body);
        IF stored.key IS NOT NULL THEN
            RETURN QUERY SELECT false, stored.request_hash, stored.status_code, stored.body;
            RETURN;
        END IF;
    END IF;

    FOR line IN
        SELECT m.sku, m.quantity FROM jsonb_to_recordset(p->'lines') AS m(sku text, quantity integer) ORDER BY m.sku
    LOOP
        UPDATE products SET on_hand = on_hand - line.quantity, reserved = reserved - line.quantity, updated_at = v_now
            WHERE sku = line.sku AND reserved >= line.quantity AND on_hand >= line.quantity;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the stock of % changed since the order was read', line.sku USING ERRCODE = 'BOS01';
        END IF;
    END LOOP;

    -- Locked (after its products), the order is read again by statements that each see what committed before them.
    PERFORM 1 FROM orders o WHERE o.id = v_order_id AND o.status = p->>'read_status' FOR UPDATE;
    IF NOT FOUND
        OR (SELECT array_agg(concat_ws(' ', l.sku, l.reserved, l.shipped, l.returned, l.cancelled) ORDER BY l.line_no)
            FROM order_lines l WHERE l.order_id = v_order_id)
           IS DISTINCT FROM ARRAY(SELECT jsonb_array_elements_text(p->'read_lines'))
        OR (SELECT count(*) FROM order_events e WHERE e.order_id = v_order_id) <> (p->>'read_history')::bigint
    THEN
        RAISE EXCEPTION 'order % changed since it was read', v_order_id USING ERRCODE = 'BOS01';
    END IF;

    UPDATE orders SET status = p->>'status', updated_at = v_now WHERE id = v_order_id;
    UPDATE order_lines l SET reserved = l.reserved - m.quantity, shipped = l.shipped + m.quantity
        FROM jsonb_to_recordset(p->'lines') AS m(sku text, quantity integer)
        WHERE l.order_id = v_order_id AND l.sku = m.sku;
    INSERT INTO shipments (id, order_id, lines, subtotal_minor, carrier, tracking_number, shipped_at)
        SELECT s.id, v_order_id, s.lines, s.subtotal_minor, s.carrier, s.tracking_number, v_now
        FROM jsonb_to_record(p->'shipment')
            AS s(id uuid, lines jsonb, subtotal_minor bigint, carrier text, tracking_number text);
    PERFORM _record_events(v_order_id, p->'events', p_payloads);
    RETURN QUERY SELECT true, NULL::text, NULL::integer, NULL::bytea;
END $$;
