"""Event consumers: invoices from shipments, credit notes from returns, disputes that pause dunning.

Each handler runs inside the consumer's transaction, which also records the event in the inbox; a shipment or
return already billed (the same event delivered again, or re-published under a new id) is skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import structlog

from backoffice import events, outbox
from backoffice.consumer import Handler
from backoffice.db import Conn
from backoffice.envelope import Envelope
from backoffice.errors import Conflict, NotFound
from billing import domain, store, store_dunning
from billing.settings import Settings

log = structlog.get_logger("billing.handlers")


async def invoice_shipment(
    conn: Conn, shipped: events.OrderShipped, *, tax_rate_bps: int, default_terms_days: int, at: datetime
) -> domain.Invoice | None:
    """Issue the invoice of one shipment (None when it was invoiced already), using any customer credit."""
    terms = await store.lock_customer(conn, customer_id=shipped.customer_id)
    started = await store.start_shipment_invoice(
        conn, shipment_id=shipped.shipment_id, customer_id=shipped.customer_id, currency=shipped.currency, year=at.year
    )
    if started is None:
        return None
    expected = sum(line.quantity * line.unit_price_minor for line in shipped.lines)
    if expected != shipped.subtotal_minor:
        log.warning("shipment_subtotal_differs", shipment_id=shipped.shipment_id, event=shipped.subtotal_minor)
    invoice, caused = domain.issue_invoice(
        shipped,
        invoice_id=str(uuid.uuid4()),
        number=domain.document_number("INV", at.year, started.number),
        tax_rate_bps=tax_rate_bps,
        terms_days=default_terms_days if terms is None else terms,
        at=at,
    )
    invoice, used, more = domain.apply_customer_credit(invoice, available_minor=started.credit_minor, at=at)
    await store.insert_invoice(conn, invoice=invoice, caused=[*caused, *more])
    if used:
        await store.add_credit(conn, customer_id=invoice.customer_id, currency=invoice.currency, delta_minor=-used)
        await store.add_settlements(conn, rows=[(invoice.id, "credit", None, used, at)])
    return invoice


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
        credit_note_id=str(uuid.uuid4()),
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

    async def on_order_shipped(conn: Conn, envelope: Envelope) -> None:
        event = envelope.event
        assert isinstance(event, events.OrderShipped)
        await invoice_shipment(
            conn,
            event,
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
        events.OrderShipped: on_order_shipped,
        events.OrderReturned: on_order_returned,
        events.DisputeOpened: on_dispute_opened,
        events.DisputeResolved: on_dispute_resolved,
    }
