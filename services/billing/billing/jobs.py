"""The dunning job: past-due invoices become overdue and each dunning level is announced once."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from fastapi import FastAPI

from backoffice import outbox
from backoffice.db import Conn
from billing import domain, store, store_dunning
from billing.schemas import DunningRun


async def dun_invoice(conn: Conn, *, invoice_id: str, as_of: datetime) -> tuple[bool, int, bool]:
    """Dun one invoice under its row lock; return (newly overdue, notices emitted, skipped for a dispute)."""
    invoice = await store.lock_invoice(conn, invoice_id=invoice_id)
    if invoice is None:
        return False, 0, False
    emitted = await store_dunning.dunning_levels(conn, invoice_id=invoice_id)
    dunned, notices = domain.dun(invoice, as_of=as_of, emitted=emitted)
    days = domain.days_overdue(invoice.due_at, as_of)
    recorded = await store_dunning.record_notices(
        conn, invoice_id=invoice_id, levels=[n.dunning_level for n in notices], days=days, as_of=as_of
    )
    notices = [n for n in notices if n.dunning_level in recorded]
    if dunned != invoice:
        await store.update_invoice(conn, invoice=dunned)
    await outbox.append_many(conn, notices)
    return invoice.status != "overdue" and dunned.status == "overdue", len(notices), invoice.disputed


async def run_dunning(pool: asyncpg.Pool, *, as_of: datetime) -> DunningRun:
    """Dun every past-due invoice as of `as_of`, one transaction per invoice."""
    async with pool.acquire() as conn:
        candidates = await store_dunning.dunning_candidates(conn, as_of=as_of)
    marked = notices = skipped = 0
    for invoice_id in candidates:
        async with pool.acquire() as conn, conn.transaction():
            overdue, emitted, disputed = await dun_invoice(conn, invoice_id=invoice_id, as_of=as_of)
        marked += overdue
        notices += emitted
        skipped += disputed
    return DunningRun(
        as_of=as_of, examined=len(candidates), marked_overdue=marked, notices=notices, skipped_disputed=skipped
    )


async def dunning_timer(app: FastAPI) -> None:
    """The timed run (every `job_interval_s`), as of now."""
    await run_dunning(app.state.pool, as_of=datetime.now(UTC))
