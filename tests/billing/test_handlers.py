"""Billing on the real broker: events in from orders and support, CloudEvents out on billing.events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from backoffice import events
from backoffice.envelope import Envelope, encode, header_map
from tests.billing.conftest import ADMIN, STAFF, Billing, new_id, record_type, returned, shipped, start_billing
from tests.conftest import eventually, produce, read_topic


@pytest.fixture(scope="module")
async def billing(make_database: Callable[[str], Awaitable[str]], topics: str) -> AsyncIterator[Billing]:
    """This module's app runs the dunning timer every half second."""
    async for b in start_billing(make_database, topics, "billing_handlers", job_interval_s=0.5):
        yield b


def data(record: Any) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(record.value)
    return value


async def published(topics: str, want: int, where: Any, timeout: float = 30) -> list[Any]:
    """Records on billing.events matching `where`, once at least `want` of them are there."""
    records = await read_topic(
        f"{topics}billing.events", until=lambda rs: sum(1 for r in rs if where(r)) >= want, timeout=timeout
    )
    return sorted((r for r in records if where(r)), key=lambda r: (r.partition, r.offset))


async def count(billing: Billing, sql: str, *args: Any) -> int:
    return int(await billing.pool.fetchval(sql, *args))


class TestInvoicingFromShipments:
    async def test_one_invoice_per_shipment_however_often_it_is_delivered(self, billing: Billing, topics: str) -> None:
        event = shipped(new_id("c"), [("A", 2, 1250), ("B", 1, 99)])
        once = encode(Envelope(event=event))
        republished = encode(Envelope(event=event))  # same shipment, another event id
        await produce(f"{topics}orders.events", [once, once, republished])

        async def invoiced() -> bool:
            return await count(billing, "SELECT count(*) FROM invoices WHERE shipment_id = $1", event.shipment_id) > 0

        await eventually(invoiced)
        await eventually(lambda: _inbox_has(billing, republished))
        invoice_id = str(
            await billing.pool.fetchval("SELECT id FROM invoices WHERE shipment_id = $1", event.shipment_id)
        )
        assert [name for name, _ in await billing.published(invoice_id)] == ["InvoiceIssued"]
        records = await published(topics, 1, lambda r: r.key == invoice_id.encode())
        extra = await published(topics, 2, lambda r: r.key == invoice_id.encode(), timeout=2)
        assert len(records) == len(extra) == 1
        [record] = records
        h = header_map(record.headers)
        assert h["ce_type"] == "backoffice.billing.InvoiceIssued.v1"
        assert h["ce_source"] == "/backoffice/billing"
        assert h["ce_subject"] == invoice_id
        assert h["ce_specversion"] == "1.0" and h["content-type"] == "application/json"
        uuid.UUID(h["ce_id"])
        body = data(record)
        assert (body["subtotal_minor"], body["tax_minor"], body["total_minor"]) == (2599, 520, 3119)
        assert (body["order_id"], body["shipment_id"]) == (event.order_id, event.shipment_id)
        assert body["number"].startswith("INV-")

    async def test_payment_publishes_payment_received_then_invoice_paid(self, billing: Billing, topics: str) -> None:
        customer = new_id("c")
        invoice = await billing.invoice(shipped(customer, [("A", 1, 1000)]))
        body = {"customer_id": customer, "currency": "EUR", "amount_minor": 1500, "method": "bank", "reference": "x"}
        response = await billing.http.post("/payments", json=body, headers={**STAFF, "Idempotency-Key": new_id("k")})
        payment_id = response.json()["id"]
        [received] = await published(topics, 1, lambda r: r.key == payment_id.encode())
        assert record_type(received) == "PaymentReceived"
        assert data(received)["applied"] == [{"invoice_id": invoice.id, "amount_minor": 1200}]
        assert data(received)["unapplied_minor"] == 300
        kinds = [record_type(r) for r in await published(topics, 2, lambda r: r.key == invoice.id.encode())]
        assert kinds == ["InvoiceIssued", "InvoicePaid"]


async def _inbox_has(billing: Billing, record: tuple[bytes, bytes, list[tuple[str, bytes]]]) -> bool:
    event_id = header_map(record[2])["ce_id"]
    return await count(billing, "SELECT count(*) FROM inbox WHERE event_id = $1", uuid.UUID(event_id)) > 0


