-- Receivables: customers' terms, invoices, credit notes, payments, customer credit, disputes and dunning notices.

CREATE TABLE customers (
    customer_id         text PRIMARY KEY,
    payment_terms_days  integer CHECK (payment_terms_days BETWEEN 0 AND 365),  -- NULL: the configured default
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One row per (kind, year): taking the next number locks the row until the issuing transaction ends, so a
-- rolled-back transaction gives its number back and the numbers stay gap-free.
CREATE TABLE number_sequences (
    kind        text NOT NULL,
    year        integer NOT NULL,
    last_value  integer NOT NULL CHECK (last_value > 0),
    PRIMARY KEY (kind, year)
);

CREATE TABLE invoices (
    seq                    bigserial UNIQUE,
    id                     uuid PRIMARY KEY,
    number                 text NOT NULL UNIQUE,
    customer_id            text NOT NULL,
    order_id               text NOT NULL,
    shipment_id            text NOT NULL UNIQUE,
    currency               char(3) NOT NULL,
    lines                  jsonb NOT NULL,
    tax_rate_bps           integer NOT NULL CHECK (tax_rate_bps >= 0),
    subtotal_minor         bigint NOT NULL CHECK (subtotal_minor >= 0),
    tax_minor              bigint NOT NULL CHECK (tax_minor >= 0),
    total_minor            bigint NOT NULL,
    paid_minor             bigint NOT NULL DEFAULT 0 CHECK (paid_minor >= 0),
    credit_applied_minor   bigint NOT NULL DEFAULT 0 CHECK (credit_applied_minor >= 0),
    credited_minor         bigint NOT NULL DEFAULT 0 CHECK (credited_minor >= 0),
    balance_minor          bigint NOT NULL,
    status                 text NOT NULL CHECK (status IN ('open', 'partially_paid', 'paid', 'overdue', 'credited')),
    dunning_level          smallint NOT NULL DEFAULT 0 CHECK (dunning_level BETWEEN 0 AND 3),
    issued_at              timestamptz NOT NULL,
    due_at                 timestamptz NOT NULL,
    closed_at              timestamptz,
    CHECK (total_minor = subtotal_minor + tax_minor),
    CHECK (balance_minor = total_minor - paid_minor - credit_applied_minor - credited_minor),
    CHECK (balance_minor >= 0)
);
CREATE INDEX invoices_customer ON invoices (customer_id, seq);
CREATE INDEX invoices_order ON invoices (order_id, seq);
CREATE INDEX invoices_open ON invoices (customer_id, currency, issued_at, seq) WHERE balance_minor > 0;
CREATE INDEX invoices_status ON invoices (status, seq);
CREATE INDEX invoices_past_due ON invoices (due_at) WHERE balance_minor > 0;

CREATE TABLE credit_notes (
    seq                        bigserial UNIQUE,
    id                         uuid PRIMARY KEY,
    number                     text NOT NULL UNIQUE,
    invoice_id                 uuid NOT NULL REFERENCES invoices (id),
    customer_id                text NOT NULL,
    order_id                   text NOT NULL,
    return_id                  text NOT NULL UNIQUE,
    currency                   char(3) NOT NULL,
    lines                      jsonb NOT NULL,
    subtotal_minor             bigint NOT NULL CHECK (subtotal_minor >= 0),
    tax_minor                  bigint NOT NULL CHECK (tax_minor >= 0),
    total_minor                bigint NOT NULL,
    applied_to_invoice_minor   bigint NOT NULL CHECK (applied_to_invoice_minor >= 0),
    to_customer_credit_minor   bigint NOT NULL CHECK (to_customer_credit_minor >= 0),
    issued_at                  timestamptz NOT NULL,
    CHECK (total_minor = subtotal_minor + tax_minor),
    CHECK (total_minor = applied_to_invoice_minor + to_customer_credit_minor)
);
CREATE INDEX credit_notes_customer ON credit_notes (customer_id, seq);

CREATE TABLE payments (
    seq              bigserial UNIQUE,
    id               uuid PRIMARY KEY,
    customer_id      text NOT NULL,
    currency         char(3) NOT NULL,
    amount_minor     bigint NOT NULL CHECK (amount_minor > 0),
    unapplied_minor  bigint NOT NULL CHECK (unapplied_minor >= 0 AND unapplied_minor <= amount_minor),
    method           text NOT NULL,
    reference        text NOT NULL,
    received_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_customer ON payments (customer_id, seq);

-- Every amount that reduced an invoice's balance: a payment, customer credit, or a credit note.
CREATE TABLE invoice_settlements (
    seq           bigserial PRIMARY KEY,
    invoice_id    uuid NOT NULL REFERENCES invoices (id),
    kind          text NOT NULL CHECK (kind IN ('payment', 'credit', 'credit_note')),
    source_id     uuid,
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    occurred_at   timestamptz NOT NULL
);
CREATE INDEX invoice_settlements_invoice ON invoice_settlements (invoice_id, occurred_at);

CREATE TABLE customer_credit (
    customer_id    text NOT NULL,
    currency       char(3) NOT NULL,
    balance_minor  bigint NOT NULL CHECK (balance_minor >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, currency)
);

CREATE TABLE disputes (
    ticket_id    text NOT NULL,
    invoice_id   text NOT NULL,
    customer_id  text NOT NULL,
    reason       text NOT NULL DEFAULT '',
    opened_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz,
    PRIMARY KEY (ticket_id, invoice_id)
);
CREATE INDEX disputes_open ON disputes (invoice_id) WHERE resolved_at IS NULL;

-- One row per (invoice, level): `InvoiceOverdue` is emitted only by the transaction that inserts it.
CREATE TABLE dunning_notices (
    invoice_id    uuid NOT NULL REFERENCES invoices (id),
    level         smallint NOT NULL CHECK (level BETWEEN 1 AND 3),
    days_overdue  integer NOT NULL,
    as_of         timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (invoice_id, level)
);

-- Payables.
CREATE TABLE vendors (
    seq                 bigserial UNIQUE,
    id                  uuid PRIMARY KEY,
    name                text NOT NULL,
    payment_terms_days  integer NOT NULL CHECK (payment_terms_days BETWEEN 0 AND 365),
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bills (
    seq              bigserial UNIQUE,
    id               uuid PRIMARY KEY,
    vendor_id        uuid NOT NULL REFERENCES vendors (id),
    bill_number      text NOT NULL,
    currency         char(3) NOT NULL,
    lines            jsonb NOT NULL,
    expense_account  text NOT NULL CHECK (expense_account ~ '^[0-9]{4}$'),
    subtotal_minor   bigint NOT NULL CHECK (subtotal_minor >= 0),
    tax_minor        bigint NOT NULL CHECK (tax_minor >= 0),
    total_minor      bigint NOT NULL,
    paid_minor       bigint NOT NULL DEFAULT 0 CHECK (paid_minor >= 0),
    balance_minor    bigint NOT NULL CHECK (balance_minor >= 0),
    status           text NOT NULL CHECK (status IN ('open', 'partially_paid', 'paid')),
    received_at      timestamptz NOT NULL,
    due_at           timestamptz NOT NULL,
    paid_at          timestamptz,
    UNIQUE (vendor_id, bill_number),
    CHECK (total_minor = subtotal_minor + tax_minor),
    CHECK (balance_minor = total_minor - paid_minor)
);
CREATE INDEX bills_vendor ON bills (vendor_id, seq);

CREATE TABLE bill_payments (
    seq           bigserial UNIQUE,
    id            uuid PRIMARY KEY,
    bill_id       uuid NOT NULL REFERENCES bills (id),
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    reference     text NOT NULL,
    paid_at       timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bill_payments_bill ON bill_payments (bill_id, seq);
