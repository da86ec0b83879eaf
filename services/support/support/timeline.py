"""The customer timeline (pure): which consumed events become an item, and how each one reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backoffice import events
from backoffice.envelope import Envelope
from support.domain import money


@dataclass(frozen=True)
class Item:
    event_id: str
    customer_id: str
    type: str
    occurred_at: datetime
    subject: str
    summary: str


def _items(lines: Any) -> int:
    return sum(int(line.quantity) for line in lines)


def _order_placed(e: events.OrderPlaced) -> str:
    return f"Order placed: {_items(e.lines)} item(s), {money(e.total_minor, e.currency)} ({e.status})"


def _order_shipped(e: events.OrderShipped) -> str:
    via = f" via {e.carrier}" if e.carrier else ""
    tracking = f", tracking {e.tracking_number}" if e.tracking_number else ""
    return f"Shipped {_items(e.lines)} item(s) of order {e.order_id}{via}{tracking}"


def _order_returned(e: events.OrderReturned) -> str:
    return f"Returned {_items(e.lines)} item(s) of order {e.order_id}, {money(e.subtotal_minor, e.currency)}"


def _invoice_issued(e: events.InvoiceIssued) -> str:
    return f"Invoice {e.number} issued: {money(e.total_minor, e.currency)}, due {e.due_at.date().isoformat()}"


def _payment(e: events.PaymentReceived) -> str:
    return f"Payment received: {money(e.amount_minor, e.currency)}"


def _credit_applied(e: events.CreditApplied) -> str:
    return f"Credit of {money(e.amount_minor, e.currency)} applied to invoice {e.invoice_id}"


def _invoice_paid(e: events.InvoicePaid) -> str:
    return f"Invoice {e.invoice_id} paid: {money(e.total_minor, e.currency)}"


def _credit_note(e: events.CreditNoteIssued) -> str:
    return f"Credit note {e.number} issued: {money(e.total_minor, e.currency)}"


def _overdue(e: events.InvoiceOverdue) -> str:
    return f"Invoice {e.invoice_id} overdue by {e.days_overdue} day(s): {money(e.balance_minor, e.currency)} open"


def _ticket(verb: str) -> Callable[[Any], str]:
    def summary(e: events._TicketState) -> str:
        title = f' "{e.subject}"' if e.subject else ""
        if verb == "changed":
            return f"Ticket{title} moved from {e.previous_status or '?'} to {e.status}"
        return f"Ticket{title} {verb} ({e.priority} priority)"

    return summary


# (summary, when it happened); events left out here (bills, SLA breaches, ledger) never reach a timeline.
_SUMMARIES: dict[type[events.Event], tuple[Callable[[Any], str], Callable[[Any], datetime | None]]] = {
    events.OrderPlaced: (_order_placed, lambda e: e.placed_at),
    events.OrderConfirmed: (lambda e: f"Order {e.order_id} confirmed", lambda e: e.confirmed_at),
    events.OrderShipped: (_order_shipped, lambda e: e.shipped_at),
    events.OrderCancelled: (lambda e: f"Order {e.order_id} cancelled: {e.reason}", lambda e: e.cancelled_at),
    events.OrderReturned: (_order_returned, lambda e: e.returned_at),
    events.InvoiceIssued: (_invoice_issued, lambda e: e.issued_at),
    events.PaymentReceived: (_payment, lambda e: e.received_at),
    events.CreditApplied: (_credit_applied, lambda e: e.applied_at),
    events.InvoicePaid: (_invoice_paid, lambda e: e.paid_at),
    events.CreditNoteIssued: (_credit_note, lambda e: e.issued_at),
    events.InvoiceOverdue: (_overdue, lambda e: None),
    events.TicketOpened: (_ticket("opened"), lambda e: e.occurred_at),
    events.TicketStatusChanged: (_ticket("changed"), lambda e: e.occurred_at),
    events.TicketResolved: (_ticket("resolved"), lambda e: e.occurred_at),
    events.DisputeOpened: (lambda e: f"Dispute opened on invoice {e.invoice_id}", lambda e: e.opened_at),
    events.DisputeResolved: (
        lambda e: f"Dispute on invoice {e.invoice_id} resolved: {e.outcome}",
        lambda e: e.resolved_at,
    ),
}


def item_for(envelope: Envelope) -> Item | None:
    """The timeline item an event makes, or None when it is not a customer's story (or has no customer)."""
    event = envelope.event
    known = _SUMMARIES.get(type(event))
    customer_id = getattr(event, "customer_id", None)
    if known is None or not customer_id:
        return None
    summarize, when = known
    return Item(
        event_id=envelope.id,
        customer_id=str(customer_id),
        type=event.name,
        occurred_at=when(event) or envelope.time,
        subject=envelope.subject,
        summary=summarize(event)[:500],
    )


def refs_for(event: events.Event) -> list[tuple[str, str, str]]:
    """(kind, id, customer_id) of the orders and invoices an event tells us the owner of."""
    customer_id = getattr(event, "customer_id", None)
    if not customer_id:
        return []
    out = []
    order_id = getattr(event, "order_id", None)
    invoice_id = getattr(event, "invoice_id", None)
    if event.service in ("orders", "billing") and order_id:
        out.append(("order", str(order_id), str(customer_id)))
    if event.service == "billing" and invoice_id:
        out.append(("invoice", str(invoice_id), str(customer_id)))
    return out
