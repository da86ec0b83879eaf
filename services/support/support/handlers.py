"""Event consumers: every customer event feeds the timeline; returns and serious overdues open or update a ticket."""

from __future__ import annotations

from collections.abc import Mapping

from backoffice import events, outbox
from backoffice.consumer import Batched, Handler
from backoffice.db import Conn
from backoffice.envelope import Envelope
from backoffice.ids import new_id
from support import domain, store, timeline
from support.settings import SlaTarget

SYSTEM_AUTHOR = "support-bot"

TIMELINE_EVENTS: tuple[type[events.Event], ...] = (
    events.OrderPlaced,
    events.OrderConfirmed,
    events.OrderShipped,
    events.OrderCancelled,
    events.InvoiceIssued,
    events.PaymentReceived,
    events.CreditApplied,
    events.InvoicePaid,
    events.CreditNoteIssued,
    events.TicketOpened,
    events.TicketStatusChanged,
    events.TicketResolved,
    events.DisputeOpened,
    events.DisputeResolved,
)
TROUBLE_EVENTS: tuple[type[events.Event], ...] = (events.OrderReturned, events.InvoiceOverdue)


async def on_events(conn: Conn, envelopes: list[Envelope]) -> None:
    """Learn whose orders and invoices these are, and add each event to its customer's timeline (one statement for
    a poll's run of them: `Batched`)."""
    items = [item for envelope in envelopes if (item := timeline.item_for(envelope)) is not None]
    refs = [ref for envelope in envelopes for ref in timeline.refs_for(envelope.event)]
    await store.remember_refs(conn, refs=refs, items=items)


async def hear_trouble(conn: Conn, envelope: Envelope, *, policy: Mapping[str, SlaTarget]) -> None:
    """Open a ticket for the order or invoice, or add a note to the one still open for it; a signal heard
    before (same return, same overdue level) changes nothing."""
    trouble = domain.trouble_from(envelope.event)
    if trouble is None:
        return
    await store.lock_link(conn, link=trouble.link, link_id=trouble.link_id)
    if await store.signal_seen(conn, ref=trouble.ref):
        return
    at = events.now()
    ticket = await store.find_unresolved_for(conn, link=trouble.link, link_id=trouble.link_id)
    if ticket is None:
        opened = domain.open_ticket(trouble.draft, ticket_id=new_id(), policy=policy, at=at)
        ticket = opened.ticket
        await store.insert_ticket(conn, ticket=ticket)
        await outbox.append_many(conn, opened.events)
    message, outcome = domain.add_message(
        ticket,
        author=SYSTEM_AUTHOR,
        kind="system",
        visibility="internal",
        body=trouble.note,
        message_id=new_id(),
        at=at,
    )
    await store.insert_message(conn, message=message)
    await store.save_ticket(conn, ticket=outcome.ticket)
    await store.record_signal(conn, ref=trouble.ref, ticket_id=ticket.id, event_id=envelope.id)


def build(policy: Mapping[str, SlaTarget]) -> dict[type[events.Event], Handler]:
    """The handler of each event the service consumes."""

    async def on_trouble(conn: Conn, envelope: Envelope) -> None:
        await on_events(conn, [envelope])
        await hear_trouble(conn, envelope, policy=policy)

    timeline_events = Batched(on_events)
    handlers: dict[type[events.Event], Handler] = {cls: timeline_events for cls in TIMELINE_EVENTS}
    handlers.update({cls: on_trouble for cls in TROUBLE_EVENTS})
    return handlers
