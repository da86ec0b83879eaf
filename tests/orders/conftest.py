"""Fixtures of the orders tests: one app per module (its own database), and small request helpers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from orders.app import create_app
from orders.settings import Settings
from tests.conftest import BOOTSTRAP, auth, running, topics_fixture

STAFF = auth("orders:read orders:write inventory:write", sub="staff")
ADDRESS = {"line1": "1 Main Street", "city": "Springfield", "postal_code": "12345", "country": "US"}


@pytest.fixture(scope="module")
async def settings(
    request: pytest.FixtureRequest, make_database: Callable[[str], Awaitable[str]], topics: str
) -> Settings:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return Settings(
        database_url=await make_database(f"orders_{name}"),
        kafka_bootstrap_servers=BOOTSTRAP,
        topic_prefix=topics,
        db_pool_max=12,
        outbox_poll_interval_s=0.2,
    )


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running(create_app(settings)) as http:
        yield http


def new_sku(prefix: str = "SKU") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def new_customer() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


async def add_product(
    client: httpx.AsyncClient, *, on_hand: int, price: int = 1250, currency: str = "USD", sku: str | None = None
) -> str:
    sku = sku or new_sku()
    body = {"sku": sku, "name": f"Widget {sku}", "unit_price_minor": price, "currency": currency, "on_hand": on_hand}
    response = await client.post("/products", json=body, headers=STAFF)
    assert response.status_code == 201, response.text
    return sku


async def place(
    client: httpx.AsyncClient,
    lines: dict[str, int],
    *,
    customer: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {
        "customer_id": customer or new_customer(),
        "currency": "USD",
        "lines": [{"sku": sku, "quantity": q} for sku, q in lines.items()],
        "shipping_address": ADDRESS,
        **extra,
    }
    return await client.post("/orders", json=body, headers=headers or STAFF)


async def placed(client: httpx.AsyncClient, lines: dict[str, int], **extra: Any) -> dict[str, Any]:
    response = await place(client, lines, **extra)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def product(client: httpx.AsyncClient, sku: str) -> dict[str, Any]:
    response = await client.get(f"/products/{sku}", headers=STAFF)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def receive(client: httpx.AsyncClient, sku: str, delta: int, reason: str = "receipt") -> dict[str, Any]:
    response = await client.post(
        f"/products/{sku}/stock-adjustments", json={"delta": delta, "reason": reason}, headers=STAFF
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def ship(client: httpx.AsyncClient, order_id: str, lines: dict[str, int], **extra: Any) -> httpx.Response:
    body = {"lines": [{"sku": s, "quantity": q} for s, q in lines.items()], **extra}
    return await client.post(f"/orders/{order_id}/shipments", json=body, headers=STAFF)


async def get_order(client: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    response = await client.get(f"/orders/{order_id}", headers=STAFF)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


topics = topics_fixture("orders")
