"""Reconciliation against billing's own figures, with a stand-in billing server on a real port: agreeing,
disagreeing, failing, slow, and stopped. The ledger side is real (its database, fed through the handlers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backoffice import events
from backoffice.auth import Verifier
from backoffice.errors import DomainError
from backoffice.settings import ServiceSettings
from devstack.procs import free_port
from ledger.app import create_app
from ledger.settings import Settings
from tests.conftest import BOOTSTRAP, running
from tests.ledger.conftest import READ, T0, bill_received, deliver, envelope, invoice_issued, payment_received, problem


class Billing:
    """Serves `GET /reports/balances` like billing does; its answer and behaviour are set by the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.figures: dict[str, Any] = {"receivables": [], "customer_credit": [], "payables": []}
        self.mode = "ok"
        self.hits = 0
        self.scopes: list[frozenset[str]] = []
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.app = FastAPI()
        self.app.add_api_route("/reports/balances", self.balances)

    async def balances(self, request: Request) -> JSONResponse:
        self.hits += 1
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        try:
            principal = Verifier(ServiceSettings()).verify(token)
        except DomainError:
            return JSONResponse({"detail": "bad token"}, status_code=401)
        self.scopes.append(principal.scopes)
        if "billing:read" not in principal.scopes:
            return JSONResponse({"detail": "scope"}, status_code=403)
        if self.mode == "error":
            return JSONResponse({"detail": "boom"}, status_code=500)
        if self.mode == "slow":
            await asyncio.sleep(3)
        if self.mode == "garbage":
            return JSONResponse({"receivables": "everything is fine"})
        return JSONResponse({"as_of": events.now().isoformat(), **self.figures})

    async def start(self) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        assert self.server is not None and self.task is not None
        self.server.should_exit = True
        await self.task


@pytest.fixture(scope="module")
async def billing() -> AsyncIterator[Billing]:
    server = Billing()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def client(books: str, topics: str, billing: Billing) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=books,
        kafka_bootstrap_servers=BOOTSTRAP,
        topic_prefix=topics,
        billing_url=f"http://127.0.0.1:{billing.port}",
        billing_attempts=3,
        billing_backoff_s=0.05,
        billing_timeout_s=0.5,
    )
    async with running(create_app(settings)) as http:
        yield http


@pytest.fixture(scope="module")
async def posted(books: str) -> dict[str, Any]:
    """The ledger's books, fed through the handlers; returns what billing would say about the same events."""
    conn = await asyncpg.connect(books)
    try:
        first = invoice_issued(customer="rc-1", subtotal=1000, tax=200)
        second = invoice_issued(customer="rc-2", subtotal=500, currency="USD")
        for event in (
            first,
            second,
            payment_received(customer="rc-1", applied={first.invoice_id: 700}, unapplied=50),
            bill_received(vendor="rv-1", subtotal=800, tax=200),
            events.BillPaymentMade(
                payment_id="bp-1", bill_id="b", vendor_id="rv-1", currency="EUR", amount_minor=300, paid_at=T0
            ),
        ):
            await deliver(conn, envelope(event))
    finally:
        await conn.close()
    return {
        "receivables": [
            {"customer_id": "rc-1", "currency": "EUR", "balance_minor": 500},
            {"customer_id": "rc-2", "currency": "USD", "balance_minor": 500},
        ],
        "customer_credit": [{"customer_id": "rc-1", "currency": "EUR", "balance_minor": 50}],
        "payables": [{"vendor_id": "rv-1", "currency": "EUR", "balance_minor": 700}],
    }


@pytest.fixture
def agreeing(billing: Billing, posted: dict[str, Any]) -> Billing:
    billing.figures = {k: [dict(row) for row in v] for k, v in posted.items()}
    billing.mode = "ok"
    billing.hits = 0
    return billing


class TestWithBillingRunning:
    async def test_agreeing_figures_give_no_differences(self, client: httpx.AsyncClient, agreeing: Billing) -> None:
        response = await client.get("/reports/reconciliation", headers=READ)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["differences"] == [] and body["checked"] == 4
        assert agreeing.scopes[-1] == frozenset({"billing:read"})

    async def test_each_disagreement_is_listed(self, client: httpx.AsyncClient, agreeing: Billing) -> None:
        agreeing.figures["receivables"][0]["balance_minor"] = 450
        agreeing.figures["payables"] = []
        agreeing.figures["customer_credit"].append({"customer_id": "rc-9", "currency": "EUR", "balance_minor": 5})
        body = (await client.get("/reports/reconciliation", headers=READ)).json()
        assert body["checked"] == 5
        assert body["differences"] == [
            {
                "kind": "customer_credit",
                "party": "rc-9",
                "currency": "EUR",
                "ledger_minor": 0,
                "billing_minor": 5,
                "difference_minor": -5,
            },
            {
                "kind": "payables",
                "party": "rv-1",
                "currency": "EUR",
                "ledger_minor": 700,
                "billing_minor": 0,
                "difference_minor": 700,
            },
            {
                "kind": "receivables",
                "party": "rc-1",
                "currency": "EUR",
                "ledger_minor": 500,
                "billing_minor": 450,
                "difference_minor": 50,
            },
        ]

    async def test_a_failing_billing_is_retried_then_503(self, client: httpx.AsyncClient, agreeing: Billing) -> None:
        agreeing.mode = "error"
        body = problem(await client.get("/reports/reconciliation", headers=READ), 503)
        assert "billing" in body["detail"] and "differences" not in body
        assert agreeing.hits == 3

    async def test_a_slow_billing_times_out_as_503(self, client: httpx.AsyncClient, agreeing: Billing) -> None:
        agreeing.mode = "slow"
        problem(await client.get("/reports/reconciliation", headers=READ), 503)

    async def test_an_unexpected_answer_is_503_not_all_clear(
        self, client: httpx.AsyncClient, agreeing: Billing
    ) -> None:
        agreeing.mode = "garbage"
        problem(await client.get("/reports/reconciliation", headers=READ), 503)


class TestWithBillingStopped:
    async def test_billing_unreachable_is_503_and_recovers_when_it_is_back(
        self, client: httpx.AsyncClient, agreeing: Billing
    ) -> None:
        await agreeing.stop()
        try:
            body = problem(await client.get("/reports/reconciliation", headers=READ), 503)
            assert "unavailable" in body["detail"]
        finally:
            await agreeing.start()
        assert (await client.get("/reports/reconciliation", headers=READ)).json()["differences"] == []
