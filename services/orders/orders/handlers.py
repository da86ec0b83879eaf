"""Consumers of billing.events: the billing state of an order (invoiced, paid) and its history."""

from __future__ import annotations

from typing import cast

import structlog

from backoffice import events
from backoffice.db import Conn
from backoffice.envelope import Envelope
from orders import store

log = structlog.get_logger("orders.handlers")


async def on_invoices_issued(conn: Conn, envelopes: list[Envelope]) -> None:
    """Remember each invoice of a run under its order, in one statement (invoices of other orders, or none, are
    not ours)."""
    issued = [(cast(events.InvoiceIssued, envelope.event), envelope) for envelope in envelopes]
    recorded = await store.record_invoices(conn, invoices=[(event.order_id, envelope) for event, envelope in issued])
    for (event, _), order_id in zip(issued, recorded, strict=True):
        if order_id is None:
            log.info("invoice_ignored", invoice_id=event.invoice_id, order_id=event.order_id)


async def on_invoice_paid(conn: Conn, envelope: Envelope) -> None:
    """Mark the invoice paid; its order comes from the event or else from the InvoiceIssued seen before."""
    event = envelope.event
    assert isinstance(event, events.InvoicePaid)
    if await store.record_payment(conn, order_id=event.order_id, envelope=envelope) is None:
        log.info("payment_ignored", invoice_id=event.invoice_id, order_id=event.order_id)
