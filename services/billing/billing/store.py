"""Every SQL statement of receivables: customers, numbering, invoices, payments, credit, credit notes, disputes.

Functions never commit: the route or handler that calls them owns the transaction. Rows that are about to
change are locked first, always in the same order (customer, then invoices by id, then customer credit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from backoffice import db, events, outbox
from backoffice.db import Conn
from backoffice.envelope import Envelope
from billing.domain import CreditNote, Invoice, PaymentIn

_INVOICE = (
    "seq, id, number, customer_id, order_id, shipment_id, currency, lines, tax_rate_bps, subtotal_minor, tax_minor,"
    " total_minor, paid_minor, credit_applied_minor, credited_minor, status, dunning_level, issued_at, due_at,"
    " closed_at, EXISTS (SELECT 1 FROM disputes d WHERE d.invoice_id = invoices.id::text AND d.resolved_at IS NULL)"
    " AS disputed"
)


def _invoice(row: asyncpg.Record) -> Invoice:
    return Invoice(
        id=str(row["id"]),
        number=row["number"],
        customer_id=row["customer_id"],
        order_id=row["order_id"],
        shipment_id=row["shipment_id"],
        currency=row["currency"],
        lines=tuple(events.InvoiceLine(**line) for line in row["lines"]),
        tax_rate_bps=row["tax_rate_bps"],
        subtotal_minor=row["subtotal_minor"],
        tax_minor=row["tax_minor"],
        total_minor=row["total_minor"],
        paid_minor=row["paid_minor"],
        credit_applied_minor=row["credit_applied_minor"],
        credited_minor=row["credited_minor"],
        status=row["status"],
        dunning_level=row["dunning_level"],
        issued_at=row["issued_at"],
        due_at=row["due_at"],
        closed_at=row["closed_at"],
        disputed=row["disputed"],
    )


# --- customers and numbering -------------------------------------------------------------------


async def lock_customer(conn: Conn, *, customer_id: str) -> int | None:
    """Lock the customer's row (made if new) so its money moves one at a time; return its terms, if set.

    One statement: an upsert whose DO UPDATE changes nothing but, unlike DO NOTHING, locks the row and returns it
    as last committed, even when it waited for another transaction to make or change it."""
    terms: int | None = await conn.fetchval(
        "INSERT INTO customers (customer_id) VALUES ($1)"
        " ON CONFLICT (customer_id) DO UPDATE SET customer_id = EXCLUDED.customer_id RETURNING payment_terms_days",
        customer_id,
    )
    return terms


async def get_terms(conn: Conn, *, customer_id: str) -> int | None:
    """The customer's payment terms in days, or None for the default."""
    terms: int | None = await conn.fetchval(
        "SELECT payment_terms_days FROM customers WHERE customer_id = $1", customer_id
    )
    return terms


async def set_terms(conn: Conn, *, customer_id: str, days: int) -> None:
    """Set the customer's payment terms (for invoices issued from now on)."""
    await conn.execute(
        "INSERT INTO customers (customer_id, payment_terms_days) VALUES ($1, $2) ON CONFLICT (customer_id)"
        " DO UPDATE SET payment_terms_days = EXCLUDED.payment_terms_days, updated_at = now()",
        customer_id,
        days,
    )


async def next_number(conn: Conn, *, kind: str, year: int) -> int:
    """The next number of `kind` in `year`; the counter row stays locked until the caller's transaction ends."""
    value: int = await conn.fetchval(
        "INSERT INTO number_sequences (kind, year, last_value) VALUES ($1, $2, 1) ON CONFLICT (kind, year)"
        " DO UPDATE SET last_value = number_sequences.last_value + 1 RETURNING last_value",
        kind,
        year,
    )
    return value


# --- invoices ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShipmentsToInvoice:
    numbers: dict[str, int]  # shipment id -> the invoice number taken for it, for those not invoiced yet
    credit: dict[tuple[str, str], int]  # (customer, currency) -> unapplied credit, its row locked (absent: none)


async def lock_customers(conn: Conn, *, customer_ids: Sequence[str]) -> dict[str, int | None]:
    """`lock_customer` for several customers, in one statement and in customer id order (the order every writer
    that locks more than one takes them in); their terms, if set, by customer."""
    rows = await conn.fetch(
        "INSERT INTO customers (customer_id) SELECT c FROM unnest($1::text[]) AS c ORDER BY c"
        " ON CONFLICT (customer_id) DO UPDATE SET customer_id = EXCLUDED.customer_id"
        " RETURNING customer_id, payment_terms_days",
        sorted(set(customer_ids)),
    )
    return {r["customer_id"]: r["payment_terms_days"] for r in rows}


