-- Shipping from a snapshot, in one statement that is its own transaction (one round trip, one commit): the caller
-- read the order's view without locks (`store.order_view`), decided the shipment from it (`domain.shipment`) and
-- built its answer from the two, and this
--   1. given an Idempotency-Key (p_key not null), stores the answer under it (shared `idempotency_store`: a request
--      with this key still in flight is waited for), or returns the answer already stored (shipped = false) and
--      changes nothing;
--   2. takes each shipped quantity out of its product's on_hand and reservation, in SKU order (the lock order every
--      writer follows);
--   3. locks the order and goes on only while it is as it was read: the same status, the same quantities on every
--      line and the same number of history rows (each change to an order, its shipments, returns, invoices or
--      payments adds at least one, in its transaction); otherwise it raises SQLSTATE BOS01 and nothing at all is
--      written (the caller then takes the locking path);
--   4. writes the order's status and lines, the shipment, its events in the outbox and its history.
CREATE FUNCTION ship_order_from_snapshot(
    p_principal text, p_key text, p_request_hash text, p_status_code integer, p_body bytea, p_wait_ms integer,
    p_order_id uuid, p_read_status text, p_read_lines text[], p_read_history bigint,
    p_status text, p_now timestamptz, p_skus text[], p_quantities integer[],
    p_shipment_id uuid, p_shipment_lines jsonb, p_subtotal_minor bigint, p_carrier text, p_tracking_number text,
    p_event_ids uuid[], p_lanes smallint[], p_topics text[], p_keys text[], p_headers text[], p_payloads bytea[],
    p_types text[], p_times timestamptz[], p_data text[]
) RETURNS TABLE (shipped boolean, request_hash text, status_code integer, body bytea)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    line record;
    stored idempotency_keys;
BEGIN
    IF p_key IS NOT NULL THEN
        stored := idempotency_store(p_principal, p_key, p_request_hash, p_status_code, p_body, p_wait_ms);
        IF stored.key IS NOT NULL THEN
            RETURN QUERY SELECT false, stored.request_hash, stored.status_code, stored.body;
            RETURN;
        END IF;
    END IF;

    FOR line IN
        SELECT m.sku, m.quantity FROM unnest(p_skus, p_quantities) AS m(sku, quantity) ORDER BY m.sku
    LOOP
        UPDATE products SET on_hand = on_hand - line.quantity, reserved = reserved - line.quantity, updated_at = p_now
            WHERE sku = line.sku AND reserved >= line.quantity AND on_hand >= line.quantity;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the stock of % changed since the order was read', line.sku USING ERRCODE = 'BOS01';
        END IF;
    END LOOP;

    -- Locked (after its products), the order is read again by statements that each see what committed before them.
    PERFORM 1 FROM orders o WHERE o.id = p_order_id AND o.status = p_read_status FOR UPDATE;
    IF NOT FOUND
        OR (SELECT array_agg(concat_ws(' ', l.sku, l.reserved, l.shipped, l.returned, l.cancelled) ORDER BY l.line_no)
            FROM order_lines l WHERE l.order_id = p_order_id) IS DISTINCT FROM p_read_lines
        OR (SELECT count(*) FROM order_events e WHERE e.order_id = p_order_id) <> p_read_history
    THEN
        RAISE EXCEPTION 'order % changed since it was read', p_order_id USING ERRCODE = 'BOS01';
    END IF;

    UPDATE orders SET status = p_status, updated_at = p_now WHERE id = p_order_id;
    UPDATE order_lines l SET reserved = l.reserved - m.quantity, shipped = l.shipped + m.quantity
        FROM unnest(p_skus, p_quantities) AS m(sku, quantity)
        WHERE l.order_id = p_order_id AND l.sku = m.sku;
    INSERT INTO shipments (id, order_id, lines, subtotal_minor, carrier, tracking_number, shipped_at)
        VALUES (p_shipment_id, p_order_id, p_shipment_lines, p_subtotal_minor, p_carrier, p_tracking_number, p_now);
    INSERT INTO outbox (event_id, lane, topic, key, headers, payload)
        SELECT e.id, e.lane, e.topic, e.key, e.headers::jsonb, e.payload
        FROM unnest(p_event_ids, p_lanes, p_topics, p_keys, p_headers, p_payloads) WITH ORDINALITY
            AS e(id, lane, topic, key, headers, payload, n)
        ORDER BY e.n;
    INSERT INTO order_events (event_id, order_id, type, occurred_at, data)
        SELECT h.id, p_order_id, h.type, h.at, h.data::jsonb
        FROM unnest(p_event_ids, p_types, p_times, p_data) WITH ORDINALITY AS h(id, type, at, data, n)
        ORDER BY h.n;
    RETURN QUERY SELECT true, NULL::text, NULL::integer, NULL::bytea;
END $$;
