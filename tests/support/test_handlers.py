"""Support hears first, on the real broker: trouble opens one ticket however often it repeats; the timeline."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from backoffice import events
from backoffice.envelope import Envelope, encode
from support import domain, store
from support.settings import DEFAULT_SLA_POLICY
from tests.conftest import eventually, produce
from tests.support.conftest import AGENT, customer, support_app

T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def client(make_database: Callable[[str], Awaitable[str]], topics: str) -> AsyncIterator[httpx.AsyncClient]:
    async with support_app(make_database, topics, "support_handlers", job_interval_s=0.5) as http:
        yield http


def new_id() -> str:
    return str(uuid.uuid4())


async def publish(topics: str, *envelopes: Envelope) -> None:
    """Produce each envelope to its service's topic, in order."""
    for envelope in envelopes:
        await produce(f"{topics}{envelope.event.service}.events", [encode(envelope)])


def overdue(invoice_id: str, customer_id: str, level: int) -> events.InvoiceOverdue:
    return events.InvoiceOverdue(
        invoice_id=invoice_id,
        customer_id=customer_id,
        currency="EUR",
        balance_minor=45_600,
        due_at=T0,
        days_overdue={1: 1, 2: 15, 3: 30}[level],
        dunning_level=level,
    )


def returned(order_id: str, customer_id: str, return_id: str) -> events.OrderReturned:
    return events.OrderReturned(
        order_id=order_id,
        return_id=return_id,
        customer_id=customer_id,
        currency="EUR",
        lines=[events.Line(sku="MUG-1", quantity=2, unit_price_minor=1_250)],
        subtotal_minor=2_500,
        restocked=True,
        reason="arrived chipped",
        returned_at=T0 + timedelta(days=3),
    )


def placed(order_id: str, customer_id: str, at: datetime) -> events.OrderPlaced:
    return events.OrderPlaced(
        order_id=order_id,
        customer_id=customer_id,
        currency="EUR",
        lines=[events.Line(sku="MUG-1", quantity=2, unit_price_minor=1_250)],
        total_minor=2_500,
        status="confirmed",
        placed_at=at,
    )


async def timeline(client: httpx.AsyncClient, customer_id: str, **params: Any) -> dict[str, Any]:
    response = await client.get(f"/customers/{customer_id}/timeline", params=params, headers=AGENT)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def has_item(client: httpx.AsyncClient, customer_id: str, subject: str, kind: str) -> bool:
    items = (await timeline(client, customer_id, limit=200))["items"]
    return any(i["subject"] == subject and i["type"] == kind for i in items)


