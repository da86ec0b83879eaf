"""Fixtures of the ledger tests: a migrated database, billing events in envelopes, entries posted directly."""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from backoffice import db, events
from backoffice.envelope import Envelope
from devstack.procs import free_port
from ledger import handlers
from ledger.app import create_app
from ledger.settings import Settings
from tests.conftest import BOOTSTRAP, auth, running, topics_fixture

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


@pytest.fixture(scope="module")
async def client(books: str, topics: str) -> AsyncIterator[httpx.AsyncClient]:
    """The ledger app of this test module (lifespan running: relay, consumer) and an HTTP client for it."""
    settings = Settings(
        database_url=books,
        kafka_bootstrap_servers=BOOTSTRAP,
        topic_prefix=topics,
        billing_url=f"http://127.0.0.1:{free_port()}",
        billing_attempts=2,
        billing_backoff_s=0.05,
        billing_timeout_s=1.0,
    )
    async with running(create_app(settings)) as http:
        yield http


READ = auth("ledger:read")
WRITE = auth("ledger:write ledger:read")


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


def currency() -> str:
    """A currency code no other test uses, so reports per currency see only this test's entries."""
    return "".join(random.choice(string.ascii_uppercase) for _ in range(3))


async def post_entry(
    http: httpx.AsyncClient,
    lines: list[tuple[str, int]],
    *,
    currency: str = "EUR",
    effective_at: datetime | None = None,
    **extra: Any,
) -> httpx.Response:
    """Post a manual entry: positive amounts are debits, negative ones credits."""
    body: dict[str, Any] = {
        "currency": currency,
        "lines": [
            {"account": account, "debit_minor": amount} if amount > 0 else {"account": account, "credit_minor": -amount}
            for account, amount in lines
        ],
        **extra,
    }
    if effective_at is not None:
        body["effective_at"] = effective_at.isoformat()
    return await http.post("/journal-entries", json=body, headers={**WRITE, "Idempotency-Key": str(uuid.uuid4())})


async def open_account(http: httpx.AsyncClient, type_: str = "asset") -> str:
    code = f"9{uuid.uuid4().int % 10**8:08d}"
    response = await http.post("/accounts", json={"code": code, "name": f"Test {code}", "type": type_}, headers=WRITE)
    assert response.status_code == 201, response.text
    return code


topics = topics_fixture("ledger")