async def start_shipment_invoices(
    conn: Conn, *, shipments: Sequence[tuple[str, str, str]], year: int
) -> ShipmentsToInvoice:
    """For `(shipment id, customer, currency)` of distinct shipments, in one statement: skip those invoiced already,
    take the next invoice numbers of `year` for the others in the order given (the counter row stays locked until
    the caller's transaction ends), and lock their customers' credit. The caller holds the customers' locks
    (`lock_customers`, a statement before this one), which every invoice of theirs is made under, so the check
    sees any made before."""
    row = await conn.fetchrow(
        "WITH s AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY"
        "  AS s(shipment_id, customer_id, currency, n)),"
        " fresh AS (SELECT s.* FROM s WHERE NOT EXISTS (SELECT 1 FROM invoices i"
        "  WHERE i.shipment_id = s.shipment_id AND i.shipment_id = ANY($1::text[]))),"
        " taken AS (INSERT INTO number_sequences (kind, year, last_value) SELECT 'INV', $4, count(*) FROM fresh"
        "  HAVING count(*) > 0 ON CONFLICT (kind, year)"
        "  DO UPDATE SET last_value = number_sequences.last_value + EXCLUDED.last_value RETURNING last_value),"
        " credit AS (SELECT c.customer_id, c.currency, c.balance_minor FROM customer_credit c"
        "  WHERE (c.customer_id, c.currency) IN (SELECT customer_id, currency FROM fresh)"
        "  AND c.customer_id = ANY($2::text[])"
        "  ORDER BY c.customer_id, c.currency FOR UPDATE)"
        " SELECT (SELECT array_agg(shipment_id ORDER BY n) FROM fresh) AS fresh,"
        " (SELECT last_value FROM taken) AS last,"
        " (SELECT jsonb_agg(jsonb_build_array(customer_id, currency, balance_minor)) FROM credit) AS credit",
        [s[0] for s in shipments],
        [s[1] for s in shipments],
        [s[2] for s in shipments],
        year,
    )
    assert row is not None
    fresh: list[str] = row["fresh"] or []
    first = (row["last"] or 0) - len(fresh) + 1
    return ShipmentsToInvoice(
        {shipment: first + i for i, shipment in enumerate(fresh)},
        {(customer, currency): int(balance) for customer, currency, balance in row["credit"] or []},
    )


async def insert_invoices(conn: Conn, *, invoices: Sequence[tuple[Invoice, Sequence[events.Event]]]) -> None:
    """New invoices and the events each caused (outbox, in order), in one statement."""
    rows = [
        {
            "id": i.id,
            "number": i.number,
            "customer_id": i.customer_id,
            "order_id": i.order_id,
            "shipment_id": i.shipment_id,
            "currency": i.currency,
            "lines": [line.model_dump(mode="json") for line in i.lines],
            "tax_rate_bps": i.tax_rate_bps,
            "subtotal_minor": i.subtotal_minor,
            "tax_minor": i.tax_minor,
            "total_minor": i.total_minor,
            "paid_minor": i.paid_minor,
            "credit_applied_minor": i.credit_applied_minor,
            "credited_minor": i.credited_minor,
            "balance_minor": i.balance_minor,
            "status": i.status,
            "dunning_level": i.dunning_level,
            "issued_at": i.issued_at,
            "due_at": i.due_at,
            "closed_at": i.closed_at,
        }
        for i, _ in invoices
    ]
    published = outbox.columns([Envelope.wrap(e) for _, caused in invoices for e in caused])
    await conn.execute(
        "WITH invoice AS (INSERT INTO invoices (id, number, customer_id, order_id, shipment_id, currency, lines,"
        " tax_rate_bps, subtotal_minor, tax_minor, total_minor, paid_minor, credit_applied_minor, credited_minor,"
        " balance_minor, status, dunning_level, issued_at, due_at, closed_at)"
        " SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, number text, customer_id text, order_id text,"
        " shipment_id text, currency text, lines jsonb, tax_rate_bps integer, subtotal_minor bigint, tax_minor bigint,"
        " total_minor bigint, paid_minor bigint, credit_applied_minor bigint, credited_minor bigint,"
        " balance_minor bigint, status text, dunning_level smallint, issued_at timestamptz, due_at timestamptz,"
        " closed_at timestamptz))"
        f" {outbox.insert_sql(2)}",
        rows,
        *published,
    )
    db.wrote_outbox(conn)


