"""The orders API against the real PostgreSQL: stock, reservation, backorders, fulfilment, reads and auth."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.conftest import auth
from tests.orders.conftest import (
    ADDRESS,
    STAFF,
    add_product,
    fields,
    get_order,
    new_customer,
    new_sku,
    place,
    placed,
    problem,
    product,
    receive,
    ship,
)


def lines_of(order: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {line["sku"]: line for line in order["lines"]}


class TestProducts:
    async def test_a_new_product_shows_on_hand_reserved_and_available(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=7, price=999)
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"], shown["available"]) == (7, 0, 7)
        assert (shown["unit_price_minor"], shown["currency"]) == (999, "USD")

    async def test_a_duplicate_sku_is_409(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=1)
        body = {"sku": sku, "name": "again", "unit_price_minor": 1, "currency": "USD", "on_hand": 1}
        problem(await client.post("/products", json=body, headers=STAFF), 409)

    async def test_bad_product_fields_are_named(self, client: httpx.AsyncClient) -> None:
        body = {"sku": "", "name": "x", "unit_price_minor": 1.5, "currency": "usd", "on_hand": -1, "cost": 3}
        found = fields(problem(await client.post("/products", json=body, headers=STAFF), 422))
        assert found == {"body.sku", "body.unit_price_minor", "body.currency", "body.on_hand", "body.cost"}

    async def test_a_receipt_adds_stock_and_is_recorded(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=2)
        adjusted = await receive(client, sku, 5)
        assert adjusted["product"]["on_hand"] == 7
        assert (adjusted["delta"], adjusted["reason"]) == (5, "receipt")
        assert (await product(client, sku))["available"] == 7

    async def test_a_count_correction_cannot_go_below_reserved(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=5)
        await placed(client, {sku: 4})
        url = f"/products/{sku}/stock-adjustments"
        body = problem(await client.post(url, json={"delta": -2, "reason": "count"}, headers=STAFF), 409)
        assert "reserved" in body["detail"]
        problem(await client.post(url, json={"delta": -6, "reason": "count"}, headers=STAFF), 409)
        assert (await receive(client, sku, -1, "count"))["product"]["on_hand"] == 4
        assert (await product(client, sku))["reserved"] == 4

    async def test_a_zero_delta_is_422_and_an_unknown_product_404(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=1)
        zero = {"delta": 0, "reason": "x"}
        assert fields(problem(await client.post(f"/products/{sku}/stock-adjustments", json=zero, headers=STAFF), 422))
        one = {"delta": 1, "reason": "x"}
        problem(await client.post("/products/NOPE-404/stock-adjustments", json=one, headers=STAFF), 404)
        problem(await client.get("/products/NOPE-404", headers=STAFF), 404)

    async def test_products_need_inventory_scope_and_a_staff_token(self, client: httpx.AsyncClient) -> None:
        body = {"sku": new_sku(), "name": "x", "unit_price_minor": 1, "currency": "USD", "on_hand": 1}
        problem(await client.post("/products", json=body, headers=auth("orders:write")), 403)
        customer = auth("inventory:write", customer_id="c1")
        problem(await client.post("/products", json=body, headers=customer), 403)
        problem(await client.post("/products", json=body), 401)

    async def test_the_catalogue_pages_by_sku(self, client: httpx.AsyncClient) -> None:
        for _ in range(3):
            await add_product(client, on_hand=1)
        seen: list[str] = []
        cursor = None
        while True:
            url = "/products?limit=2" + (f"&cursor={cursor}" if cursor else "")
            body = (await client.get(url, headers=STAFF)).json()
            seen += [p["sku"] for p in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(seen) and len(seen) == len(set(seen)) >= 3


class TestPlaceOrder:
    async def test_all_lines_available_is_confirmed_with_catalogue_prices(self, client: httpx.AsyncClient) -> None:
        a, b = await add_product(client, on_hand=5, price=1000), await add_product(client, on_hand=5, price=250)
        order = await placed(client, {a: 2, b: 1})
        assert order["status"] == "confirmed"
        assert order["total_minor"] == 2250 and order["currency"] == "USD"
        assert {s: (li["unit_price_minor"], li["reserved"]) for s, li in lines_of(order).items()} == {
            a: (1000, 2),
            b: (250, 1),
        }
        assert order["shipping_address"] == ADDRESS
        assert (await product(client, a))["available"] == 3
        assert order["billing"] == {"status": "not_invoiced", "invoices": []}
        assert [h["type"] for h in order["history"]] == ["OrderPlaced"]

    async def test_short_lines_are_409_naming_each_and_nothing_is_written(self, client: httpx.AsyncClient) -> None:
        a, b, c = [await add_product(client, on_hand=n) for n in (1, 5, 0)]
        customer = new_customer()
        body = problem(await place(client, {a: 2, b: 5, c: 1}, customer=customer), 409)
        assert fields(body) == {"body.lines.0.quantity", "body.lines.2.quantity"}
        assert [s["sku"] for s in body["short_lines"]] == [a, c]
        assert (await product(client, b))["reserved"] == 0
        listed = await client.get(f"/orders?customer_id={customer}", headers=STAFF)
        assert listed.json()["items"] == []

    async def test_bad_input_is_422_naming_the_field(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=5)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"lines": [{"sku": sku, "quantity": 0}]}, "body.lines.0.quantity"),
            ({"lines": [{"sku": sku, "quantity": -3}]}, "body.lines.0.quantity"),
            ({"lines": [{"sku": sku, "quantity": 1.5}]}, "body.lines.0.quantity"),
            ({"lines": [{"sku": "NO-SUCH-SKU", "quantity": 1}]}, "body.lines.0.sku"),
            ({"currency": "usd"}, "body.currency"),
            ({"currency": "EUR"}, "body.lines.0.sku"),
            ({"status": "shipped"}, "body.status"),
            ({"total_minor": 1}, "body.total_minor"),
            ({"lines": []}, "body.lines"),
            ({"lines": [{"sku": sku, "quantity": 1}, {"sku": sku, "quantity": 1}]}, "body.lines"),
            ({"customer_id": ""}, "body.customer_id"),
        ]
        for override, field in cases:
            body = {
                "customer_id": "c1",
                "currency": "USD",
                "lines": [{"sku": sku, "quantity": 1}],
                "shipping_address": ADDRESS,
                **override,
            }
            found = problem(await client.post("/orders", json=body, headers=STAFF), 422)
            assert field in fields(found), (override, found)
        assert (await product(client, sku))["reserved"] == 0

    async def test_a_body_over_one_mebibyte_is_413(self, client: httpx.AsyncClient) -> None:
        huge = {"line1": "x" * (1024 * 1024 + 10), "city": "c", "country": "US"}
        problem(await place(client, {"A": 1}, shipping_address=huge), 413)

    async def test_an_idempotency_key_replays_the_first_order(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=5)
        headers = {**STAFF, "Idempotency-Key": str(uuid.uuid4())}
        customer = new_customer()
        first = await place(client, {sku: 2}, customer=customer, headers=headers)
        again = await place(client, {sku: 2}, customer=customer, headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        assert (await product(client, sku))["reserved"] == 2
        problem(await place(client, {sku: 3}, customer=customer, headers=headers), 422)

    async def test_a_customer_orders_only_for_itself(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=5)
        mine = auth("orders:read orders:write", customer_id="cust-self")
        assert (await place(client, {sku: 1}, customer="cust-self", headers=mine)).status_code == 201
        problem(await place(client, {sku: 1}, customer="cust-other", headers=mine), 404)
        problem(await place(client, {sku: 1}, headers=auth("orders:read")), 403)


class TestNoOversell:
    async def test_fifty_simultaneous_orders_for_the_last_ten_units_reserve_exactly_ten(
        self, client: httpx.AsyncClient
    ) -> None:
        sku = await add_product(client, on_hand=10)
        responses = await asyncio.gather(*(place(client, {sku: 1}) for _ in range(50)))
        assert sorted(r.status_code for r in responses) == [201] * 10 + [409] * 40
        shown = await product(client, sku)
        assert (shown["on_hand"], shown["reserved"], shown["available"]) == (10, 10, 0)

    async def test_racing_orders_receipts_and_cancels_keep_stock_consistent(self, client: httpx.AsyncClient) -> None:
        a, b = await add_product(client, on_hand=6), await add_product(client, on_hand=6)
        first = [await placed(client, {a: 1, b: 1}) for _ in range(4)]

        async def cancel(order_id: str) -> httpx.Response:
            return await client.post(f"/orders/{order_id}/cancel", json={"reason": "race"}, headers=STAFF)

        async def adjust(sku: str) -> httpx.Response:
            body = {"delta": 1, "reason": "receipt"}
            return await client.post(f"/products/{sku}/stock-adjustments", json=body, headers=STAFF)

        work = [place(client, {a: 2, b: 1}, allow_backorder=True) for _ in range(8)]
        work += [cancel(o["id"]) for o in first]
        work += [adjust(a) for _ in range(4)] + [adjust(b) for _ in range(4)]
        results = await asyncio.gather(*work)
        assert all(r.status_code in (200, 201) for r in results), [r.text for r in results if r.status_code >= 300]
        orders = [await get_order(client, r.json()["id"]) for r in results[:8]]
        for sku in (a, b):
            shown = await product(client, sku)
            held = sum(lines_of(o)[sku]["reserved"] for o in orders)
            assert shown["reserved"] == held <= shown["on_hand"] == 10
            if any(lines_of(o)[sku]["backordered"] for o in orders):
                assert shown["available"] == 0, "free stock while a backorder waits for it"


class TestBackorders:
    async def test_a_receipt_confirms_backorders_oldest_first(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=1)
        older = await placed(client, {sku: 3}, allow_backorder=True)
        newer = await placed(client, {sku: 2}, allow_backorder=True)
        assert older["status"] == newer["status"] == "backordered"
        assert (lines_of(older)[sku]["reserved"], lines_of(older)[sku]["backordered"]) == (1, 2)
        adjusted = await receive(client, sku, 3)
        assert adjusted["confirmed_orders"] == [older["id"]]
        assert (await get_order(client, older["id"]))["status"] == "confirmed"
        still = await get_order(client, newer["id"])
        assert (still["status"], lines_of(still)[sku]["reserved"]) == ("backordered", 1)
        assert (await receive(client, sku, 1))["confirmed_orders"] == [newer["id"]]
        confirmed = await get_order(client, newer["id"])
        assert [h["type"] for h in confirmed["history"]] == ["OrderPlaced", "OrderConfirmed"]
        assert (await product(client, sku))["available"] == 0

    async def test_a_backordered_order_cannot_ship(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=0)
        order = await placed(client, {sku: 1}, allow_backorder=True)
        assert "backordered" in problem(await ship(client, order["id"], {sku: 1}), 409)["detail"]

    async def test_a_cancellation_hands_its_stock_to_a_waiting_backorder(self, client: httpx.AsyncClient) -> None:
        sku = await add_product(client, on_hand=2)
        confirmed = await placed(client, {sku: 2})
        waiting = await placed(client, {sku: 2}, allow_backorder=True)
        cancelled = await client.post(f"/orders/{confirmed['id']}/cancel", json={"reason": "x"}, headers=STAFF)
        assert cancelled.status_code == 200
        assert (await get_order(client, waiting["id"]))["status"] == "confirmed"


class TestFulfilment:
    async def test_partial_then_full_shipment(self, client: httpx.AsyncClient) -> None:
        a, b = await add_product(client, on_hand=5, price=300), await add_product(client, on_hand=5, price=50)
        order = await placed(client, {a: 3, b: 1})
        first = await ship(client, order["id"], {a: 2}, carrier="UPS", tracking_number="1Z")
        assert first.status_code == 201, first.text
        assert first.json()["status"] == "partially_shipped"
        assert (lines_of(first.json())[a]["shipped"], lines_of(first.json())[a]["reserved"]) == (2, 1)
        shipment = first.json()["shipments"][0]
        assert (shipment["subtotal_minor"], shipment["carrier"], shipment["tracking_number"]) == (600, "UPS", "1Z")
        assert (await product(client, a))["on_hand"] == 3
        second = await ship(client, order["id"], {a: 1, b: 1})
        assert second.json()["status"] == "shipped"
        assert len(second.json()["shipments"]) == 2
        shown = await product(client, a)
        assert (shown["on_hand"], shown["reserved"]) == (2, 0)

    async def test_illegal_shipments_are_409_or_422(self, client: httpx.AsyncClient) -> None:
        a = await add_product(client, on_hand=5)
        order = await placed(client, {a: 2})
        assert "more than ordered minus shipped" in problem(await ship(client, order["id"], {a: 3}), 409)["detail"]
        assert fields(problem(await ship(client, order["id"], {"OTHER-SKU": 1}), 422)) == {"body.lines.0.sku"}
        assert fields(problem(await ship(client, order["id"], {a: 0}), 422)) == {"body.lines.0.quantity"}
        problem(await ship(client, str(uuid.uuid4()), {a: 1}), 404)
        problem(await client.post("/orders/not-a-uuid/shipments", json={"lines": []}, headers=STAFF), 422)
        await client.post(f"/orders/{order['id']}/cancel", json={"reason": "x"}, headers=STAFF)
        assert "cancelled" in problem(await ship(client, order["id"], {a: 1}), 409)["detail"]

    async def test_cancel_releases_unshipped_reservation(self, client: httpx.AsyncClient) -> None:
        a = await add_product(client, on_hand=5)
        order = await placed(client, {a: 4})
        await ship(client, order["id"], {a: 1})
        cancelled = await client.post(f"/orders/{order['id']}/cancel", json={"reason": "changed mind"}, headers=STAFF)
        assert cancelled.status_code == 200, cancelled.text
        body = cancelled.json()
        assert (body["status"], body["cancel_reason"]) == ("cancelled", "changed mind")
        line = lines_of(body)[a]
        assert (line["shipped"], line["cancelled"], line["reserved"]) == (1, 3, 0)
        shown = await product(client, a)
        assert (shown["on_hand"], shown["reserved"]) == (4, 0)
        again = await client.post(f"/orders/{order['id']}/cancel", json={"reason": "x"}, headers=STAFF)
        assert "already cancelled" in problem(again, 409)["detail"]

    async def test_a_fully_shipped_order_cannot_be_cancelled(self, client: httpx.AsyncClient) -> None:
        a = await add_product(client, on_hand=1)
        order = await placed(client, {a: 1})
        await ship(client, order["id"], {a: 1})
        response = await client.post(f"/orders/{order['id']}/cancel", json={"reason": "late"}, headers=STAFF)
        assert "fully shipped" in problem(response, 409)["detail"]

    async def test_returns_take_back_shipped_quantities_and_restock_when_asked(self, client: httpx.AsyncClient) -> None:
        a = await add_product(client, on_hand=5, price=400)
        order = await placed(client, {a: 3})
        await ship(client, order["id"], {a: 2})
        url = f"/orders/{order['id']}/returns"
        too_many = {"lines": [{"sku": a, "quantity": 3}], "reason": "damaged", "restock": True}
        assert "more than was shipped" in problem(await client.post(url, json=too_many, headers=STAFF), 409)["detail"]
        back = {"lines": [{"sku": a, "quantity": 1}], "reason": "damaged", "restock": True}
        returned = await client.post(url, json=back, headers=STAFF)
        assert returned.status_code == 201, returned.text
        assert lines_of(returned.json())[a]["returned"] == 1
        assert returned.json()["returns"][0]["subtotal_minor"] == 400
        assert (await product(client, a))["on_hand"] == 4
        kept = {"lines": [{"sku": a, "quantity": 1}], "reason": "unwanted", "restock": False}
        assert (await client.post(url, json=kept, headers=STAFF)).status_code == 201
        assert (await product(client, a))["on_hand"] == 4
        problem(await client.post(url, json={**kept, "restock": "yes"}, headers=STAFF), 422)
        problem(await client.post(url, json=kept, headers=STAFF), 409)

    async def test_customers_cannot_ship_cancel_or_return(self, client: httpx.AsyncClient) -> None:
        a = await add_product(client, on_hand=2)
        order = await placed(client, {a: 1}, customer="cust-nostaff")
        customer = auth("orders:read orders:write", customer_id="cust-nostaff")
        body = {"lines": [{"sku": a, "quantity": 1}]}
        problem(await client.post(f"/orders/{order['id']}/shipments", json=body, headers=customer), 403)
        problem(await client.post(f"/orders/{order['id']}/cancel", json={"reason": "x"}, headers=customer), 403)
        assert (await get_order(client, order["id"]))["status"] == "confirmed"


class TestReads:
    async def test_the_order_shows_lines_shipments_and_history(self, client: httpx.AsyncClient) -> None:
        a = await add_product(client, on_hand=3)
        order = await placed(client, {a: 2})
        await ship(client, order["id"], {a: 1})
        await client.post(
            f"/orders/{order['id']}/returns",
            json={"lines": [{"sku": a, "quantity": 1}], "reason": "r", "restock": False},
            headers=STAFF,
        )
        await client.post(f"/orders/{order['id']}/cancel", json={"reason": "rest"}, headers=STAFF)
        shown = await get_order(client, order["id"])
        line = lines_of(shown)[a]
        assert {k: line[k] for k in ("ordered", "reserved", "shipped", "returned", "cancelled")} == {
            "ordered": 2,
            "reserved": 0,
            "shipped": 1,
            "returned": 1,
            "cancelled": 1,
        }
        assert [h["type"] for h in shown["history"]] == [
            "OrderPlaced",
            "OrderShipped",
            "OrderReturned",
            "OrderCancelled",
        ]
        assert shown["history"][1]["data"]["shipment_id"] == shown["shipments"][0]["id"]

    async def test_a_customer_sees_only_its_own_orders(self, client: httpx.AsyncClient) -> None:
        a = await add_product(client, on_hand=5)
        mine = await placed(client, {a: 1}, customer="cust-reader")
        theirs = await placed(client, {a: 1}, customer="cust-someone")
        reader = auth("orders:read", customer_id="cust-reader")
        assert (await client.get(f"/orders/{mine['id']}", headers=reader)).status_code == 200
        problem(await client.get(f"/orders/{theirs['id']}", headers=reader), 404)
        listed = await client.get("/orders?customer_id=cust-someone", headers=reader)
        assert {o["customer_id"] for o in listed.json()["items"]} == {"cust-reader"}

    async def test_listing_filters_and_pages_stably_under_inserts(self, client: httpx.AsyncClient) -> None:
        a = await add_product(client, on_hand=100)
        customer = new_customer()
        ids = [(await placed(client, {a: 1}, customer=customer))["id"] for _ in range(5)]
        url = f"/orders?customer_id={customer}&status=confirmed&limit=2"
        first = (await client.get(url, headers=STAFF)).json()
        assert [o["id"] for o in first["items"]] == ids[::-1][:2]
        for _ in range(2):
            await placed(client, {a: 1}, customer=customer)
        seen = [o["id"] for o in first["items"]]
        cursor = first["next_cursor"]
        while cursor:
            body = (await client.get(f"{url}&cursor={cursor}", headers=STAFF)).json()
            seen += [o["id"] for o in body["items"]]
            cursor = body["next_cursor"]
        assert seen == ids[::-1]
        await ship(client, ids[0], {a: 1})
        shipped = (await client.get(f"/orders?customer_id={customer}&status=shipped", headers=STAFF)).json()
        assert [o["id"] for o in shipped["items"]] == [ids[0]]

    async def test_bad_reads_are_problems(self, client: httpx.AsyncClient) -> None:
        problem(await client.get("/orders?status=lost", headers=STAFF), 422)
        problem(await client.get("/orders?cursor=%%%", headers=STAFF), 422)
        problem(await client.get("/orders/not-a-uuid", headers=STAFF), 422)
        problem(await client.get(f"/orders/{uuid.uuid4()}", headers=STAFF), 404)
        problem(await client.get("/orders"), 401)
        problem(await client.get("/orders", headers=auth("billing:read")), 403)

    async def test_the_openapi_document_lists_every_route(self, client: httpx.AsyncClient) -> None:
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {
            "/products",
            "/products/{sku}",
            "/products/{sku}/stock-adjustments",
            "/orders",
            "/orders/{order_id}",
            "/orders/{order_id}/shipments",
            "/orders/{order_id}/cancel",
            "/orders/{order_id}/returns",
        } <= paths.keys()
