"""The in-stock path of POST /orders: one statement when the unlocked snapshot holds, the locking path otherwise."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import pytest

from orders import store, workflow
from orders.settings import Settings
from tests.orders.conftest import STAFF, add_product, place, product


@pytest.fixture
def locking_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every POST /orders that took the locking path."""
    calls: list[str] = []
    original = workflow.run

    async def counted(request: Any, **kwargs: Any) -> Any:
        if request.url.path == "/orders":
            calls.append(request.url.path)
        return await original(request, **kwargs)

    monkeypatch.setattr(workflow, "run", counted)
    return calls


def keyed(key: str | None = None) -> dict[str, str]:
    return {**STAFF, "Idempotency-Key": key or uuid.uuid4().hex}


async def _stored_keys(settings: Settings, key: str) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", key))
    finally:
        await conn.close()


class TestWhichPath:
    async def test_an_order_in_stock_never_takes_the_locking_path_with_or_without_a_key(
        self, client: httpx.AsyncClient, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=10)
        assert (await place(client, {sku: 2})).status_code == 201
        assert (await place(client, {sku: 3}, headers=keyed())).status_code == 201
        assert locking_calls == []
        assert (await product(client, sku))["reserved"] == 5

    async def test_a_backorder_and_a_short_line_are_decided_by_the_locking_path(
        self, client: httpx.AsyncClient, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=1)
        backordered = await place(client, {sku: 3}, allow_backorder=True)
        assert backordered.status_code == 201 and backordered.json()["status"] == "backordered"
        assert (await place(client, {sku: 3})).status_code == 409
        assert locking_calls == ["/orders", "/orders"]


class TestStaleSnapshot:
    async def test_stock_taken_after_the_read_writes_nothing_and_the_locking_path_answers_409(
        self, client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sku = await add_product(client, on_hand=4)
        assert (await place(client, {sku: 3})).status_code == 201
        real = store.read_products

        async def stale(conn: Any, *, skus: Any) -> Any:  # as if read before the 3 were reserved
            return {s: replace(p, reserved=0) for s, p in (await real(conn, skus=skus)).items()}

        monkeypatch.setattr(store, "read_products", stale)
        key = uuid.uuid4().hex
        refused = await place(client, {sku: 2}, headers=keyed(key))
        assert refused.status_code == 409, refused.text
        assert await _stored_keys(settings, key) == 0
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (4, 3)

    async def test_a_price_changed_after_the_read_is_charged_at_the_catalogue_price(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=4, price=700)
        real = store.read_products

        async def stale(conn: Any, *, skus: Any) -> Any:
            return {s: replace(p, unit_price_minor=1) for s, p in (await real(conn, skus=skus)).items()}

        monkeypatch.setattr(store, "read_products", stale)
        order = await place(client, {sku: 2}, headers=keyed())
        assert order.status_code == 201, order.text
        assert order.json()["lines"][0]["unit_price_minor"] == 700
        assert order.json()["total_minor"] == 1400
        assert locking_calls == ["/orders"]
        assert (await product(client, sku))["reserved"] == 2


class TestConcurrency:
    async def test_concurrent_orders_never_oversell(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=5)
        answers = await asyncio.gather(*(place(client, {sku: 1}, headers=keyed()) for _ in range(12)))
        assert sorted(a.status_code for a in answers) == [201] * 5 + [409] * 7
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"], shown["available"]) == (5, 5, 0)

    async def test_one_key_sent_many_times_at_once_places_one_order(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        sku = await add_product(client, on_hand=10)
        key = uuid.uuid4().hex
        customer = f"cust-{key[:8]}"
        answers = await asyncio.gather(
            *(place(client, {sku: 2}, customer=customer, headers=keyed(key)) for _ in range(8))
        )
        assert {a.status_code for a in answers} == {201}
        assert len({a.json()["id"] for a in answers}) == 1
        assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 7
        assert (await product(client, sku))["reserved"] == 2
        assert await _stored_keys(settings, key) == 1
