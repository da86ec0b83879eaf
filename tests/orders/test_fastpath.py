"""The paths of POST /orders (in stock) and of POST /orders/{id}/shipments that write in one statement while the
unlocked snapshot they decided from holds, and leave it to the locking path otherwise."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from backoffice.errors import Unavailable
from orders import fastpath, store, workflow
from orders.app import create_app
from orders.settings import Settings
from orders.store import OrderView
from tests.conftest import auth, relay_held_off, running, seq_scans
from tests.orders.conftest import STAFF, add_product, get_order, new_customer, place, placed, product, receive


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """This module's service with its relay kept off every outbox lane: the tests read the outbox rows (and their
    order, which crosses keys, as Kafka's partitions do not keep) that the writes committed."""
    async with relay_held_off(settings.database_url), running(create_app(settings)) as http:
        yield http


@pytest.fixture
def locking_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every POST /orders and POST /orders/{id}/shipments that took the locking path (as "/orders", "shipments")."""
    calls: list[str] = []
    original = workflow.run

    async def counted(request: Any, **kwargs: Any) -> Any:
        if request.url.path == "/orders":
            calls.append(request.url.path)
        elif request.url.path.endswith("/shipments"):
            calls.append("shipments")
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


def _tries(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[str, bool]]:
    """Every call of `fastpath.<name>`: who tried ("lane" or "route") and whether it answered."""
    calls: list[tuple[str, bool]] = []
    original = getattr(fastpath, name)

    async def counted(request: Any, **kwargs: Any) -> Any:
        answer = await original(request, **kwargs)
        calls.append(("route" if "endpoint" in request.scope else "lane", answer is not None))
        return answer

    monkeypatch.setattr(fastpath, name, counted)
    return calls


@pytest.fixture
def in_stock_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every try of the in-stock path."""
    return _tries(monkeypatch, "place_in_stock")


class TestWhatTheStatementWrites:
    """The snapshot writes take one JSON document (migration 0005) whose parts keep their exact text."""

    async def test_the_stored_answer_and_the_events_are_the_bytes_the_service_built(
        self, client: httpx.AsyncClient, settings: Settings, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=10)
        address = {
            "name": 'Zoë "Ærø" Ñandú \\ 東京 \u00e9',
            "line1": "Straße 1\nHof",
            "city": "Kraków",
            "country": "PL",
        }
        key = uuid.uuid4().hex
        answer = await place(client, {sku: 2}, headers=keyed(key), shipping_address=address)
        assert answer.status_code == 201, answer.text
        order = answer.json()
        assert order["shipping_address"] == address
        shipped = await _ship(client, order["id"], {sku: 1}, uuid.uuid4().hex)
        assert shipped.status_code == 201, shipped.text
        assert locking_calls == []

        conn = await asyncpg.connect(settings.database_url)
        try:
            stored = await conn.fetchval("SELECT body FROM idempotency_keys WHERE key = $1", key)
            rows = await conn.fetch(
                "SELECT o.event_id::text AS id, o.key, o.topic, o.headers, o.payload, e.type, e.data"
                " FROM outbox o JOIN order_events e USING (event_id) WHERE e.order_id = $1 ORDER BY o.seq",
                uuid.UUID(order["id"]),
            )
            address_column = await conn.fetchval(
                "SELECT shipping_address FROM orders WHERE id = $1", uuid.UUID(order["id"])
            )
        finally:
            await conn.close()
        assert stored == answer.content  # what a replay answers, byte for byte
        assert orjson.loads(address_column) == address
        assert [r["type"] for r in rows] == [h["type"] for h in shipped.json()["history"]]
        assert [orjson.loads(r["data"]) for r in rows] == [h["data"] for h in shipped.json()["history"]]
        for row in rows:
            assert row["key"] == order["id"]
            assert ["ce_id", row["id"]] in orjson.loads(row["headers"])
            data = orjson.loads(row["data"])
            assert orjson.loads(row["payload"]) == data  # the history keeps the payload published
            assert data["order_id"] == order["id"]
        placed_event = orjson.loads(rows[0]["payload"])
        assert placed_event["lines"][0]["sku"] == sku and placed_event["lines"][0]["quantity"] == 2