async def tickets(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    response = await client.get("/tickets", params={**params, "limit": "200"}, headers=AGENT)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def messages(client: httpx.AsyncClient, ticket_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get(f"/tickets/{ticket_id}/messages", headers=headers)).json()["items"]
    return items


class TestOverdueInvoices:
    async def test_repeated_overdue_opens_one_ticket_and_adds_notes(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        invoice, who = new_id(), f"cust-{new_id()[:8]}"
        level2 = Envelope(event=overdue(invoice, who, 2))
        resent = Envelope(event=overdue(invoice, who, 2))  # same trouble, another event id
        level3 = Envelope(event=overdue(invoice, who, 3))
        await publish(topics, level2, level2, resent)

        async def overdue_in_timeline() -> bool:
            items = (await timeline(client, who))["items"]
            return sum(i["type"] == "InvoiceOverdue" for i in items) == 2  # level2 once, resent once

        await eventually(overdue_in_timeline)
        (ticket,) = await tickets(client, invoice_id=invoice)
        assert (ticket["customer_id"], ticket["priority"], ticket["source"]) == (who, "high", "billing")
        assert ticket["status"] == "new"
        notes = await messages(client, ticket["id"], AGENT)
        assert [m["visibility"] for m in notes] == ["internal"]

        await publish(topics, level3)

        async def second_note() -> bool:
            return len(await messages(client, ticket["id"], AGENT)) == 2

        await eventually(second_note)
        assert [t["id"] for t in await tickets(client, invoice_id=invoice)] == [ticket["id"]]
        assert all("dunning level" in m["body"] for m in await messages(client, ticket["id"], AGENT))
        assert await messages(client, ticket["id"], customer(who)) == []
        seen = (await client.get(f"/tickets/{ticket['id']}", headers=customer(who))).json()
        assert seen["messages"] == []
        assert "dunning" not in str(seen)

    async def test_first_dunning_level_only_reaches_the_timeline(self, client: httpx.AsyncClient, topics: str) -> None:
        invoice, who = new_id(), f"cust-{new_id()[:8]}"
        await publish(topics, Envelope(event=overdue(invoice, who, 1)))
        await eventually(lambda: has_item(client, who, invoice, "InvoiceOverdue"))
        assert await tickets(client, invoice_id=invoice) == []


class TestReturns:
    async def test_a_return_delivered_twice_opens_one_ticket(self, client: httpx.AsyncClient, topics: str) -> None:
        order, who, rid = new_id(), f"cust-{new_id()[:8]}", new_id()
        first = Envelope(event=returned(order, who, rid))
        await publish(topics, first, first, Envelope(event=returned(order, who, rid)))
        marker = Envelope(event=events.OrderConfirmed(order_id=order, customer_id=who, confirmed_at=T0))
        await publish(topics, marker)  # same key, so it is applied after the three above
        await eventually(lambda: has_item(client, who, order, "OrderConfirmed"))
        (ticket,) = await tickets(client, order_id=order)
        assert (ticket["category"], ticket["source"], ticket["status"]) == ("returns", "orders", "new")
        assert len(await messages(client, ticket["id"], AGENT)) == 1

    async def test_another_return_adds_to_the_open_ticket_and_after_resolution_opens_a_new_one(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        order, who = new_id(), f"cust-{new_id()[:8]}"
        await publish(topics, Envelope(event=returned(order, who, new_id())))
        await publish(topics, Envelope(event=returned(order, who, new_id())))

        async def two_notes() -> bool:
            found = await tickets(client, order_id=order)
            return len(found) == 1 and len(await messages(client, found[0]["id"], AGENT)) == 2

        await eventually(two_notes)
        (ticket,) = await tickets(client, order_id=order)
        resolved = await client.post(f"/tickets/{ticket['id']}/status", json={"status": "resolved"}, headers=AGENT)
        assert resolved.status_code == 200
        await publish(topics, Envelope(event=returned(order, who, new_id())))

        async def two_tickets() -> bool:
            return len(await tickets(client, order_id=order)) == 2

        await eventually(two_tickets)


class TestTimeline:
    async def test_the_customer_story_newest_first_across_topics(self, client: httpx.AsyncClient, topics: str) -> None:
        who, other = f"cust-{new_id()[:8]}", f"cust-{new_id()[:8]}"
        order, invoice, payment = new_id(), new_id(), new_id()
        story = [
            placed(order, who, T0),
            events.OrderShipped(
                order_id=order,
                shipment_id=new_id(),
                customer_id=who,
                currency="EUR",
                lines=[events.Line(sku="MUG-1", quantity=2, unit_price_minor=1_250)],
                subtotal_minor=2_500,
                carrier="DHL",
                tracking_number="JD0001",
                shipped_at=T0 + timedelta(hours=5),
            ),
            events.InvoiceIssued(
                invoice_id=invoice,
                number="INV-2026-000042",
                customer_id=who,
                order_id=order,
                currency="EUR",
                lines=[],
                subtotal_minor=2_500,
                tax_minor=500,
                total_minor=3_000,
                issued_at=T0 + timedelta(hours=6),
                due_at=T0 + timedelta(days=30),
            ),
            events.PaymentReceived(
                payment_id=payment,
                customer_id=who,
                currency="EUR",
                amount_minor=3_000,
                unapplied_minor=0,
                received_at=T0 + timedelta(days=2),
            ),
            events.BillPaid(bill_id=new_id(), vendor_id="v1", currency="EUR", total_minor=1, paid_at=T0),
            placed(new_id(), other, T0 + timedelta(days=9)),
        ]
        await publish(topics, *(Envelope(event=e) for e in story))
        await eventually(lambda: has_item(client, who, payment, "PaymentReceived"))

        seen, cursor = [], None
        while True:
            page = await timeline(client, who, limit=3, **({"cursor": cursor} if cursor else {}))
            seen += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [i["type"] for i in seen] == ["PaymentReceived", "InvoiceIssued", "OrderShipped", "OrderPlaced"]
        assert [i["subject"] for i in seen] == [payment, invoice, order, order]
        assert seen[0]["occurred_at"].startswith("2026-02-03T09:00:00")
        assert seen[0]["summary"] == "Payment received: 30.00 EUR"
        assert "INV-2026-000042" in seen[1]["summary"] and "30.00 EUR" in seen[1]["summary"]
        assert "DHL" in seen[2]["summary"]

        own = await client.get(f"/customers/{who}/timeline", headers=customer(who))
        assert len(own.json()["items"]) == 4
        hidden = await client.get(f"/customers/{who}/timeline", headers=customer(other))
        assert hidden.status_code == 404

    async def test_linking_another_customers_invoice_is_refused(self, client: httpx.AsyncClient, topics: str) -> None:
        owner, intruder, invoice = f"cust-{new_id()[:8]}", f"cust-{new_id()[:8]}", new_id()
        await publish(topics, Envelope(event=overdue(invoice, owner, 1)))
        await eventually(lambda: has_item(client, owner, invoice, "InvoiceOverdue"))
        body = {
            "customer_id": intruder,
            "subject": "Whose invoice?",
            "description": "d",
            "priority": "low",
            "invoice_id": invoice,
        }
        refused = await client.post("/tickets", json=body, headers=customer(intruder))
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "body.invoice_id"
        accepted = await client.post("/tickets", json={**body, "customer_id": owner}, headers=customer(owner))
        assert accepted.status_code == 201, accepted.text


class TestSlaTimer:
    async def test_the_timer_reports_an_overdue_ticket_without_being_asked(
        self, client: httpx.AsyncClient, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        draft = domain.Draft(customer_id=f"cust-{new_id()[:8]}", subject="Old", description="d", priority="urgent")
        old = domain.open_ticket(
            draft, ticket_id=new_id(), policy=DEFAULT_SLA_POLICY, at=datetime.now(UTC) - timedelta(hours=2)
        )
        conn = await asyncpg.connect(await make_database("support_handlers"))
        try:
            await store.insert_ticket(conn, ticket=old.ticket)
        finally:
            await conn.close()

        async def flagged() -> bool:
            return old.ticket.id in [t["id"] for t in await tickets(client, breached="true")]

        await eventually(flagged, timeout=15)
        ticket = (await client.get(f"/tickets/{old.ticket.id}", headers=AGENT)).json()
        assert ticket["sla"]["first_response"]["breached_at"] is not None
        assert ticket["sla"]["resolution"]["breached_at"] is None
