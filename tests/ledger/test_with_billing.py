"""The two sides of the reconciliation interface together: the real billing service (its own database, on a real
port, on the real broker) issues invoices, takes payments and bills; the ledger books them from billing.events and
its reconciliation agrees with billing's own figures for these customers and vendors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn

from backoffice import events
from backoffice.envelope import Envelope, encode
from billing.app import create_app as create_billing
from billing.settings import Settings as BillingSettings
from devstack.procs import free_port
from ledger.app import create_app
from ledger.settings import Settings
from tests.conftest import BOOTSTRAP, auth, eventually, produce, running
from tests.ledger.conftest import READ


@pytest.fixture(scope="module")
async def billing_url(make_database: Callable[[str], Awaitable[str]], topics: str) -> AsyncIterator[str]:
    port = free_port()
    settings = BillingSettings(
        database_url=await make_database("ledger_with_billing_billing"),
        kafka_bootstrap_servers=BOOTSTRAP,
        topic_prefix=topics,
    )
    server = uvicorn.Server(uvicorn.Config(create_billing(settings), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(60):
        while not server.started:
            await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture(scope="module")
async def client(books: str, topics: str, billing_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=books, kafka_bootstrap_servers=BOOTSTRAP, topic_prefix=topics, billing_url=billing_url
    )
    async with running(create_app(settings)) as http:
        yield http


async def _billing_post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {**auth("billing:write billing:read"), "Idempotency-Key": str(uuid.uuid4())}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.post(path, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _ledger_parties(client: httpx.AsyncClient, parties: set[str]) -> dict[tuple[str, str], int]:
    """Net debit per (account, party) over this test's parties, from the ledger's entries."""
    out: dict[tuple[str, str], int] = {}
    cursor = None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        body = (await client.get("/journal-entries", params=params, headers=READ)).json()
        for entry in body["items"]:
            for line in entry["lines"]:
                if line["party"] in parties:
                    key = (line["account"], line["party"])
                    out[key] = out.get(key, 0) + line["debit_minor"] - line["credit_minor"]
        cursor = body["next_cursor"]
        if cursor is None:
            return out


class TestReconciliationWithBilling:
    async def test_the_ledger_agrees_with_billing_after_invoices_payments_and_bills(
        self, client: httpx.AsyncClient, billing_url: str, topics: str
    ) -> None:
        customer = f"cust-{uuid.uuid4().hex[:10]}"
        shipped = events.OrderShipped(
            order_id=str(uuid.uuid4()),
            shipment_id=str(uuid.uuid4()),
            customer_id=customer,
            currency="EUR",
            lines=(events.Line(sku="SKU-1", quantity=2, unit_price_minor=500),),
            subtotal_minor=1000,
            shipped_at=events.now(),
        )
        await produce(f"{topics}orders.events", [encode(Envelope(event=shipped))])

        async def invoiced() -> bool:
            return ("1100", customer) in await _ledger_parties(client, {customer})

        await eventually(invoiced, timeout=60)
        await _billing_post(
            billing_url,
            "/payments",
            {"customer_id": customer, "currency": "EUR", "amount_minor": 1500, "method": "card", "reference": "r-1"},
        )
        vendor = await _billing_post(billing_url, "/vendors", {"name": f"Vendor {customer}"})
        bill = await _billing_post(
            billing_url,
            "/bills",
            {
                "vendor_id": vendor["id"],
                "bill_number": f"B-{customer}",
                "currency": "EUR",
                "lines": [{"description": "rent", "amount_minor": 800, "tax_minor": 200}],
                "expense_account": "6000",
            },
        )
        await _billing_post(billing_url, f"/bills/{bill['id']}/payments", {"amount_minor": 300, "reference": "bp-1"})
        parties = {customer, vendor["id"]}
        expected = {("1100", customer): 0, ("2300", customer): -(1500 - 1200), ("2000", vendor["id"]): -(1000 - 300)}

        async def booked() -> bool:
            ledger = await _ledger_parties(client, parties)
            return all(ledger.get(k) == v for k, v in expected.items())

        await eventually(booked, timeout=60)
        response = await client.get("/reports/reconciliation", headers=READ)
        assert response.status_code == 200, response.text
        report = response.json()
        assert [d for d in report["differences"] if d["party"] in parties] == []
        assert report["checked"] >= 2  # this customer's credit and this vendor's payable were compared, at least
