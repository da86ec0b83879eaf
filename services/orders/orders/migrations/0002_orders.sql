-- Catalogue and stock. The checks are the last line of defence: the code never asks for less.
CREATE TABLE products (
    sku               text PRIMARY KEY,
    name              text NOT NULL,
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor >= 0),
    currency          text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    on_hand           integer NOT NULL CHECK (on_hand >= 0),
    reserved          integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    reorder_level     integer NOT NULL DEFAULT 0 CHECK (reorder_level >= 0),
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CONSTRAINT products_reserved_within_on_hand CHECK (reserved <= on_hand)
);

CREATE TABLE stock_adjustments (
    id             uuid PRIMARY KEY,
    sku            text NOT NULL REFERENCES products (sku),
    delta          integer NOT NULL CHECK (delta <> 0),
    reason         text NOT NULL,
    on_hand_after  integer NOT NULL CHECK (on_hand_after >= 0),
    actor          text NOT NULL,
    created_at     timestamptz NOT NULL
);
CREATE INDEX stock_adjustments_sku ON stock_adjustments (sku, created_at);

-- Orders: `seq` is the keyset of listings (newest first).
CREATE TABLE orders (
    seq               bigserial NOT NULL UNIQUE,
    id                uuid PRIMARY KEY,
    customer_id       text NOT NULL,
    currency          text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status            text NOT NULL
        CHECK (status IN ('backordered', 'confirmed', 'partially_shipped', 'shipped', 'cancelled')),
    shipping_address  jsonb NOT NULL,
    allow_backorder   boolean NOT NULL,
    total_minor       bigint NOT NULL CHECK (total_minor >= 0),
    placed_at         timestamptz NOT NULL,
    confirmed_at      timestamptz,
    cancelled_at      timestamptz,
    cancel_reason     text,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX orders_customer_seq ON orders (customer_id, seq DESC);
CREATE INDEX orders_status_seq ON orders (status, seq DESC);

CREATE TABLE order_lines (
    order_id          uuid NOT NULL REFERENCES orders (id),
    line_no           integer NOT NULL,
    sku               text NOT NULL REFERENCES products (sku),
    quantity          integer NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor >= 0),
    reserved          integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    shipped           integer NOT NULL DEFAULT 0 CHECK (shipped >= 0),
    returned          integer NOT NULL DEFAULT 0 CHECK (returned >= 0),
    cancelled         integer NOT NULL DEFAULT 0 CHECK (cancelled >= 0),
    PRIMARY KEY (order_id, sku),
    UNIQUE (order_id, line_no),
    CONSTRAINT order_lines_within_quantity CHECK (reserved + shipped + cancelled <= quantity),
    CONSTRAINT order_lines_returned_within_shipped CHECK (returned <= shipped)
);
-- Backorders waiting for a SKU, oldest first.
CREATE INDEX order_lines_waiting ON order_lines (sku) WHERE reserved + shipped + cancelled < quantity;

CREATE TABLE shipments (
    id               uuid PRIMARY KEY,
    order_id         uuid NOT NULL REFERENCES orders (id),
    lines            jsonb NOT NULL,
    subtotal_minor   bigint NOT NULL CHECK (subtotal_minor >= 0),
    carrier          text,
    tracking_number  text,
    shipped_at       timestamptz NOT NULL
);
CREATE INDEX shipments_order ON shipments (order_id, shipped_at);

CREATE TABLE returns (
    id              uuid PRIMARY KEY,
    order_id        uuid NOT NULL REFERENCES orders (id),
    lines           jsonb NOT NULL,
    subtotal_minor  bigint NOT NULL CHECK (subtotal_minor >= 0),
    reason          text NOT NULL,
    restocked       boolean NOT NULL,
    returned_at     timestamptz NOT NULL
);
CREATE INDEX returns_order ON returns (order_id, returned_at);

-- The order's history: one row per change, written in the change's transaction.
CREATE TABLE order_events (
    seq          bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    order_id     uuid NOT NULL REFERENCES orders (id),
    type         text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    data         jsonb NOT NULL
);
CREATE INDEX order_events_order ON order_events (order_id, seq);

-- Billing's view of an order, from InvoiceIssued and InvoicePaid (billing.events).
CREATE TABLE order_invoices (
    invoice_id   text PRIMARY KEY,
    order_id     uuid NOT NULL REFERENCES orders (id),
    number       text,
    currency     text NOT NULL,
    total_minor  bigint NOT NULL CHECK (total_minor >= 0),
    issued_at    timestamptz,
    paid_at      timestamptz
);
CREATE INDEX order_invoices_order ON order_invoices (order_id);
