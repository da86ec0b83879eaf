"""Billing events in, journal entries out: exactly one entry per event id, in the transaction of its inbox row."""

from __future__ import annotations

import uuid

from backoffice import events
from backoffice.consumer import Handler
from backoffice.db import Conn
from backoffice.envelope import Envelope
from ledger import domain, store


async def on_billing_event(conn: Conn, envelope: Envelope) -> None:
    """Post the event's entry and announce it; a redelivered event id posts nothing (unique source_event_id)."""
    event = envelope.event
    draft = domain.posting_for(event, occurred_at=envelope.time)
    if draft is None:
        return
    if isinstance(event, events.BillReceived):
        current = await store.get_account(conn, code=event.expense_account)
        opened = domain.expense_account_for(event.expense_account, current)
        if opened is not None:
            await store.insert_account(conn, account=opened)
    entry = domain.post(draft, entry_id=uuid.uuid4(), posted_at=events.now(), source_event_id=uuid.UUID(envelope.id))
    await store.post_entry(conn, entry=entry)


HANDLERS: dict[type[events.Event], Handler] = {cls: on_billing_event for cls in domain.POSTED_EVENTS}
