"""Fixtures of the ledger tests: a migrated database, billing events in envelopes, entries posted directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from backoffice import db, events
from backoffice.envelope import Envelope
from ledger import handlers

MIGRATIONS = Path(handlers.__file__).parent / "migrations"
T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


async def migrated(dsn: str) -> str:
    await db.migrate_dsn(dsn, db.service_migrations(MIGRATIONS, service="ledger"))
    return dsn


@pytest.fixture(scope="module")
async def books(make_database: Callable[[str], Awaitable[str]], request: pytest.FixtureRequest) -> str:
    """A migrated ledger database of this test module; returns its DSN."""
    return await migrated(await make_database(f"ledger_{request.module.__name__.rsplit('.', 1)[-1]}"))


@pytest.fixture
async def conn(books: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(books)
    try:
        yield connection
    finally:
        await connection.close()


def uid(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def invoice_issued(
    *, customer: str, subtotal: int, tax: int = 0, currency: str = "EUR", at: datetime = T0, invoice: str | None = None
) -> events.InvoiceIssued:
    return events.InvoiceIssued(
        invoice_id=invoice or uid("inv-"),
        number=f"INV-2026-{uuid.uuid4().int % 1_000_000:06d}",
        customer_id=customer,
        currency=currency,
        lines=(),
        subtotal_minor=subtotal,
        tax_minor=tax,
        total_minor=subtotal + tax,
        issued_at=at,
        due_at=at + timedelta(days=30),
    )


def payment_received(
    *, customer: str, applied: dict[str, int], unapplied: int = 0, currency: str = "EUR", at: datetime = T0
) -> events.PaymentReceived:
    return events.PaymentReceived(
        payment_id=uid("pay-"),
        customer_id=customer,
        currency=currency,
        amount_minor=sum(applied.values()) + unapplied,
        applied=tuple(events.Allocation(invoice_id=i, amount_minor=a) for i, a in applied.items()),
        unapplied_minor=unapplied,
        received_at=at,
    )


def bill_received(
    *, vendor: str, subtotal: int, tax: int = 0, account: str = "6000", currency: str = "EUR"
) -> events.BillReceived:
    return events.BillReceived(
        bill_id=uid("bill-"),
        vendor_id=vendor,
        bill_number=uid("B-"),
        currency=currency,
        expense_account=account,
        subtotal_minor=subtotal,
        tax_minor=tax,
        total_minor=subtotal + tax,
        due_at=T0 + timedelta(days=30),
    )


def envelope(event: events.Event, *, at: datetime = T0) -> Envelope:
    return Envelope(event=event, time=at)


async def deliver(conn: asyncpg.Connection, env: Envelope) -> None:
    """Apply one event through the handler, in its own transaction (as the consumer does)."""
    async with conn.transaction():
        await handlers.on_billing_event(conn, env)


async def entries_of(conn: asyncpg.Connection, env: Envelope) -> list[Any]:
    return list(await conn.fetch("SELECT * FROM journal_entries WHERE source_event_id = $1", uuid.UUID(env.id)))