async def update_invoice(conn: Conn, *, invoice: Invoice) -> None:
    """Write what may change on an issued invoice: the amounts settled, status and dunning level."""
    await conn.execute(
        "UPDATE invoices SET paid_minor = $2, credit_applied_minor = $3, credited_minor = $4, balance_minor = $5,"
        " status = $6, dunning_level = $7, closed_at = $8 WHERE id = $1",
        invoice.id,
        invoice.paid_minor,
        invoice.credit_applied_minor,
        invoice.credited_minor,
        invoice.balance_minor,
        invoice.status,
        invoice.dunning_level,
        invoice.closed_at,
    )


async def get_invoice(conn: Conn, *, invoice_id: str) -> Invoice | None:
    row = await conn.fetchrow(f"SELECT {_INVOICE} FROM invoices WHERE id = $1", invoice_id)
    return _invoice(row) if row else None


async def lock_invoice(conn: Conn, *, invoice_id: str) -> Invoice | None:
    row = await conn.fetchrow(f"SELECT {_INVOICE} FROM invoices WHERE id = $1 FOR UPDATE", invoice_id)
    return _invoice(row) if row else None


async def lock_invoices(conn: Conn, *, customer_id: str, invoice_ids: Sequence[str]) -> list[Invoice]:
    """Lock those of the given invoices that exist and are the customer's, in id order."""
    rows = await conn.fetch(
        f"SELECT {_INVOICE} FROM invoices WHERE id = ANY($1::uuid[]) AND customer_id = $2 ORDER BY id FOR UPDATE",
        list(invoice_ids),
        customer_id,
    )
    return [_invoice(r) for r in rows]


async def lock_open_invoices(conn: Conn, *, customer_id: str, currency: str) -> list[Invoice]:
    """Lock the customer's invoices with an open balance in `currency`, in id order."""
    rows = await conn.fetch(
        f"SELECT {_INVOICE} FROM invoices WHERE customer_id = $1 AND currency = $2 AND balance_minor > 0"
        " ORDER BY id FOR UPDATE",
        customer_id,
        currency,
    )
    return [_invoice(r) for r in rows]


async def lock_order_invoices(conn: Conn, *, order_id: str) -> list[Invoice]:
    rows = await conn.fetch(f"SELECT {_INVOICE} FROM invoices WHERE order_id = $1 ORDER BY id FOR UPDATE", order_id)
    return [_invoice(r) for r in rows]


async def list_invoices(
    conn: Conn, *, customer_id: str | None, status: str | None, after: int | None, limit: int
) -> list[tuple[int, Invoice]]:
    """A page of invoices in issue order (keyset on `seq`), with their keys."""
    rows = await conn.fetch(
        f"SELECT {_INVOICE} FROM invoices WHERE ($1::text IS NULL OR customer_id = $1)"
        " AND ($2::text IS NULL OR status = $2) AND ($3::bigint IS NULL OR seq > $3) ORDER BY seq LIMIT $4",
        customer_id,
        status,
        after,
        limit,
    )
    return [(r["seq"], _invoice(r)) for r in rows]


async def add_settlements(conn: Conn, *, rows: Sequence[tuple[str, str, str | None, int, datetime]]) -> None:
    """Record amounts that reduced invoices: `(invoice_id, kind, source_id, amount_minor, occurred_at)`."""
    if rows:
        await conn.executemany(
            "INSERT INTO invoice_settlements (invoice_id, kind, source_id, amount_minor, occurred_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            list(rows),
        )


# --- customer credit ---------------------------------------------------------------------------


async def lock_credit(conn: Conn, *, customer_id: str, currency: str) -> int:
    """The customer's unapplied credit in `currency`, its row locked (0 when there is none)."""
    value = await conn.fetchval(
        "SELECT balance_minor FROM customer_credit WHERE customer_id = $1 AND currency = $2 FOR UPDATE",
        customer_id,
        currency,
    )
    return int(value or 0)


async def add_credit(conn: Conn, *, customer_id: str, currency: str, delta_minor: int) -> None:
    """Add (or, negative, use) customer credit; the balance can never go below zero."""
    if delta_minor == 0:
        return
    if delta_minor < 0:
        used = await conn.fetchval(
            "UPDATE customer_credit SET balance_minor = balance_minor + $3, updated_at = now()"
            " WHERE customer_id = $1 AND currency = $2 RETURNING true",
            customer_id,
            currency,
            delta_minor,
        )
        if not used:
            raise RuntimeError(f"customer {customer_id} has no {currency} credit to use")
        return
    await conn.execute(
        "INSERT INTO customer_credit (customer_id, currency, balance_minor) VALUES ($1, $2, $3)"
        " ON CONFLICT (customer_id, currency) DO UPDATE"
        " SET balance_minor = customer_credit.balance_minor + EXCLUDED.balance_minor, updated_at = now()",
        customer_id,
        currency,
        delta_minor,
    )


