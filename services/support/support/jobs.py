"""The SLA job: flag each clock past its target once and publish `TicketSLABreached`, batch by batch."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from fastapi import FastAPI

from backoffice import events, outbox
from support import domain, store


async def run_sla(pool: asyncpg.Pool, *, as_of: datetime, batch_size: int) -> list[events.TicketSLABreached]:
    """Report every clock past its target at `as_of` not yet reported; one transaction per batch."""
    found: list[events.TicketSLABreached] = []
    while True:
        async with pool.acquire() as conn, conn.transaction():
            tickets = await store.sla_candidates(conn, as_of=as_of, limit=batch_size)
            batch: list[events.Event] = []
            for ticket in tickets:
                outcome = domain.sla_breaches(ticket, as_of=as_of)
                if outcome.events:
                    await store.save_ticket(conn, ticket=outcome.ticket)
                    batch.extend(outcome.events)
            await outbox.append_many(conn, batch)
        found.extend(e for e in batch if isinstance(e, events.TicketSLABreached))
        if len(tickets) < batch_size or not batch:
            return found


async def sla_timer(app: FastAPI) -> None:
    """The timed run, as of now."""
    await run_sla(app.state.pool, as_of=events.now(), batch_size=app.state.settings.sla_batch_size)