class TestExpressLane:
    """POST /orders goes through the express lane (`backoffice.express`) first: the lane answers an order in stock
    from a caller the route accepts; the route answers everything else, and does not try the in-stock path again."""

    async def test_an_order_in_stock_is_answered_by_the_lane_as_the_route_would_answer_it(
        self, client: httpx.AsyncClient, in_stock_calls: list[tuple[str, bool]]
    ) -> None:
        sku = await add_product(client, on_hand=10, price=300)
        response = await place(client, {sku: 2}, headers={**keyed(), "X-Correlation-ID": "lane-1"})
        assert response.status_code == 201, response.text
        assert in_stock_calls == [("lane", True)]
        assert response.headers["x-correlation-id"] == "lane-1"
        assert response.headers["content-type"] == "application/json"
        assert response.json() == await get_order(client, response.json()["id"])
        assert response.json()["total_minor"] == 600

    async def test_a_backorder_is_tried_once_by_the_lane_then_decided_by_the_locking_path(
        self, client: httpx.AsyncClient, in_stock_calls: list[tuple[str, bool]], locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=1)
        response = await place(client, {sku: 3}, allow_backorder=True)
        assert response.status_code == 201 and response.json()["status"] == "backordered"
        assert in_stock_calls == [("lane", False)]
        assert locking_calls == ["/orders"]

    async def test_what_the_route_refuses_the_lane_leaves_to_the_route(
        self, client: httpx.AsyncClient, in_stock_calls: list[tuple[str, bool]]
    ) -> None:
        sku = await add_product(client, on_hand=10)
        mine = new_customer()
        as_customer = auth("orders:read orders:write", customer_id=mine)
        assert (await place(client, {sku: 1}, headers={"X-No-Token": "1"})).status_code == 401
        assert (await place(client, {sku: 1}, headers={"Authorization": "Bearer nonsense"})).status_code == 401
        assert (await place(client, {sku: 1}, headers=auth("orders:read"))).status_code == 403
        assert (await place(client, {sku: 1}, headers=as_customer)).status_code == 404  # another customer's id
        invalid = await place(client, {sku: 0})
        assert invalid.status_code == 422
        assert [e["field"] for e in invalid.json()["errors"]] == ["body.lines.0.quantity"]
        assert in_stock_calls == []
        assert (await product(client, sku))["reserved"] == 0
        assert (await place(client, {sku: 1}, customer=mine, headers=as_customer)).status_code == 201
        assert in_stock_calls == [("lane", True)]


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The SKUs of every unlocked read of the catalogue (the in-stock path's snapshot)."""
    calls: list[list[str]] = []
    real = store.read_products

    async def counted(conn: Any, *, skus: Any) -> Any:
        calls.append(sorted(skus))
        return await real(conn, skus=skus)

    monkeypatch.setattr(store, "read_products", counted)
    return calls


@pytest.fixture
def ship_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every try of the one-statement shipment."""
    return _tries(monkeypatch, "ship")


class TestExpressShipments:
    """POST /orders/{id}/shipments goes through the express lane too, for a canonical order id."""

    async def test_a_shipment_is_answered_by_the_lane_and_one_it_cannot_make_by_the_locking_path(
        self, client: httpx.AsyncClient, ship_calls: list[tuple[str, bool]], locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=5)
        order = await placed(client, {sku: 3})
        shipped = await _ship(client, order["id"], {sku: 2})
        assert shipped.status_code == 201, shipped.text
        assert shipped.json() == await get_order(client, order["id"])
        assert ship_calls == [("lane", True)]
        too_many = await _ship(client, order["id"], {sku: 2})
        assert too_many.status_code == 409
        assert ship_calls == [("lane", True), ("lane", False)]
        assert locking_calls == ["shipments"]

    async def test_what_the_lane_does_not_take_the_route_answers(
        self, client: httpx.AsyncClient, ship_calls: list[tuple[str, bool]], locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=5)
        order = await placed(client, {sku: 2})
        body = {"lines": [{"sku": sku, "quantity": 1}]}
        customer = auth("orders:read orders:write", customer_id=order["customer_id"])
        path = f"/orders/{order['id']}/shipments"
        assert (await client.post(path, json=body, headers=customer)).status_code == 403
        assert (await client.post(path, json={"lines": []}, headers=STAFF)).status_code == 422
        assert (await client.post("/orders/not-a-uuid/shipments", json=body, headers=STAFF)).status_code == 422
        assert ship_calls == []
        upper = await client.post(f"/orders/{order['id'].upper()}/shipments", json=body, headers=STAFF)
        assert upper.status_code == 201, upper.text
        assert ship_calls == []
        assert locking_calls == ["shipments"]
        shipments = (await get_order(client, order["id"]))["shipments"]
        assert [[(li["sku"], li["quantity"]) for li in s["lines"]] for s in shipments] == [[(sku, 1)]]


class TestCatalogueHints:
    """The in-stock path recalls products it read a moment ago instead of reading them again; a hint that turns out
    wrong never decides an order, and is forgotten."""

    async def test_the_next_order_for_the_same_products_is_priced_without_reading_them(
        self, client: httpx.AsyncClient, reads: list[list[str]], locking_calls: list[str]
    ) -> None:
        a, b = await add_product(client, on_hand=10, price=250), await add_product(client, on_hand=10, price=100)
        first = await place(client, {a: 1, b: 2})
        again = await place(client, {b: 1, a: 3})
        assert first.status_code == again.status_code == 201
        assert reads == [sorted([a, b])]
        assert again.json()["total_minor"] == 3 * 250 + 100
        assert locking_calls == []
        shown = await product(client, a)
        assert (shown["on_hand"], shown["reserved"]) == (10, 4)

    async def test_stock_taken_since_the_hint_is_refused_by_the_write_and_the_hint_forgotten(
        self, client: httpx.AsyncClient, reads: list[list[str]], locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=5)
        assert (await place(client, {sku: 1})).status_code == 201  # remembered with 5 free
        await receive(client, sku, -3, "count")  # 1 free now; the hint still says 5
        refused = await place(client, {sku: 2})
        assert refused.status_code == 409, refused.text
        assert locking_calls == ["/orders"]
        assert (await place(client, {sku: 1})).status_code == 201  # read afresh, in stock
        assert reads == [[sku], [sku]]
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (2, 2)

    async def test_a_hint_too_short_for_an_order_is_forgotten_so_a_restock_is_seen(
        self, client: httpx.AsyncClient, reads: list[list[str]], locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=1)
        assert (await place(client, {sku: 1})).status_code == 201
        assert (await place(client, {sku: 1})).status_code == 409  # the hint (and the stock) say none left
        await receive(client, sku, 5)
        restocked = await place(client, {sku: 4})
        assert restocked.status_code == 201 and restocked.json()["status"] == "confirmed"
        assert locking_calls == ["/orders"]
        assert reads == [[sku], [sku]]


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


async def _ship(
    client: httpx.AsyncClient, order_id: str, lines: dict[str, int], key: str | None = None
) -> httpx.Response:
    body = {"lines": [{"sku": s, "quantity": q} for s, q in lines.items()], "carrier": "DHL"}
    return await client.post(f"/orders/{order_id}/shipments", json=body, headers=keyed(key))


def _read_once(monkeypatch: pytest.MonkeyPatch, view: OrderView) -> None:
    """The next read of the order's view (the shipment's snapshot) gives `view`; later ones read the database."""
    real = store.order_views
    pending = [view]

    async def stale(conn: Any, *, order_ids: Any) -> Any:
        found = await real(conn, order_ids=order_ids)
        if pending and view.order.id in found:
            found[view.order.id] = pending.pop()
        return found

    monkeypatch.setattr(store, "order_views", stale)


async def _view(settings: Settings, order_id: str) -> OrderView:
    conn = await asyncpg.connect(settings.database_url)
    try:
        found = await store.order_view(conn, order_id=order_id)
    finally:
        await conn.close()
    assert found is not None
    return found


class TestShipping:
    async def test_a_shipment_takes_one_statement_and_answers_what_the_order_then_reads(
        self, client: httpx.AsyncClient, locking_calls: list[str]
    ) -> None:
        first, second = await add_product(client, on_hand=10), await add_product(client, on_hand=10)
        order = await placed(client, {first: 3, second: 2})
        partly = await _ship(client, order["id"], {first: 2})
        assert partly.status_code == 201, partly.text
        assert partly.json() == await get_order(client, order["id"])
        assert partly.json()["status"] == "partially_shipped"
        rest = await _ship(client, order["id"], {first: 1, second: 2})
        assert rest.status_code == 201, rest.text
        assert rest.json() == await get_order(client, order["id"])
        assert rest.json()["status"] == "shipped"
        assert [len(s["lines"]) for s in rest.json()["shipments"]] == [1, 2]
        assert [h["type"] for h in rest.json()["history"]] == ["OrderPlaced", "OrderShipped", "OrderShipped"]
        assert locking_calls == []
        for sku, left in ((first, 7), (second, 8)):
            shown = await product(client, sku)
            assert (shown["on_hand"], shown["reserved"]) == (left, 0)

    async def test_what_cannot_ship_is_answered_by_the_locking_path(
        self, client: httpx.AsyncClient, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=5)
        order = await placed(client, {sku: 2})
        assert (await _ship(client, order["id"], {sku: 3})).status_code == 409
        assert (await _ship(client, str(uuid.uuid4()), {sku: 1})).status_code == 404
        assert locking_calls == ["shipments", "shipments"]
        assert (await product(client, sku))["reserved"] == 2

    async def test_a_key_sent_again_replays_the_shipment(self, client: httpx.AsyncClient, settings: Settings) -> None:
        sku = await add_product(client, on_hand=5)
        order = await placed(client, {sku: 2})
        key = uuid.uuid4().hex
        first = await _ship(client, order["id"], {sku: 1}, key)
        again = await _ship(client, order["id"], {sku: 1}, key)
        assert first.status_code == again.status_code == 201
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.content == first.content
        assert len((await get_order(client, order["id"]))["shipments"]) == 1
        assert await _stored_keys(settings, key) == 1
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (4, 1)


class TestShippingFromAStaleSnapshot:
    async def test_lines_shipped_after_the_read_write_nothing_and_the_locking_path_answers_409(
        self, client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sku = await add_product(client, on_hand=5)
        order = await placed(client, {sku: 3})
        before = await _view(settings, order["id"])
        assert (await _ship(client, order["id"], {sku: 2})).status_code == 201
        _read_once(monkeypatch, before)  # as if read before those 2 shipped: 3 seem left to ship
        key = uuid.uuid4().hex
        refused = await _ship(client, order["id"], {sku: 2}, key)
        assert refused.status_code == 409, refused.text
        assert await _stored_keys(settings, key) == 0
        now = await get_order(client, order["id"])
        assert len(now["shipments"]) == 1 and now["lines"][0]["shipped"] == 2
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (3, 1)

    async def test_an_invoice_recorded_after_the_read_sends_the_shipment_down_the_locking_path(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
        locking_calls: list[str],
    ) -> None:
        sku = await add_product(client, on_hand=5)
        order = await placed(client, {sku: 3})
        before = await _view(settings, order["id"])
        assert (await _ship(client, order["id"], {sku: 1})).status_code == 201
        _read_once(monkeypatch, replace(await _view(settings, order["id"]), history=before.history))
        shipped = await _ship(client, order["id"], {sku: 2})
        assert shipped.status_code == 201, shipped.text
        assert locking_calls == ["shipments"]
        assert shipped.json() == await get_order(client, order["id"])
        assert [h["type"] for h in shipped.json()["history"]] == ["OrderPlaced", "OrderShipped", "OrderShipped"]
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (2, 0)

    async def test_shipments_of_one_order_at_once_never_ship_more_than_it_has(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=10)
        order = await placed(client, {sku: 4})
        answers = await asyncio.gather(*(_ship(client, order["id"], {sku: 3}) for _ in range(6)))
        assert sorted(a.status_code for a in answers) == [201] + [409] * 5
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (7, 1)
        final = await get_order(client, order["id"])
        assert (final["status"], final["lines"][0]["shipped"], len(final["shipments"])) == ("partially_shipped", 3, 1)


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The order ids of each batch of shipments' reads; every batch waits 50 ms before it is read, so that the
    shipments sent together in a test make one batch (the first alone, the others the next)."""
    seen: list[list[str]] = []
    real = store.order_views

    async def lingering(conn: Any, *, order_ids: Any) -> Any:
        await asyncio.sleep(0.05)
        seen.append(list(order_ids))
        return await real(conn, order_ids=order_ids)

    monkeypatch.setattr(store, "order_views", lingering)
    return seen