async def credit_balances(conn: Conn, *, customer_id: str | None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT customer_id, currency, balance_minor FROM customer_credit"
        " WHERE ($1::text IS NULL OR customer_id = $1) AND balance_minor > 0 ORDER BY customer_id, currency",
        customer_id,
    )
    return [dict(r) for r in rows]


# --- payments ----------------------------------------------------------------------------------


async def insert_payment(conn: Conn, *, payment: PaymentIn, unapplied_minor: int) -> None:
    await conn.execute(
        "INSERT INTO payments (id, customer_id, currency, amount_minor, unapplied_minor, method, reference,"
        " received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        payment.id,
        payment.customer_id,
        payment.currency,
        payment.amount_minor,
        unapplied_minor,
        payment.method,
        payment.reference,
        payment.received_at,
    )


_PAYMENT = (
    "SELECT p.seq, p.id, p.customer_id, p.currency, p.amount_minor, p.unapplied_minor, p.method, p.reference,"
    " p.received_at, COALESCE((SELECT jsonb_agg(jsonb_build_object('invoice_id', s.invoice_id,"
    " 'amount_minor', s.amount_minor) ORDER BY s.seq) FROM invoice_settlements s"
    " WHERE s.kind = 'payment' AND s.source_id = p.id), '[]'::jsonb) AS applied FROM payments p"
)


async def get_payment(conn: Conn, *, payment_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"{_PAYMENT} WHERE p.id = $1", payment_id)
    return dict(row) if row else None


async def list_payments(conn: Conn, *, customer_id: str | None, after: int | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"{_PAYMENT} WHERE ($1::text IS NULL OR p.customer_id = $1) AND ($2::bigint IS NULL OR p.seq > $2)"
        " ORDER BY p.seq LIMIT $3",
        customer_id,
        after,
        limit,
    )
    return [dict(r) for r in rows]


# --- credit notes ------------------------------------------------------------------------------


async def credit_note_exists_for_return(conn: Conn, *, return_id: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM credit_notes WHERE return_id = $1)", return_id))


async def insert_credit_note(conn: Conn, *, note: CreditNote) -> None:
    await conn.execute(
        "INSERT INTO credit_notes (id, number, invoice_id, customer_id, order_id, return_id, currency, lines,"
        " subtotal_minor, tax_minor, total_minor, applied_to_invoice_minor, to_customer_credit_minor, issued_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        note.id,
        note.number,
        note.invoice_id,
        note.customer_id,
        note.order_id,
        note.return_id,
        note.currency,
        [line.model_dump(mode="json") for line in note.lines],
        note.subtotal_minor,
        note.tax_minor,
        note.total_minor,
        note.applied_to_invoice_minor,
        note.to_customer_credit_minor,
        note.issued_at,
    )


async def credited_on_invoice(conn: Conn, *, invoice_id: str) -> tuple[int, int]:
    """The summed (subtotal, tax) of the credit notes issued against an invoice."""
    row = await conn.fetchrow(
        "SELECT COALESCE(sum(subtotal_minor), 0)::bigint AS s, COALESCE(sum(tax_minor), 0)::bigint AS t"
        " FROM credit_notes WHERE invoice_id = $1",
        invoice_id,
    )
    assert row is not None
    return int(row["s"]), int(row["t"])


_CREDIT_NOTE = (
    "SELECT seq, id, number, invoice_id, customer_id, order_id, return_id, currency, lines, subtotal_minor,"
    " tax_minor, total_minor, applied_to_invoice_minor, to_customer_credit_minor, issued_at FROM credit_notes"
)


async def get_credit_note(conn: Conn, *, credit_note_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(f"{_CREDIT_NOTE} WHERE id = $1", credit_note_id)
    return dict(row) if row else None


async def list_credit_notes(
    conn: Conn, *, customer_id: str | None, after: int | None, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"{_CREDIT_NOTE} WHERE ($1::text IS NULL OR customer_id = $1) AND ($2::bigint IS NULL OR seq > $2)"
        " ORDER BY seq LIMIT $3",
        customer_id,
        after,
        limit,
    )
    return [dict(r) for r in rows]
