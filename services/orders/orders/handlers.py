"""Consumers of billing.events: the billing state of an order (invoiced, paid) and its history."""

from __future__ import annotations

import uuid

import structlog

from backoffice import events
from backoffice.db import Conn
from backoffice.envelope import Envelope
from orders import store

log = structlog.get_logger("orders.handlers")


async def on_invoice_issued(conn: Conn, envelope: Envelope) -> None:
    """Remember the invoice under its order (invoices of other orders, or none, are not ours)."""
    event = envelope.event
    assert isinstance(event, events.InvoiceIssued)
    order_id = await _our_order(conn, event.order_id)
    if order_id is None:
        log.info("invoice_ignored", invoice_id=event.invoice_id, order_id=event.order_id)
        return
    await store.record_invoice(conn, order_id=order_id, invoice=event)
    await store.append_history(conn, envelopes=[envelope], order_id=order_id)


async def on_invoice_paid(conn: Conn, envelope: Envelope) -> None:
    """Mark the invoice paid; its order comes from the event or else from the InvoiceIssued seen before."""
    event = envelope.event
    assert isinstance(event, events.InvoicePaid)
    order_id = await _our_order(conn, event.order_id) or await store.order_of_invoice(conn, invoice_id=event.invoice_id)
    if order_id is None:
        log.info("payment_ignored", invoice_id=event.invoice_id, order_id=event.order_id)
        return
    await store.record_payment(conn, order_id=order_id, paid=event)
    await store.append_history(conn, envelopes=[envelope], order_id=order_id)


async def _our_order(conn: Conn, order_id: str | None) -> str | None:
    """`order_id` normalised when it names one of our orders, else None."""
    if not order_id:
        return None
    try:
        normal = str(uuid.UUID(order_id))
    except ValueError:
        return None
    return normal if await store.order_exists(conn, order_id=normal) else None