class TestViewReads:
    """The orders that shipments arriving together ship are read in one statement."""

    async def test_shipments_sent_together_read_their_orders_in_one_batch_and_answer_what_each_order_reads(
        self, client: httpx.AsyncClient, batches: list[list[str]], locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=30)
        orders = [await placed(client, {sku: 3}) for _ in range(6)]
        answers = await asyncio.gather(
            *(_ship(client, order["id"], {sku: 1 + n % 2}) for n, order in enumerate(orders))
        )
        assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
        assert sorted(i for batch in batches for i in batch) == sorted(order["id"] for order in orders)
        assert max(len(batch) for batch in batches) > 1
        assert locking_calls == []
        for n, (order, answer) in enumerate(zip(orders, answers, strict=True)):
            assert answer.json() == await get_order(client, order["id"])
            assert answer.json()["lines"][0]["shipped"] == 1 + n % 2
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (30 - 9, 18 - 9)

    async def test_two_shipments_of_one_order_in_a_batch_ship_no_more_than_it_has(
        self, client: httpx.AsyncClient, batches: list[list[str]]
    ) -> None:
        sku = await add_product(client, on_hand=10)
        order = await placed(client, {sku: 4})
        first = await _ship(client, order["id"], {sku: 1})  # alone: the next ones wait for its batch
        answers = await asyncio.gather(*(_ship(client, order["id"], {sku: 3}) for _ in range(3)))
        assert first.status_code == 201
        assert sorted(a.status_code for a in answers) == [201, 409, 409]
        assert max(len(batch) for batch in batches) == 1  # one id per batch, however many ask for it
        final = await get_order(client, order["id"])
        assert (final["status"], final["lines"][0]["shipped"], len(final["shipments"])) == ("shipped", 4, 2)
        assert (await product(client, sku))["on_hand"] == 6

    async def test_a_batch_the_database_cannot_read_fails_each_of_its_shipments_and_the_next_batch_reads(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sku = await add_product(client, on_hand=10)
        orders = [await placed(client, {sku: 1}) for _ in range(4)]
        real = store.order_views
        failed: list[str] = []

        async def failing_once(conn: Any, *, order_ids: Any) -> Any:
            await asyncio.sleep(0.05)
            if not failed:
                failed.extend(order_ids)
                raise asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")
            return await real(conn, order_ids=order_ids)

        monkeypatch.setattr(store, "order_views", failing_once)
        answers = await asyncio.gather(*(_ship(client, order["id"], {sku: 1}) for order in orders[:3]))
        assert failed  # as the read alone would have: the unexpected error, 500
        assert [a.status_code for a in answers] == [500 if o["id"] in failed else 201 for o in orders[:3]]
        assert all(a.headers["content-type"] == "application/problem+json" for a in answers if a.status_code == 500)
        later = await _ship(client, orders[3]["id"], {sku: 1})
        assert later.status_code == 201, later.text
        for order in orders[:3]:  # nothing written for those whose read failed
            status = (await get_order(client, order["id"]))["status"]
            assert status == ("confirmed" if order["id"] in failed else "shipped")

    async def test_reads_waiting_when_the_reader_stops_fail_with_503_not_silence(self) -> None:
        reads = fastpath.ViewReads()
        started = asyncio.Event()

        class Pool:
            def acquire(self) -> Any:
                return self

            async def __aenter__(self) -> Any:
                started.set()
                await asyncio.sleep(3600)

            async def __aexit__(self, *exc: object) -> None:
                return None

        first = asyncio.ensure_future(reads.read(Pool(), str(uuid.uuid4())))  # type: ignore[arg-type]
        await started.wait()
        second = asyncio.ensure_future(reads.read(Pool(), str(uuid.uuid4())))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert reads._reader is not None
        reads._reader.cancel()
        for waiting in (first, second):
            with pytest.raises(Unavailable):
                await waiting
        assert reads._reader is None and reads._waiting == []


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The outcome of each order of each group commit; every group waits 50 ms before it is written, so that the
    orders sent together in a test make one group (the first alone, the others the next)."""
    seen: list[list[str]] = []
    original = fastpath.GroupCommit._write

    async def lingering(self: fastpath.GroupCommit, pool: Any, group: Any) -> Any:
        await asyncio.sleep(0.05)
        outcomes = await original(self, pool, group)
        seen.append([outcome for outcome, _ in outcomes])
        return outcomes

    monkeypatch.setattr(fastpath.GroupCommit, "_write", lingering)
    return seen


class TestGroupCommit:
    """In-stock orders that arrive together are written in one transaction, each in a savepoint of its own."""

    async def test_orders_sent_together_are_written_in_one_group_each_once(
        self, client: httpx.AsyncClient, settings: Settings, groups: list[list[str]], locking_calls: list[str]
    ) -> None:
        skus = [await add_product(client, on_hand=10) for _ in range(4)]
        customer = new_customer()
        answers = await asyncio.gather(
            *(place(client, {skus[n % 4]: 1 + n % 3}, customer=customer, headers=keyed()) for n in range(9))
        )
        assert [a.status_code for a in answers] == [201] * 9, [a.text for a in answers]
        assert sum(len(g) for g in groups) == 9 and max(len(g) for g in groups) > 1
        assert all(outcome == "written" for g in groups for outcome in g)
        assert locking_calls == []
        for sku in skus:
            ordered = sum(1 + n % 3 for n in range(9) if n % 4 == skus.index(sku))
            assert (await product(client, sku))["reserved"] == ordered
        conn = await asyncpg.connect(settings.database_url)
        try:
            ids = [r["id"] for r in await conn.fetch("SELECT id::text FROM orders WHERE customer_id = $1", customer)]
            events = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE key = ANY($1::text[])", [a.json()["id"] for a in answers]
            )
        finally:
            await conn.close()
        assert sorted(ids) == sorted(a.json()["id"] for a in answers)
        assert events == sum(len(a.json()["history"]) for a in answers)  # each event of each order, once
        for answer in answers:
            assert await get_order(client, answer.json()["id"]) == answer.json()

    async def test_an_order_whose_snapshot_no_longer_holds_leaves_the_rest_of_its_group_written(
        self,
        client: httpx.AsyncClient,
        groups: list[list[str]],
        locking_calls: list[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        skus = [await add_product(client, on_hand=10, price=700) for _ in range(5)]
        stale_sku = skus[2]
        real = store.read_products

        async def stale(conn: Any, *, skus: Any) -> Any:  # the price of one product, as read before it changed
            read = await real(conn, skus=skus)
            return {s: replace(p, unit_price_minor=1) if s == stale_sku else p for s, p in read.items()}

        monkeypatch.setattr(store, "read_products", stale)
        answers = await asyncio.gather(*(place(client, {sku: 2}, headers=keyed()) for sku in skus))
        assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
        assert [a.json()["total_minor"] for a in answers] == [1400] * 5  # the stale one at the catalogue price
        assert sorted(o for g in groups for o in g) == ["stale"] + ["written"] * 4
        assert any({"written", "stale"} <= set(g) for g in groups)  # written beside it, in its transaction
        assert locking_calls == ["/orders"]
        assert [(await product(client, sku))["reserved"] for sku in skus] == [2] * 5

    async def test_one_key_sent_many_times_in_one_group_places_one_order(
        self, client: httpx.AsyncClient, settings: Settings, groups: list[list[str]]
    ) -> None:
        sku = await add_product(client, on_hand=10)
        key = uuid.uuid4().hex
        customer = new_customer()
        answers = await asyncio.gather(
            *(place(client, {sku: 2}, customer=customer, headers=keyed(key)) for _ in range(6))
        )
        assert {a.status_code for a in answers} == {201}
        assert len({a.json()["id"] for a in answers}) == 1
        assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 5
        assert (await product(client, sku))["reserved"] == 2
        assert await _stored_keys(settings, key) == 1
        assert sorted(o for g in groups for o in g) == ["stored"] * 5 + ["written"]
        assert max(len(g) for g in groups) > 1

    async def test_shipments_sent_together_are_written_in_one_group(
        self, client: httpx.AsyncClient, settings: Settings, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=20)
        orders = [await placed(client, {sku: 2}) for _ in range(6)]
        seen: list[list[str]] = []
        original = fastpath.GroupCommit._write

        async def lingering(self: fastpath.GroupCommit, pool: Any, group: Any) -> Any:
            await asyncio.sleep(0.05)
            outcomes = await original(self, pool, group)
            seen.append([f"{self.kind} {outcome}" for outcome, _ in outcomes])
            return outcomes

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fastpath.GroupCommit, "_write", lingering)
            answers = await asyncio.gather(*(_ship(client, order["id"], {sku: 2}) for order in orders))
        assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
        assert sorted(o for g in seen for o in g) == ["ship written"] * 6
        assert max(len(g) for g in seen) > 1
        assert locking_calls == []
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (20 - 12, 0)
        for order in orders:
            assert (await get_order(client, order["id"]))["status"] == "shipped"

    async def test_a_lone_write_is_made_by_its_single_function_with_the_outcome_a_group_would_give_it(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
        locking_calls: list[str],
    ) -> None:
        alone: list[str] = []
        original = fastpath.GroupCommit._write_alone

        async def recorded(self: fastpath.GroupCommit, pool: Any, waiting: Any) -> Any:
            outcome = await original(self, pool, waiting)
            alone.append(f"{self.kind} {outcome[0]}")
            return outcome

        monkeypatch.setattr(fastpath.GroupCommit, "_write_alone", recorded)
        sku = await add_product(client, on_hand=10)
        key, customer = uuid.uuid4().hex, new_customer()
        first = await place(client, {sku: 2}, customer=customer, headers=keyed(key))
        again = await place(client, {sku: 2}, customer=customer, headers=keyed(key))
        assert first.status_code == again.status_code == 201, again.text
        assert again.headers.get("idempotent-replayed") == "true" and again.content == first.content

        held = uuid.uuid4().hex  # a request in flight holds this key: the lone write waits 1 ms, then its own way
        conn = await asyncpg.connect(settings.database_url)
        try:
            holder = conn.transaction()
            await holder.start()
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('staff' || chr(31) || $1, 0))", held)
            waiting = asyncio.create_task(place(client, {sku: 1}, headers=keyed(held)))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            await holder.rollback()
            third = await waiting
        finally:
            await conn.close()
        assert third.status_code == 201, third.text
        assert await _stored_keys(settings, held) == 1

        assert (await _ship(client, first.json()["id"], {sku: 2})).status_code == 201
        order = await placed(client, {sku: 2})
        before = await _view(settings, order["id"])
        assert (await _ship(client, order["id"], {sku: 1})).status_code == 201
        _read_once(monkeypatch, before)  # as if read before that shipment: its write no longer holds
        assert (await _ship(client, order["id"], {sku: 1})).status_code == 201
        assert alone == [
            "place written",
            "place stored",
            "place busy",
            "ship written",
            "place written",
            "ship written",
            "ship stale",
        ]
        assert locking_calls == ["shipments"]
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (10 - 4, 1)

    async def test_orders_and_shipments_waiting_together_are_written_in_one_transaction(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=40)
        to_ship = [await placed(client, {sku: 2}) for _ in range(3)]
        together = _together(monkeypatch)
        writing = _first_write_lingers(monkeypatch)
        first = asyncio.ensure_future(place(client, {sku: 1}, headers=keyed()))
        await asyncio.wait_for(writing.wait(), 5)  # the writer is busy: what follows waits and makes the next groups
        answers = await asyncio.gather(
            *(place(client, {sku: 1}, headers=keyed()) for _ in range(3)),
            *(_ship(client, order["id"], {sku: 2}) for order in to_ship),
        )
        assert [a.status_code for a in [await first, *answers]] == [201] * 7, [a.text for a in answers]
        assert together == [[["place written"] * 3, ["ship written"] * 3]]
        assert locking_calls == []
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (40 - 6, 4)
        for answer in answers:  # the orders placed, then the shipped ones, each as its answer showed it
            assert await get_order(client, answer.json()["id"]) == answer.json()
        assert {answer.json()["status"] for answer in answers[3:]} == {"shipped"}

    async def test_a_pair_of_groups_locks_the_products_of_both_once(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, locking_calls: list[str]
    ) -> None:
        """One statement locks the products of both groups (migration 0013); neither set write locks them again."""
        counted: list[dict[str, int]] = []

        async def write_together(pool: Any, taken: Any) -> Any:
            (first, a), (second, b) = taken
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL track_functions = 'pl'")
                rows = await conn.fetch(fastpath.WRITE_SNAPSHOT_GROUPS, *first.arguments(a), *second.arguments(b))
                counted.append(await _calls(conn))
            outcomes = [(row["outcome"], row if row["outcome"] == "stored" else None) for row in rows]
            return [outcomes[: len(a)], outcomes[len(a) :]]

        monkeypatch.setattr(fastpath._Writer, "_write_together", staticmethod(write_together))
        skus = [await add_product(client, on_hand=40) for _ in range(2)]
        to_ship = [await placed(client, {skus[0]: 1, skus[1]: 1}) for _ in range(2)]
        writing = _first_write_lingers(monkeypatch)
        first = asyncio.ensure_future(place(client, {skus[0]: 1}, headers=keyed()))
        await asyncio.wait_for(writing.wait(), 5)
        answers = await asyncio.gather(
            *(place(client, {skus[1]: 1, skus[0]: 2}, headers=keyed()) for _ in range(2)),
            *(_ship(client, order["id"], {skus[0]: 1, skus[1]: 1}) for order in to_ship),
        )
        assert [a.status_code for a in [await first, *answers]] == [201] * 5, [a.text for a in answers]
        assert counted == [{"_lock_products": 1, "_place_group": 1, "_ship_group": 1}]
        assert locking_calls == []
        shown = [await product(client, sku) for sku in skus]
        assert [(p["on_hand"], p["reserved"]) for p in shown] == [(40 - 2, 2 + 1 + 4 - 2), (40 - 2, 2 + 2 - 2)]

    async def test_two_groups_the_server_refuses_together_are_written_write_by_write(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=20)
        to_ship = [await placed(client, {sku: 2}) for _ in range(2)]

        refusals: list[list[str]] = []

        async def refused(pool: Any, taken: Any) -> Any:
            refusals.append([kind.kind for kind, _ in taken])
            raise asyncpg.InternalServerError("refused")

        monkeypatch.setattr(fastpath._Writer, "_write_together", staticmethod(refused))
        writing = _first_write_lingers(monkeypatch)
        first = asyncio.ensure_future(place(client, {sku: 1}, headers=keyed()))
        await asyncio.wait_for(writing.wait(), 5)
        answers = await asyncio.gather(
            *(place(client, {sku: 1}, headers=keyed()) for _ in range(2)),
            *(_ship(client, order["id"], {sku: 2}) for order in to_ship),
        )
        assert [a.status_code for a in [await first, *answers]] == [201] * 5, [a.text for a in answers]
        assert refusals == [["place", "ship"]]
        assert locking_calls == []  # each by its own single statement
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (20 - 4, 3)

    async def test_a_group_the_server_refuses_is_written_order_by_order(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, locking_calls: list[str]
    ) -> None:
        async def refused(self: fastpath.GroupCommit, pool: Any, group: Any) -> Any:
            raise asyncpg.InternalServerError("refused")

        monkeypatch.setattr(fastpath.GroupCommit, "_write", refused)
        sku = await add_product(client, on_hand=10)
        answers = await asyncio.gather(*(place(client, {sku: 1}, headers=keyed()) for _ in range(3)))
        assert [a.status_code for a in answers] == [201] * 3
        assert locking_calls == []  # each by its own single statement
        assert (await product(client, sku))["reserved"] == 3

    async def test_a_group_whose_fate_is_unknown_is_never_written_again(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, locking_calls: list[str]
    ) -> None:
        async def lost(self: fastpath.GroupCommit, pool: Any, group: Any) -> Any:
            raise ConnectionResetError("the connection was lost while the group was sent")

        monkeypatch.setattr(fastpath.GroupCommit, "_write", lost)
        sku = await add_product(client, on_hand=10)
        answer = await place(client, {sku: 1}, headers=keyed())
        assert answer.status_code >= 500
        assert locking_calls == []
        assert (await product(client, sku))["reserved"] == 0


def _together(monkeypatch: pytest.MonkeyPatch) -> list[list[list[str]]]:
    """Each pair of groups written in one transaction: each group's '<kind> <outcome>' of each write."""
    seen: list[list[list[str]]] = []
    original = fastpath._Writer._write_together

    async def recorded(pool: Any, taken: Any) -> Any:
        results = await original(pool, taken)
        seen.append(
            [[f"{kind.kind} {o}" for o, _ in outcomes] for (kind, _), outcomes in zip(taken, results, strict=True)]
        )
        return results

    monkeypatch.setattr(fastpath._Writer, "_write_together", staticmethod(recorded))
    return seen


def _first_write_lingers(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The next group of one kind alone waits 100 ms before it is written; the event is set once it waits."""
    writing = asyncio.Event()
    original = fastpath.GroupCommit._write

    async def lingering(self: fastpath.GroupCommit, pool: Any, group: Any) -> Any:
        if not writing.is_set():
            writing.set()
            await asyncio.sleep(0.1)
        return await original(self, pool, group)

    monkeypatch.setattr(fastpath.GroupCommit, "_write", lingering)
    return writing


@dataclass
class SetWrites:
    """Each group of more than one write (orders or shipments), written with the functions it calls counted
    (`set_writes`)."""

    # The next group waits, before it is written, until this many orders wait behind it (or 5 s): the test then
    # knows exactly which orders make the group after it.
    gather: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    # each group: each order's outcome, its orders' ids, and the calls of the functions below that returned while
    # it was written
    seen: list[tuple[list[str], list[str], dict[str, int]]] = field(default_factory=list)
    # each group: the sequential scans of the tables its writes look orders up in, while it was written
    scans: list[dict[str, int]] = field(default_factory=list)

    COUNTED = ("_lock_products", "_place_group", "place_order_in_stock", "_ship_group", "ship_order_from_snapshot")
    SCANNED = ("orders", "order_lines")


@pytest.fixture
def set_writes(monkeypatch: pytest.MonkeyPatch) -> SetWrites:
    state = SetWrites()
    original = fastpath.GroupCommit._write

    async def counted(self: fastpath.GroupCommit, pool: Any, group: Any) -> Any:
        state.entered.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(self._waiting) < state.gather and loop.time() < deadline:
            await asyncio.sleep(0.005)
        state.gather = 0
        if len(group) == 1:
            return await original(self, pool, group)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL track_functions = 'pl'")
            before = await _calls(conn)
            scanned = {table: await seq_scans(conn, table) for table in SetWrites.SCANNED}
            rows = await conn.fetch(fastpath.WRITE_SNAPSHOTS, *self.arguments(group))
            scans = {t: n for t in SetWrites.SCANNED if (n := await seq_scans(conn, t) - scanned[t])}
            after = await _calls(conn)
        ids = [w.document["order"]["id"] if self.kind == "place" else w.document["order_id"] for w in group]
        calls = {name: after[name] - before.get(name, 0) for name in after if after[name] > before.get(name, 0)}
        state.seen.append(([r["outcome"] for r in rows], ids, calls))
        state.scans.append(scans)
        return [(r["outcome"], r if r["outcome"] == "stored" else None) for r in rows]

    monkeypatch.setattr(fastpath.GroupCommit, "_write", counted)
    return state


async def _calls(conn: Any) -> dict[str, int]:
    """The calls of the counted functions this connection has made and not yet reported (PostgreSQL counts a call
    that returned, not one that raised)."""
    rows = await conn.fetch(
        "SELECT funcname, calls FROM pg_stat_xact_user_functions WHERE funcname = ANY($1::text[])",
        list(SetWrites.COUNTED),
    )
    return {r["funcname"]: r["calls"] for r in rows}


async def _after_one(
    state: SetWrites, lone: Awaitable[httpx.Response], rest: list[Awaitable[httpx.Response]]
) -> tuple[httpx.Response, list[httpx.Response]]:
    """`lone` sent alone, and while it is written, `rest`, which then make one group (`SetWrites.gather`)."""
    state.entered.clear()  # set by any write made before
    state.gather = len(rest)
    first = asyncio.ensure_future(lone)
    await asyncio.wait_for(state.entered.wait(), 5)
    answers = await asyncio.gather(*rest)
    return await first, list(answers)


async def _placed_after_one(
    client: httpx.AsyncClient,
    state: SetWrites,
    first: dict[str, int],
    rest: list[tuple[dict[str, int], dict[str, str]]],
    *,
    customer: str = "",
) -> tuple[httpx.Response, list[httpx.Response]]:
    """`first` placed alone, and while it is written, `rest` (lines, headers), which then make one group."""
    return await _after_one(
        state,
        place(client, first, headers=keyed()),
        [place(client, lines, customer=customer or None, headers=headers) for lines, headers in rest],
    )


class TestGroupWrittenAsOneSet:
    """A group of in-stock orders that can all be written is written as one set, each table by one statement
    (migration 0008); any other group is written order by order, each with the outcome it has on its own."""

    async def test_a_group_every_order_of_which_can_be_written_is_written_as_one_set_as_the_loop_would(
        self, client: httpx.AsyncClient, settings: Settings, set_writes: SetWrites, locking_calls: list[str]
    ) -> None:
        skus = [await add_product(client, on_hand=10) for _ in range(3)]
        keys = [uuid.uuid4().hex if n % 3 else None for n in range(6)]  # some sent without a key
        rest = [({skus[n % 3]: 1, skus[(n + 1) % 3]: 2}, keyed(k) if k else STAFF) for n, k in enumerate(keys)]
        customer = new_customer()
        first, answers = await _placed_after_one(client, set_writes, {skus[0]: 1}, rest, customer=customer)
        assert [a.status_code for a in [first, *answers]] == [201] * 7, [a.text for a in answers]
        assert locking_calls == []
        [(outcomes, ids, calls)] = set_writes.seen
        assert outcomes == ["written"] * 6
        assert calls == {"_lock_products": 1, "_place_group": 1}  # locked once; no order written on its own
        assert sorted(ids) == sorted(a.json()["id"] for a in answers)

        assert [(await product(client, sku))["reserved"] for sku in skus] == [1 + 6, 6, 6]
        for answer in answers:
            assert await get_order(client, answer.json()["id"]) == answer.json()
        for (lines, headers), answer in zip(rest, answers, strict=True):
            if "Idempotency-Key" in headers:
                again = await place(client, lines, customer=customer, headers=headers)
                assert again.headers.get("idempotent-replayed") == "true" and again.content == answer.content
        conn = await asyncpg.connect(settings.database_url)
        try:
            published = await conn.fetch(
                "SELECT o.key, o.payload, e.data, e.type FROM outbox o JOIN order_events e USING (event_id)"
                " WHERE o.key = ANY($1::text[]) ORDER BY o.seq",
                ids,
            )
            history = await conn.fetch(
                "SELECT order_id::text FROM order_events WHERE order_id = ANY($1::uuid[]) ORDER BY seq", ids
            )
            stored = await conn.fetchval(
                "SELECT count(*) FROM idempotency_keys WHERE key = ANY($1::text[])", [k for k in keys if k]
            )
        finally:
            await conn.close()
        assert [r["key"] for r in published] == ids  # in the group's order, as the loop writes them
        assert [r["order_id"] for r in history] == ids
        assert {r["type"] for r in published} == {"OrderPlaced"}
        assert all(orjson.loads(r["payload"]) == orjson.loads(r["data"]) for r in published)
        assert stored == 4

    async def test_a_group_short_of_stock_together_is_written_order_by_order(
        self, client: httpx.AsyncClient, set_writes: SetWrites, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=4)  # each order fits what was read; the four after the first do not
        first, answers = await _placed_after_one(client, set_writes, {sku: 1}, [({sku: 1}, keyed()) for _ in range(4)])
        assert first.status_code == 201
        [(outcomes, _, calls)] = set_writes.seen
        assert outcomes == ["written"] * 3 + ["stale"]
        assert calls == {"_lock_products": 1, "place_order_in_stock": 3}  # the set raised; so did the stale order
        assert locking_calls == ["/orders"]  # the stale one, decided by the locking path
        assert sorted(a.status_code for a in answers) == [201] * 3 + [409]  # short, and no backorder asked for
        assert (await product(client, sku))["reserved"] == 4

    async def test_a_group_with_a_key_held_by_a_request_in_flight_is_written_order_by_order(
        self, client: httpx.AsyncClient, settings: Settings, set_writes: SetWrites
    ) -> None:
        sku = await add_product(client, on_hand=10)
        held = uuid.uuid4().hex
        conn = await asyncpg.connect(settings.database_url)
        try:
            holder = conn.transaction()
            await holder.start()
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('staff' || chr(31) || $1, 0))", held)
            placing = asyncio.create_task(
                _placed_after_one(client, set_writes, {sku: 1}, [({sku: 1}, keyed()), ({sku: 1}, keyed(held))])
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not set_writes.seen and loop.time() < deadline:
                await asyncio.sleep(0.01)
            await holder.rollback()
            first, answers = await placing
        finally:
            await conn.close()
        [(outcomes, _, calls)] = set_writes.seen
        assert sorted(outcomes) == ["busy", "written"]
        assert calls == {"_lock_products": 1, "place_order_in_stock": 1}  # the set raised; so did the busy order
        assert [a.status_code for a in [first, *answers]] == [201] * 3
        assert await _stored_keys(settings, held) == 1
        assert (await product(client, sku))["reserved"] == 3


async def _shipped_after_one(
    client: httpx.AsyncClient,
    state: SetWrites,
    first: tuple[str, dict[str, int]],
    rest: list[tuple[str, dict[str, int]]],
) -> tuple[httpx.Response, list[tuple[httpx.Response, str]]]:
    """`first` (order id, lines) shipped alone, and while it is written, `rest`, which then make one group; each of
    those answers with the Idempotency-Key it was sent with."""
    keys = [uuid.uuid4().hex for _ in rest]
    lone, answers = await _after_one(
        state,
        _ship(client, *first),
        [_ship(client, order_id, lines, key) for (order_id, lines), key in zip(rest, keys, strict=True)],
    )
    return lone, list(zip(answers, keys, strict=True))


class TestShipmentsWrittenAsOneSet:
    """A group of shipments that can all be written is written as one set (migration 0009), as a group of orders
    is; any other group is written shipment by shipment, each with the outcome it has on its own."""

    async def test_a_group_every_shipment_of_which_can_be_written_is_written_as_one_set_as_the_loop_would(
        self, client: httpx.AsyncClient, settings: Settings, set_writes: SetWrites, locking_calls: list[str]
    ) -> None:
        skus = [await add_product(client, on_hand=20) for _ in range(2)]
        orders = [await placed(client, {skus[0]: 2, skus[1]: 1}) for _ in range(5)]
        rest = [(o["id"], {skus[0]: 2, skus[1]: 1} if n % 2 else {skus[0]: 1}) for n, o in enumerate(orders[1:])]
        first, answers = await _shipped_after_one(client, set_writes, (orders[0]["id"], {skus[0]: 2}), rest)
        assert [a.status_code for a in [first, *(a for a, _ in answers)]] == [201] * 5, [a.text for a, _ in answers]
        assert locking_calls == []
        [(outcomes, ids, calls)] = set_writes.seen
        assert outcomes == ["written"] * 4
        assert calls == {"_lock_products": 1, "_ship_group": 1}  # locked once; no shipment written on its own
        # on the generic plans the writes keep (migration 0014), each order and its lines are found by key
        assert set_writes.scans == [{}]
        assert sorted(ids) == sorted(order_id for order_id, _ in rest)

        shipped = [2 + 1 + 2 + 1 + 2, 0 + 0 + 1 + 0 + 1]  # per sku: the first shipment, then the group's
        for sku, out in zip(skus, shipped, strict=True):
            shown = await product(client, sku)
            assert (shown["on_hand"], shown["reserved"]) == (20 - out, 5 * (2 if sku == skus[0] else 1) - out)
        for (order_id, lines), (answer, key) in zip(rest, answers, strict=True):
            assert await get_order(client, order_id) == answer.json()
            assert answer.json()["status"] == ("shipped" if len(lines) == 2 else "partially_shipped")
            again = await _ship(client, order_id, lines, key)
            assert again.headers.get("idempotent-replayed") == "true" and again.content == answer.content
        conn = await asyncpg.connect(settings.database_url)
        try:
            published = await conn.fetch(
                "SELECT o.key, o.payload, e.data, e.type FROM outbox o JOIN order_events e USING (event_id)"
                " WHERE o.key = ANY($1::text[]) AND e.type = 'OrderShipped' ORDER BY o.seq",
                ids,
            )
            shipments = await conn.fetchval("SELECT count(*) FROM shipments WHERE order_id = ANY($1::uuid[])", ids)
        finally:
            await conn.close()
        assert [r["key"] for r in published] == ids  # in the group's order, as the loop writes them
        assert all(orjson.loads(r["payload"]) == orjson.loads(r["data"]) for r in published)
        assert shipments == 4

    async def test_a_group_with_an_order_changed_since_its_read_is_written_shipment_by_shipment(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        set_writes: SetWrites,
        monkeypatch: pytest.MonkeyPatch,
        locking_calls: list[str],
    ) -> None:
        """The set's check of each order against what its shipment read (migration 0011): here only the history
        differs, as when an invoice was recorded after the read."""
        sku = await add_product(client, on_hand=20)
        lone, changed, other = [await placed(client, {sku: 2}) for _ in range(3)]
        before = await _view(settings, changed["id"])
        assert (await _ship(client, changed["id"], {sku: 1})).status_code == 201
        _read_once(monkeypatch, replace(await _view(settings, changed["id"]), history=before.history))
        rest = [(changed["id"], {sku: 1}), (other["id"], {sku: 2})]
        first, answers = await _shipped_after_one(client, set_writes, (lone["id"], {sku: 2}), rest)
        assert [a.status_code for a in [first, *(a for a, _ in answers)]] == [201] * 3, [a.text for a, _ in answers]
        [(outcomes, ids, calls)] = set_writes.seen
        assert dict(zip(ids, outcomes, strict=True)) == {changed["id"]: "stale", other["id"]: "written"}
        assert calls == {"_lock_products": 1, "ship_order_from_snapshot": 1}  # the set raised; so did the stale one
        assert locking_calls == ["shipments"]
        history = (await get_order(client, changed["id"]))["history"]
        assert [h["type"] for h in history] == ["OrderPlaced", "OrderShipped", "OrderShipped"]
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (20 - 6, 0)

    async def test_a_group_shipping_one_order_twice_is_written_shipment_by_shipment(
        self, client: httpx.AsyncClient, set_writes: SetWrites, locking_calls: list[str]
    ) -> None:
        sku = await add_product(client, on_hand=20)
        lone, twice, other = [await placed(client, {sku: 2}) for _ in range(3)]
        rest = [(twice["id"], {sku: 1}), (twice["id"], {sku: 1}), (other["id"], {sku: 2})]
        first, answers = await _shipped_after_one(client, set_writes, (lone["id"], {sku: 2}), rest)
        assert [a.status_code for a in [first, *(a for a, _ in answers)]] == [201] * 4, [a.text for a, _ in answers]
        [(outcomes, _, calls)] = set_writes.seen
        # both shipments of `twice` read it before either was written: the second no longer holds, and the locking
        # path ships it
        assert sorted(outcomes) == ["stale", "written", "written"]
        assert calls == {"_lock_products": 1, "ship_order_from_snapshot": 2}  # the set raised; so did the stale one
        assert locking_calls == ["shipments"]
        for order in (lone, twice, other):
            assert (await get_order(client, order["id"]))["status"] == "shipped"
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"]) == (20 - 6, 0)


class TestLinger:
    """A group transaction starts at most every `linger` seconds unless `fill` writes are waiting; a write after a
    quiet spell is written at once (`fastpath._Writer`)."""

    @staticmethod
    def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
        sizes: list[int] = []

        async def write(self: fastpath.GroupCommit, pool: Any, group: Any) -> Any:
            sizes.append(len(group))
            return [("written", None)] * len(group)

        monkeypatch.setattr(fastpath.GroupCommit, "_write", write)
        return sizes

    @staticmethod
    def _submit(group: fastpath.GroupCommit) -> asyncio.Task[Any]:
        return asyncio.ensure_future(group.submit(None, {}, b"", []))  # type: ignore[arg-type]

    async def test_a_write_after_a_quiet_spell_is_written_at_once_and_the_next_waits_for_its_group_to_fill(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sizes = self._recorded(monkeypatch)
        writer = fastpath._Writer(linger=60.0, fill=3)  # a linger no test waits out
        group = fastpath.GroupCommit("place", writer)
        assert await asyncio.wait_for(self._submit(group), 5) == ("written", None)
        waiting = [self._submit(group), self._submit(group)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting) and sizes == [1]  # within the linger, two of three
        waiting.append(self._submit(group))  # the third fills the group: it is written at once
        assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [("written", None)] * 3
        assert sizes == [1, 3]

    async def test_writes_short_of_the_fill_are_written_together_once_the_linger_is_over(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sizes = self._recorded(monkeypatch)
        writer = fastpath._Writer(linger=0.2, fill=100)
        place, ship = fastpath.GroupCommit("place", writer), fastpath.GroupCommit("ship", writer)
        await asyncio.wait_for(self._submit(place), 5)
        monkeypatch.setattr(fastpath._Writer, "_write_together", _together_sizes(sizes))
        waiting = [self._submit(place), self._submit(ship), self._submit(place)]
        assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [("written", None)] * 3
        assert sizes == [1, 2, 1]  # the first alone; then both kinds, in one transaction

    async def test_a_writer_stopped_while_lingering_hands_each_write_back_to_be_written_on_its_own(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sizes = self._recorded(monkeypatch)
        writer = fastpath._Writer(linger=60.0, fill=10)
        group = fastpath.GroupCommit("ship", writer)
        await asyncio.wait_for(self._submit(group), 5)
        waiting = self._submit(group)
        await asyncio.sleep(0.05)
        assert writer._task is not None and not waiting.done()
        writer._task.cancel()
        assert await asyncio.wait_for(waiting, 5) == ("retry", None)
        assert sizes == [1] and writer._task is None

    def test_the_service_writes_at_once_unless_told_to_linger(self) -> None:
        def writer(settings: Settings) -> fastpath._Writer:
            app = SimpleNamespace(state=SimpleNamespace(settings=settings))
            group = fastpath.GroupCommit.of(app, "place")
            assert group is not None and fastpath.GroupCommit.of(app, "ship") is not None
            assert app.state.group_writer.kinds == [group, app.state.group_commits["ship"]]  # one writer for both
            return group._shared

        default = writer(Settings())
        assert (default.linger, default.fill) == (0.0, 8)
        told = writer(Settings(group_linger_ms=15, group_fill=4))
        assert (told.linger, told.fill) == (0.015, 4)


def _together_sizes(sizes: list[int]) -> Any:
    async def write_together(pool: Any, taken: Any) -> Any:
        sizes.extend(len(group) for _, group in taken)
        return [[("written", None)] * len(group) for _, group in taken]

    return staticmethod(write_together)
