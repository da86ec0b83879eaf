-- Placing an order whose every line is in stock, in one statement that is its own transaction (one round trip, one
-- commit): the caller priced it from a snapshot of the catalogue read without locks, and this
--   1. given an Idempotency-Key (p_key not null), stores the response under it (shared `idempotency_store`: a
--      request with this key still in flight is waited for), or returns the response already stored
--      (placed = false) and changes nothing;
--   2. reserves each line's stock, in SKU order (the lock order every writer follows), only while the product still
--      has the currency, the price and the free stock the order was priced with; otherwise it raises SQLSTATE
--      BOS01 and nothing at all is written (the caller then takes the locking path);
--   3. inserts the order, its lines, its events in the outbox and its history.
CREATE FUNCTION place_order_in_stock(
    p_principal text, p_key text, p_request_hash text, p_status_code integer, p_body bytea, p_wait_ms integer,
    p_order_id uuid, p_customer_id text, p_currency text, p_status text, p_shipping_address jsonb,
    p_allow_backorder boolean, p_total_minor bigint, p_placed_at timestamptz, p_confirmed_at timestamptz,
    p_now timestamptz, p_skus text[], p_quantities integer[], p_prices bigint[], p_reserved integer[],
    p_event_ids uuid[], p_lanes smallint[], p_topics text[], p_keys text[], p_headers text[], p_payloads bytea[],
    p_types text[], p_times timestamptz[], p_data text[]
) RETURNS TABLE (placed boolean, request_hash text, status_code integer, body bytea)
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
        SELECT l.sku, l.reserved, l.price FROM unnest(p_skus, p_reserved, p_prices) AS l(sku, reserved, price)
        ORDER BY l.sku
    LOOP
        UPDATE products SET reserved = reserved + line.reserved, updated_at = p_now
            WHERE sku = line.sku AND currency = p_currency AND unit_price_minor = line.price
              AND on_hand - reserved >= line.reserved;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the stock or price of % changed since it was read', line.sku USING ERRCODE = 'BOS01';
        END IF;
    END LOOP;

    INSERT INTO orders (id, customer_id, currency, status, shipping_address, allow_backorder, total_minor, placed_at,
                        confirmed_at, updated_at)
        VALUES (p_order_id, p_customer_id, p_currency, p_status, p_shipping_address, p_allow_backorder, p_total_minor,
                p_placed_at, p_confirmed_at, p_now);
    INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_minor, reserved)
        SELECT p_order_id, l.n - 1, l.sku, l.quantity, l.price, l.reserved
        FROM unnest(p_skus, p_quantities, p_prices, p_reserved) WITH ORDINALITY AS l(sku, quantity, price, reserved, n);
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