class TestCreditNotesFromReturns:
    async def test_a_return_is_credited_once_with_both_parts(self, billing: Billing, topics: str) -> None:
        customer = new_id("c")
        ship = shipped(customer, [("A", 2, 1000)])
        back = returned(ship.order_id, customer, [("A", 2, 1000)])
        await billing.http.post(
            "/payments",
            json={"customer_id": customer, "currency": "EUR", "amount_minor": 2000, "method": "m", "reference": "r"},
            headers={**STAFF, "Idempotency-Key": new_id("k")},
        )  # becomes credit: the invoice does not exist yet
        record = encode(Envelope(event=back))
        await produce(f"{topics}orders.events", [encode(Envelope(event=ship)), record, record])
        notes = await published(
            topics, 1, lambda r: record_type(r) == "CreditNoteIssued" and data(r)["return_id"] == back.return_id
        )
        await eventually(lambda: _inbox_has(billing, record))
        assert len(notes) == 1
        note = data(notes[0])
        # invoice 2400: 2000 from credit, 400 open; the return of 2400 closes 400 and gives 2000 back as credit
        assert (note["total_minor"], note["applied_to_invoice_minor"], note["to_customer_credit_minor"]) == (
            2400,
            400,
            2000,
        )
        assert note["order_id"] == ship.order_id and note["number"].startswith("CN-")
        kinds = [record_type(r) for r in await published(topics, 4, lambda r: r.key == note["invoice_id"].encode())]
        assert kinds == ["InvoiceIssued", "CreditApplied", "CreditNoteIssued", "InvoicePaid"]

    async def test_a_return_without_an_invoice_is_dead_lettered(self, billing: Billing, topics: str) -> None:
        back = returned(new_id("ord"), new_id("c"), [("A", 1, 100)])
        await produce(f"{topics}orders.events", [encode(Envelope(event=back))])
        dead = await read_topic(
            f"{topics}billing.dlq", until=lambda rs: any(back.return_id.encode() in (r.value or b"") for r in rs)
        )
        [record] = [r for r in dead if back.return_id.encode() in (r.value or b"")]
        h = header_map(record.headers)
        assert "NotFound" in h["dlq_reason"] and h["dlq_topic"] == f"{topics}orders.events"


class TestDisputesPauseDunning:
    async def test_no_overdue_notice_while_disputed_then_every_level_once(self, billing: Billing, topics: str) -> None:
        customer = new_id("c")
        invoice = await billing.invoice(shipped(customer, [("A", 1, 1000)]))
        ticket = new_id("t")
        opened = events.DisputeOpened(ticket_id=ticket, customer_id=customer, invoice_id=invoice.id, reason="broken")
        await produce(f"{topics}support.events", [encode(Envelope(event=opened))])

        async def disputed() -> bool:
            got = await billing.http.get(f"/invoices/{invoice.id}", headers=STAFF)
            return bool(got.json()["disputed"])

        await eventually(disputed)
        as_of = {"as_of": (invoice.due_at + timedelta(days=31)).isoformat()}
        run = (await billing.http.post("/jobs/dunning", params=as_of, headers=ADMIN)).json()
        assert run["skipped_disputed"] >= 1
        assert await count(billing, "SELECT count(*) FROM dunning_notices WHERE invoice_id = $1", invoice.id) == 0

        resolved = events.DisputeResolved(
            ticket_id=ticket,
            customer_id=customer,
            invoice_id=invoice.id,
            outcome="rejected",
            resolved_at=datetime.now(UTC),
        )
        await produce(f"{topics}support.events", [encode(Envelope(event=resolved))])

        async def settled() -> bool:
            return not await disputed()

        await eventually(settled)
        for _ in range(2):
            await billing.http.post("/jobs/dunning", params=as_of, headers=ADMIN)
        notices = await published(
            topics, 3, lambda r: r.key == invoice.id.encode() and record_type(r) == "InvoiceOverdue"
        )
        assert [data(r)["dunning_level"] for r in notices] == [1, 2, 3]
        assert all(data(r)["order_id"] == invoice.order_id for r in notices)
        again = await published(
            topics, 4, lambda r: r.key == invoice.id.encode() and record_type(r) == "InvoiceOverdue", timeout=2
        )
        assert len(again) == 3


class TestDunningTimer:
    async def test_the_timer_duns_past_due_invoices(self, billing: Billing, topics: str) -> None:
        issued = datetime.now(UTC) - timedelta(days=32)  # due two days ago
        invoice = await billing.invoice(shipped(new_id("c"), [("A", 1, 1000)]), at=issued)
        [notice] = await published(
            topics, 1, lambda r: r.key == invoice.id.encode() and record_type(r) == "InvoiceOverdue"
        )
        assert (data(notice)["dunning_level"], data(notice)["days_overdue"]) == (1, 2)
        status = (await billing.http.get(f"/invoices/{invoice.id}", headers=STAFF)).json()["status"]
        assert status == "overdue"
