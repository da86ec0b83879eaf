"""Billing events in, journal entries out: exactly one entry per event id, in the transaction of its inbox row."""

from __future__ import annotations

import uuid

from backoffice import events
from backoffice.consumer import Batched, Handler
from backoffice.db import Conn
from backoffice.envelope import Envelope
from backoffice.ids import new_uuid
from ledger import domain, store


async def on_billing_event(conn: Conn, envelope: Envelope) -> None:
    """Post the event's entry and announce it (`on_billing_events` of one)."""
    await on_billing_events(conn, [envelope])


async def on_billing_events(conn: Conn, envelopes: list[Envelope]) -> None:
    """Post the entries of a run of billing events and announce them, in event order, in one statement; an event id
    posted already posts nothing (unique source_event_id). A bill to an expense account not yet in the chart opens
    the account first."""
    entries = []
    for envelope in envelopes:
        event = envelope.event
        draft = domain.posting_for(event, occurred_at=envelope.time)
        if draft is None:
            continue
        if isinstance(event, events.BillReceived):
            current = await store.get_account(conn, code=event.expense_account)
            opened = domain.expense_account_for(event.expense_account, current)
            if opened is not None:
                await store.insert_account(conn, account=opened)
        entries.append(
            domain.post(draft, entry_id=new_uuid(), posted_at=events.now(), source_event_id=uuid.UUID(envelope.id))
        )
    if entries:
        await store.post_entries(conn, entries=entries)


_POSTING = Batched(on_billing_events)  # one instance for every type: a run of mixed billing events is one call
HANDLERS: dict[type[events.Event], Handler] = {cls: _POSTING for cls in domain.POSTED_EVENTS}
