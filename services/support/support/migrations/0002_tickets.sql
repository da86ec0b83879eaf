-- Tickets with their two SLA clocks (first response, resolution), messages, disputes.
CREATE TABLE tickets (
    seq                 bigserial NOT NULL UNIQUE,
    id                  uuid PRIMARY KEY,
    customer_id         text NOT NULL,
    subject             text NOT NULL,
    description         text NOT NULL,
    priority            text NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    category            text,
    status              text NOT NULL CHECK (status IN ('new', 'open', 'pending', 'resolved', 'closed')),
    assignee            text,
    order_id            text,
    invoice_id          text,
    source              text NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    first_response_at   timestamptz,
    resolved_at         timestamptz,
    closed_at           timestamptz,
    fr_target           interval NOT NULL,
    fr_elapsed          interval NOT NULL DEFAULT '0',
    fr_running_since    timestamptz,
    fr_due_at           timestamptz,
    fr_breached_at      timestamptz,
    res_target          interval NOT NULL,
    res_elapsed         interval NOT NULL DEFAULT '0',
    res_running_since   timestamptz,
    res_due_at          timestamptz,
    res_breached_at     timestamptz
);
CREATE INDEX tickets_by_customer ON tickets (customer_id, seq DESC);
CREATE INDEX tickets_by_status ON tickets (status, seq DESC);
CREATE INDEX tickets_by_assignee ON tickets (assignee, seq DESC) WHERE assignee IS NOT NULL;
CREATE INDEX tickets_open_by_order ON tickets (order_id, created_at)
    WHERE order_id IS NOT NULL AND status IN ('new', 'open', 'pending');
CREATE INDEX tickets_open_by_invoice ON tickets (invoice_id, created_at)
    WHERE invoice_id IS NOT NULL AND status IN ('new', 'open', 'pending');
CREATE INDEX tickets_sla_watch ON tickets (id) WHERE fr_breached_at IS NULL OR res_breached_at IS NULL;
CREATE INDEX tickets_breached ON tickets (seq DESC) WHERE fr_breached_at IS NOT NULL OR res_breached_at IS NOT NULL;

CREATE TABLE ticket_messages (
    seq          bigserial PRIMARY KEY,
    id           uuid NOT NULL UNIQUE,
    ticket_id    uuid NOT NULL REFERENCES tickets (id),
    author       text NOT NULL,
    author_kind  text NOT NULL CHECK (author_kind IN ('customer', 'agent', 'system')),
    visibility   text NOT NULL CHECK (visibility IN ('public', 'internal')),
    body         text NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX ticket_messages_by_ticket ON ticket_messages (ticket_id, seq);

CREATE TABLE disputes (
    id           uuid PRIMARY KEY,
    ticket_id    uuid NOT NULL REFERENCES tickets (id),
    customer_id  text NOT NULL,
    invoice_id   text NOT NULL,
    reason       text NOT NULL,
    status       text NOT NULL CHECK (status IN ('open', 'resolved')),
    outcome      text,
    opened_at    timestamptz NOT NULL,
    resolved_at  timestamptz
);
CREATE INDEX disputes_by_ticket ON disputes (ticket_id, opened_at);
-- Billing pauses dunning per invoice: at most one open dispute per invoice, and per ticket.
CREATE UNIQUE INDEX disputes_one_open_per_invoice ON disputes (invoice_id) WHERE status = 'open';
CREATE UNIQUE INDEX disputes_one_open_per_ticket ON disputes (ticket_id) WHERE status = 'open';

-- Trouble already heard (a return, an overdue level): the business key, so a re-sent event changes nothing.
CREATE TABLE trouble_signals (
    ref          text PRIMARY KEY,
    ticket_id    uuid NOT NULL REFERENCES tickets (id),
    event_id     uuid NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Whose order or invoice an id is, as learnt from the topics.
CREATE TABLE customer_refs (
    kind         text NOT NULL CHECK (kind IN ('order', 'invoice')),
    ref_id       text NOT NULL,
    customer_id  text NOT NULL,
    PRIMARY KEY (kind, ref_id)
);

-- The customer timeline, one row per event consumed.
CREATE TABLE timeline_items (
    seq          bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    customer_id  text NOT NULL,
    type         text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    subject      text NOT NULL,
    summary      text NOT NULL
);
CREATE INDEX timeline_by_customer ON timeline_items (customer_id, occurred_at DESC, seq DESC);
