"""Billing fixtures: one app per test module (its own database), and helpers to make shipments and returns."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from fastapi import FastAPI

from backoffice import events
from backoffice.envelope import header_map
from backoffice.topics import delete_topics, ensure_topics, events_topic
from billing import domain, handlers
from billing.app import create_app
from billing.settings import Settings
from tests.conftest import BOOTSTRAP, auth, published, running

STAFF = auth("billing:read billing:write")
ADMIN = auth("billing:read billing:write billing:admin")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def shipped(
    customer_id: str,
    lines: list[tuple[str, int, int]],
    *,
    currency: str = "EUR",
    order_id: str | None = None,
    shipment_id: str | None = None,
) -> events.OrderShipped:
    """An `OrderShipped` with lines `(sku, quantity, unit_price_minor)`."""
    return events.OrderShipped(
        order_id=order_id or new_id("ord"),
        shipment_id=shipment_id or new_id("shp"),
        customer_id=customer_id,
        currency=currency,
        lines=tuple(events.Line(sku=s, quantity=q, unit_price_minor=p) for s, q, p in lines),
        subtotal_minor=sum(q * p for _, q, p in lines),
        carrier="dhl",
        tracking_number="T1",
        shipped_at=datetime.now(UTC),
    )


def returned(
    order_id: str, customer_id: str, lines: list[tuple[str, int, int]], *, currency: str = "EUR"
) -> events.OrderReturned:
    return events.OrderReturned(
        order_id=order_id,
        return_id=new_id("ret"),
        customer_id=customer_id,
        currency=currency,
        lines=tuple(events.Line(sku=s, quantity=q, unit_price_minor=p) for s, q, p in lines),
        subtotal_minor=sum(q * p for _, q, p in lines),
        restocked=True,
        returned_at=datetime.now(UTC),
    )


@dataclass
class Billing:
    app: FastAPI
    http: httpx.AsyncClient
    settings: Settings

    @property
    def pool(self) -> asyncpg.Pool:
        pool: asyncpg.Pool = self.app.state.pool
        return pool

    async def invoice(self, event: events.OrderShipped, *, at: datetime | None = None) -> domain.Invoice:
        """Issue the invoice of a shipment through the handler's own code, in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            invoice = await handlers.invoice_shipment(
                conn,
                event,
                tax_rate_bps=self.settings.tax_rate_bps,
                default_terms_days=self.settings.default_payment_terms_days,
                at=at or datetime.now(UTC),
            )
        assert invoice is not None
        return invoice

    async def credit(self, event: events.OrderReturned) -> domain.CreditNote:
        async with self.pool.acquire() as conn, conn.transaction():
            note = await handlers.credit_return(conn, event, at=datetime.now(UTC))
        assert note is not None
        return note

    async def published(self, subject: str) -> list[tuple[str, dict[str, Any]]]:
        """`(event name, data)` of the events billing published keyed by `subject`, in order, once its outbox holds
        none of them any more."""
        topic = events_topic("billing", prefix=self.settings.topic_prefix)
        return [
            (r.info["ce_type"].split(".")[2], orjson.loads(r.value or b"null"))
            for r in await published(self.settings.database_url, topic, subject)
        ]


async def start_billing(
    make_database: Callable[[str], Awaitable[str]], topics: str, name: str, **overrides: Any
) -> AsyncIterator[Billing]:
    settings = Settings(
        database_url=await make_database(name),
        kafka_bootstrap_servers=BOOTSTRAP,
        topic_prefix=topics,
        outbox_poll_interval_s=0.2,
        **overrides,
    )
    app = create_app(settings)
    async with running(app) as http:
        yield Billing(app=app, http=http, settings=settings)


@pytest.fixture(scope="package")
async def topics(topics: str) -> AsyncIterator[str]:
    """Topics of billing's tests alone, so the events they make never reach other services' consumers
    (the ledger's, or the end-to-end fleet's, which share the session's prefix)."""
    prefix = f"{topics}bt."
    await ensure_topics(BOOTSTRAP, prefix=prefix, partitions=3)
    yield prefix
    await delete_topics(BOOTSTRAP, prefix=prefix)


@pytest.fixture(scope="module")
async def billing(
    request: pytest.FixtureRequest, make_database: Callable[[str], Awaitable[str]], topics: str
) -> AsyncIterator[Billing]:
    name = "billing_" + request.module.__name__.rsplit(".", 1)[-1]
    async for b in start_billing(make_database, topics, name):
        yield b


def record_type(record: Any) -> str:
    return header_map(record.headers)["ce_type"].split(".")[2]
