"""Event consumers: invoices from shipments, credit notes from returns, disputes that pause dunning.

Each handler runs inside the consumer's transaction, which also records the event in the inbox; a shipment or
return already billed (the same event delivered again, or re-published under a new id) is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import cast

import structlog

from backoffice import events, outbox
from backoffice.consumer import Batched, Handler
from backoffice.db import Conn
from backoffice.envelope import Envelope
from backoffice.errors import Conflict, NotFound
from backoffice.ids import new_id
from billing import domain, store, store_dunning
from billing.settings import Settings

log = structlog.get_logger("billing.handlers")


async def invoice_shipment(
    conn: Conn, shipped: events.OrderShipped, *, tax_rate_bps: int, default_terms_days: int, at: datetime
) -> domain.Invoice | None:
    """Issue the invoice of one shipment (None when it was invoiced already), using any customer credit."""
    (invoice,) = await invoice_shipments(
        conn, [shipped], tax_rate_bps=tax_rate_bps, default_terms_days=default_terms_days, at=at
    )
    return invoice


async def invoice_shipments(
    conn: Conn, shipments: Sequence[events.OrderShipped], *, tax_rate_bps: int, default_terms_days: int, at: datetime
) -> list[domain.Invoice | None]:
    """Issue the invoices of several shipments, numbered in the order given, as `invoice_shipment` would one after
    the other (None for a shipment invoiced already, before or earlier in the list), in three statements whatever
    their number: lock the customers, take the numbers and lock their credit, write the invoices and their events.
    Credit is used in the order given too; the rare invoice it reduces costs two statements more."""
    terms = await store.lock_customers(conn, customer_ids=[s.customer_id for s in shipments])
    distinct: dict[str, events.OrderShipped] = {}  # each shipment once, as it first appears
    for shipped in shipments:
        distinct.setdefault(shipped.shipment_id, shipped)
    started = await store.start_shipment_invoices(
        conn, shipments=[(s.shipment_id, s.customer_id, s.currency) for s in distinct.values()], year=at.year
    )
    credit = dict(started.credit)
    made: list[domain.Invoice | None] = [None] * len(shipments)
    written: list[tuple[domain.Invoice, list[events.Event]]] = []
    for n, shipped in enumerate(shipments):
        number = started.numbers.pop(shipped.shipment_id, None)
        if number is None:
            continue
        expected = sum(line.quantity * line.unit_price_minor for line in shipped.lines)
        if expected != shipped.subtotal_minor:
            log.warning("shipment_subtotal_differs", shipment_id=shipped.shipment_id, event=shipped.subtotal_minor)
        days = terms.get(shipped.customer_id)
        invoice, caused = domain.issue_invoice(
            shipped,
            invoice_id=new_id(),
            number=domain.document_number("INV", at.year, number),
            tax_rate_bps=tax_rate_bps,
            terms_days=default_terms_days if days is None else days,
            at=at,
        )
        wallet = (invoice.customer_id, invoice.currency)
        invoice, used, more = domain.apply_customer_credit(invoice, available_minor=credit.get(wallet, 0), at=at)
        if used:
            credit[wallet] -= used
        made[n] = invoice
        written.append((invoice, [*caused, *more]))
    if written:
        await store.insert_invoices(conn, invoices=written)
    for invoice, _ in written:
        if invoice.credit_applied_minor:
            used = invoice.credit_applied_minor
            await store.add_credit(conn, customer_id=invoice.customer_id, currency=invoice.currency, delta_minor=-used)
            await store.add_settlements(conn, rows=[(invoice.id, "credit", None, used, at)])
    return made


async def credit_return(conn: Conn, returned: events.OrderReturned, *, at: datetime) -> domain.CreditNote | None:
    """Issue the credit note of one return (None when it was credited already)."""
    await store.lock_customer(conn, customer_id=returned.customer_id)
    if await store.credit_note_exists_for_return(conn, return_id=returned.return_id):
        return None
    invoice = domain.invoice_for_return(await store.lock_order_invoices(conn, order_id=returned.order_id))
    if invoice is None:
        raise NotFound(f"order {returned.order_id} has no invoice to credit return {returned.return_id} against")
    if invoice.customer_id != returned.customer_id:
        raise Conflict(f"return {returned.return_id} is not by the customer of invoice {invoice.number}")
    n = await store.next_number(conn, kind="CN", year=at.year)
    note, invoice, caused = domain.credit_return(
        returned,
        invoice,
        credit_note_id=new_id(),
        number=domain.document_number("CN", at.year, n),
        at=at,
        prior=await store.credited_on_invoice(conn, invoice_id=invoice.id),
    )
    await store.insert_credit_note(conn, note=note)
    await store.update_invoice(conn, invoice=invoice)
    if note.applied_to_invoice_minor:
        await store.add_settlements(
            conn, rows=[(invoice.id, "credit_note", note.id, note.applied_to_invoice_minor, at)]
        )
    if note.to_customer_credit_minor:
        await store.lock_credit(conn, customer_id=note.customer_id, currency=note.currency)
        await store.add_credit(
            conn, customer_id=note.customer_id, currency=note.currency, delta_minor=note.to_customer_credit_minor
        )
    await outbox.append_many(conn, caused)
    return note


def build(settings: Settings) -> Mapping[type[events.Event], Handler]:
    """The handlers of every event billing consumes, bound to the service's settings."""

    async def on_orders_shipped(conn: Conn, envelopes: list[Envelope]) -> None:
        shipments = [e.event for e in envelopes]
        assert all(isinstance(s, events.OrderShipped) for s in shipments)
        await invoice_shipments(
            conn,
            cast(list[events.OrderShipped], shipments),
            tax_rate_bps=settings.tax_rate_bps,
            default_terms_days=settings.default_payment_terms_days,
            at=datetime.now(UTC),
        )

    async def on_order_returned(conn: Conn, envelope: Envelope) -> None:
        event = envelope.event
        assert isinstance(event, events.OrderReturned)
        await credit_return(conn, event, at=datetime.now(UTC))

    async def on_dispute_opened(conn: Conn, envelope: Envelope) -> None:
        event = envelope.event
        assert isinstance(event, events.DisputeOpened)
        await store_dunning.open_dispute(
            conn,
            ticket_id=event.ticket_id,
            invoice_id=event.invoice_id,
            customer_id=event.customer_id,
            reason=event.reason,
        )

    async def on_dispute_resolved(conn: Conn, envelope: Envelope) -> None:
        event = envelope.event
        assert isinstance(event, events.DisputeResolved)
        await store_dunning.resolve_dispute(
            conn,
            ticket_id=event.ticket_id,
            invoice_id=event.invoice_id,
            customer_id=event.customer_id,
            at=event.resolved_at or envelope.time,
        )

    return {
        events.OrderShipped: Batched(on_orders_shipped),
        events.OrderReturned: on_order_returned,
        events.DisputeOpened: on_dispute_opened,
        events.DisputeResolved: on_dispute_resolved,
    }
