"""Events on the real broker: what orders publishes on orders.events, and billing's events it consumes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from backoffice.envelope import Envelope, encode, header_map
from backoffice.events import Event, InvoiceIssued, InvoiceLine, InvoicePaid
from tests.conftest import eventually, produce, read_topic
from tests.orders.conftest import STAFF, add_product, get_order, placed, receive, ship

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def _for(records: list[Any], order_ids: set[str]) -> list[Any]:
    return [r for r in records if r.key is not None and r.key.decode() in order_ids]


async def _published(topics: str, order_ids: set[str], count: int) -> list[Any]:
    records = await read_topic(f"{topics}orders.events", until=lambda rs: len(_for(rs, order_ids)) >= count, timeout=30)
    mine = sorted(_for(records, order_ids), key=lambda r: (r.partition, r.offset))
    assert len(mine) == count, [header_map(r.headers)["ce_type"] for r in mine]
    return mine


def _typed(records: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(header_map(r.headers)["ce_type"], r.key.decode(), orjson.loads(r.value)) for r in records]


class TestPublished:
    async def test_each_change_is_one_cloudevent_keyed_by_the_order(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        a, b = await add_product(client, on_hand=5, price=700), await add_product(client, on_hand=5, price=30)
        order = await placed(client, {a: 3, b: 2}, customer="cust-events")
        oid = order["id"]
        assert (await ship(client, oid, {a: 2}, carrier="DHL", tracking_number="JD1")).status_code == 201
        returned = {"lines": [{"sku": a, "quantity": 1}], "reason": "broken", "restock": True}
        assert (await client.post(f"/orders/{oid}/returns", json=returned, headers=STAFF)).status_code == 201
        cancelled = await client.post(f"/orders/{oid}/cancel", json={"reason": "no longer needed"}, headers=STAFF)
        assert cancelled.status_code == 200

        records = await _published(topics, {oid}, 4)
        assert [t for t, _, _ in _typed(records)] == [
            "backoffice.orders.OrderPlaced.v1",
            "backoffice.orders.OrderShipped.v1",
            "backoffice.orders.OrderReturned.v1",
            "backoffice.orders.OrderCancelled.v1",
        ]
        ids = set()
        for record in records:
            headers = header_map(record.headers)
            assert record.key.decode() == headers["ce_subject"] == oid
            assert headers["ce_specversion"] == "1.0"
            assert headers["ce_source"] == "/backoffice/orders"
            assert headers["content-type"] == "application/json"
            assert datetime.fromisoformat(headers["ce_time"]).tzinfo is not None
            assert headers["ce_correlationid"]
            ids.add(str(uuid.UUID(headers["ce_id"])))
        assert len(ids) == 4

        placed_data, shipped, returned_data, cancelled_data = (data for _, _, data in _typed(records))
        assert placed_data["customer_id"] == "cust-events" and placed_data["currency"] == "USD"
        assert placed_data["lines"] == [
            {"sku": a, "quantity": 3, "unit_price_minor": 700},
            {"sku": b, "quantity": 2, "unit_price_minor": 30},
        ]
        assert (placed_data["total_minor"], placed_data["status"]) == (2160, "confirmed")
        assert shipped["lines"] == [{"sku": a, "quantity": 2, "unit_price_minor": 700}]
        assert (shipped["subtotal_minor"], shipped["carrier"], shipped["tracking_number"]) == (1400, "DHL", "JD1")
        assert shipped["shipment_id"] == (await get_order(client, oid))["shipments"][0]["id"]
        assert returned_data["lines"] == [{"sku": a, "quantity": 1, "unit_price_minor": 700}]
        assert (returned_data["subtotal_minor"], returned_data["restocked"], returned_data["reason"]) == (
            700,
            True,
            "broken",
        )
        assert returned_data["currency"] == "USD"
        assert cancelled_data["reason"] == "no longer needed"
        assert sorted((r["sku"], r["quantity"]) for r in cancelled_data["released"]) == sorted([(a, 1), (b, 2)])

    async def test_a_receipt_publishes_order_confirmed_for_the_filled_backorder(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        sku = await add_product(client, on_hand=0)
        waiting = await placed(client, {sku: 2}, allow_backorder=True)
        await receive(client, sku, 2)
        records = await _published(topics, {waiting["id"]}, 2)
        (_, _, placed_data), (ce_type, _, confirmed) = _typed(records)
        assert placed_data["status"] == "backordered"
        assert ce_type == "backoffice.orders.OrderConfirmed.v1"
        assert (confirmed["order_id"], confirmed["customer_id"]) == (waiting["id"], waiting["customer_id"])

    async def test_a_refused_order_publishes_nothing(self, client: httpx.AsyncClient, topics: str) -> None:
        sku = await add_product(client, on_hand=1)
        customer = f"cust-refused-{uuid.uuid4().hex[:6]}"
        refused = await client.post(
            "/orders",
            json={
                "customer_id": customer,
                "currency": "USD",
                "lines": [{"sku": sku, "quantity": 2}],
                "shipping_address": "1 Main St, Springfield",
            },
            headers=STAFF,
        )
        assert refused.status_code == 409
        marker = await placed(client, {sku: 1}, customer=customer)
        # The outbox relays in commit order: once the later order is on the topic, a refused one would be too.
        everything = await read_topic(
            f"{topics}orders.events", until=lambda rs: bool(_for(rs, {marker["id"]})), timeout=30
        )
        of_customer = [r for r in everything if orjson.loads(r.value).get("customer_id") == customer]
        assert [r.key.decode() for r in of_customer] == [marker["id"]]


def _issued(order_id: str | None, invoice_id: str, total: int = 1000) -> Envelope:
    return Envelope(
        event=InvoiceIssued(
            invoice_id=invoice_id,
            number=f"INV-2026-{uuid.uuid4().int % 10**6:06d}",
            customer_id="cust-billing",
            order_id=order_id,
            currency="USD",
            lines=(InvoiceLine(sku="X", quantity=1, unit_price_minor=total, amount_minor=total),),
            subtotal_minor=total,
            tax_minor=0,
            total_minor=total,
            issued_at=NOW,
            due_at=NOW + timedelta(days=30),
        )
    )


def _paid(invoice_id: str, *, order_id: str | None = None, total: int = 1000) -> Envelope:
    return Envelope(
        event=InvoicePaid(
            invoice_id=invoice_id,
            customer_id="cust-billing",
            order_id=order_id,
            currency="USD",
            total_minor=total,
            paid_at=NOW + timedelta(days=3),
        )
    )


async def _send(topics: str, *envelopes: Envelope | Event) -> None:
    await produce(f"{topics}billing.events", [encode(e if isinstance(e, Envelope) else Envelope(e)) for e in envelopes])


class TestBillingState:
    async def test_invoices_then_payments_move_the_order_to_invoiced_then_paid(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        sku = await add_product(client, on_hand=5)
        oid = (await placed(client, {sku: 2}))["id"]
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        await _send(topics, _issued(oid, first, 1000), _issued(oid, second, 500), _paid(first, order_id=oid))

        async def invoiced() -> bool:
            billing = (await get_order(client, oid))["billing"]
            return len(billing["invoices"]) == 2 and any(i["paid"] for i in billing["invoices"])

        await eventually(invoiced)
        billing = (await get_order(client, oid))["billing"]
        assert billing["status"] == "invoiced"
        assert {(i["invoice_id"], i["total_minor"], i["paid"]) for i in billing["invoices"]} == {
            (first, 1000, True),
            (second, 500, False),
        }
        assert all(i["number"].startswith("INV-2026-") for i in billing["invoices"])

        await _send(topics, _paid(second))  # no order_id: found through the InvoiceIssued seen before

        async def paid() -> bool:
            return bool((await get_order(client, oid))["billing"]["status"] == "paid")

        await eventually(paid)
        history = [(h["type"], h["data"].get("invoice_id")) for h in (await get_order(client, oid))["history"]]
        assert history[0] == ("OrderPlaced", None)
        assert sorted(history[1:]) == sorted(
            [("InvoiceIssued", first), ("InvoiceIssued", second), ("InvoicePaid", first), ("InvoicePaid", second)]
        )
        # Kafka keeps order per key (the invoice), not across invoices: each invoice is issued before it is paid
        for invoice in (first, second):
            assert history.index(("InvoiceIssued", invoice)) < history.index(("InvoicePaid", invoice))

    async def test_a_redelivered_event_is_applied_once(self, client: httpx.AsyncClient, topics: str) -> None:
        sku = await add_product(client, on_hand=5)
        oid = (await placed(client, {sku: 1}))["id"]
        invoice = str(uuid.uuid4())
        issued = _issued(oid, invoice)
        await _send(topics, issued, issued, _paid(invoice, order_id=oid))

        async def settled() -> bool:
            return bool((await get_order(client, oid))["billing"]["status"] == "paid")

        await eventually(settled)
        history = [h["type"] for h in (await get_order(client, oid))["history"]]
        assert history == ["OrderPlaced", "InvoiceIssued", "InvoicePaid"]

    async def test_invoices_of_unknown_orders_are_ignored_not_dead_lettered(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        sku = await add_product(client, on_hand=5)
        oid = (await placed(client, {sku: 1}))["id"]
        invoice = str(uuid.uuid4())
        strangers = [_issued(str(uuid.uuid4()), invoice), _issued("not-a-uuid", invoice), _issued(None, invoice)]
        await _send(topics, *strangers, _issued(oid, invoice))

        async def applied() -> bool:
            return bool((await get_order(client, oid))["billing"]["status"] == "invoiced")

        await eventually(applied)
        dead = await read_topic(f"{topics}orders.dlq", until=lambda rs: False, timeout=3)
        assert not {header_map(r.headers).get("ce_id") for r in dead} & {e.id for e in strangers}
