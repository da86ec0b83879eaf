"""Limits every route keeps: bodies over 1 MiB get 413, pages over 200 get 422, and one Idempotency-Key sent by
many requests at once creates one thing (on each service's main create route)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from backoffice.middleware import MAX_BODY
from tests.conftest import auth
from tests.security.conftest import Platform
from tests.security.test_authorization import ALL_SCOPES, ROUTES, Route

STAFF = auth(ALL_SCOPES, sub="limits-staff")
BIG = {"padding": "x" * (MAX_BODY + 1)}


def _has_body(route: Route) -> bool:
    return route.method in {"POST", "PUT", "PATCH"}


def _lists(route: Route) -> bool:
    return route.method == "GET" and any(p.alias == "limit" for p in route.route.dependant.query_params)


def _problem(response: httpx.Response, status: int, what: object) -> dict[str, Any]:
    assert response.status_code == status, f"{what}: {response.status_code} {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/problem+json"), what
    body: dict[str, Any] = response.json()
    return body


class TestBodySize:
    @pytest.mark.parametrize("route", [r for r in ROUTES if _has_body(r)], ids=str)
    async def test_a_body_over_one_mebibyte_is_413(self, platform: Platform, route: Route) -> None:
        response = await platform.http[route.service].request(route.method, route.url(), json=BIG, headers=STAFF)
        _problem(response, 413, route)

    @pytest.mark.parametrize("service", ["orders", "billing", "ledger", "support"])
    async def test_a_streamed_body_without_length_is_cut_at_one_mebibyte(
        self, platform: Platform, service: str
    ) -> None:
        route = next(r for r in ROUTES if r.service == service and r.method == "POST")

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"padding": "'
            for _ in range(MAX_BODY // 65536 + 2):
                yield b"x" * 65536
            yield b'"}'

        headers = {**STAFF, "content-type": "application/json"}
        response = await platform.http[service].request(route.method, route.url(), content=chunks(), headers=headers)
        _problem(response, 413, route)

    @pytest.mark.parametrize("service", ["orders", "billing", "ledger", "support"])
    async def test_a_body_just_under_the_limit_is_read(self, platform: Platform, service: str) -> None:
        route = next(r for r in ROUTES if r.service == service and r.method == "POST" and r.body_model())
        body = {"padding": "x" * (MAX_BODY - 100)}
        response = await platform.http[service].request(route.method, route.url(), json=body, headers=STAFF)
        _problem(response, 422, route)


class TestPageSize:
    @pytest.mark.parametrize("route", [r for r in ROUTES if _lists(r)], ids=str)
    async def test_a_page_over_200_is_422_naming_limit(self, platform: Platform, route: Route) -> None:
        for limit in (201, 0, -1, 10**9):
            response = await platform.http[route.service].get(route.url(), params={"limit": limit}, headers=STAFF)
            problem = _problem(response, 422, f"{route} limit={limit}")
            assert [e["field"] for e in problem["errors"]] == ["query.limit"], (route, problem)

    def test_every_service_has_list_routes(self) -> None:
        assert {r.service for r in ROUTES if _lists(r)} == {"orders", "billing", "ledger", "support"}


# --- one key, many requests at once -----------------------------------------------------------------------


async def _at_once(client: httpx.AsyncClient, url: str, body: dict[str, Any], *, n: int = 20) -> list[httpx.Response]:
    headers = {**STAFF, "Idempotency-Key": str(uuid.uuid4())}
    return await asyncio.gather(*(client.post(url, json=body, headers=headers) for _ in range(n)))


def _one_answer(responses: list[httpx.Response]) -> dict[str, Any]:
    assert {r.status_code for r in responses} == {201}, [(r.status_code, r.text[:200]) for r in responses]
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == len(responses) - 1
    body: dict[str, Any] = responses[0].json()
    return body


Count = Callable[[], Awaitable[int]]


class TestOneKeyAtOnce:
    async def test_orders_one_order_and_one_reservation(self, platform: Platform) -> None:
        http = platform.http["orders"]
        sku, customer = f"IDEM-{uuid.uuid4().hex[:8]}", f"cust-{uuid.uuid4().hex[:8]}"
        product = {"sku": sku, "name": "Kettle", "unit_price_minor": 4000, "currency": "EUR", "on_hand": 100}
        assert (await http.post("/products", json=product, headers=STAFF)).status_code == 201
        order = {"customer_id": customer, "currency": "EUR", "lines": [{"sku": sku, "quantity": 3}]}
        _one_answer(await _at_once(http, "/orders", {**order, "shipping_address": "1 Main Street"}))
        listed = (await http.get("/orders", params={"customer_id": customer}, headers=STAFF)).json()
        assert len(listed["items"]) == 1
        assert (await http.get(f"/products/{sku}", headers=STAFF)).json()["reserved"] == 3

    async def test_billing_one_payment_and_one_credit(self, platform: Platform) -> None:
        http = platform.http["billing"]
        customer = f"cust-{uuid.uuid4().hex[:8]}"
        payment = {"customer_id": customer, "currency": "EUR", "amount_minor": 700, "method": "wire", "reference": "x"}
        _one_answer(await _at_once(http, "/payments", payment))
        listed = (await http.get("/payments", params={"customer_id": customer}, headers=STAFF)).json()
        assert len(listed["items"]) == 1
        statement = (await http.get(f"/customers/{customer}/statement", headers=STAFF)).json()
        assert statement["credit"] == [{"currency": "EUR", "balance_minor": 700}]

    async def test_ledger_one_manual_entry(self, platform: Platform) -> None:
        http = platform.http["ledger"]
        code = f"T{uuid.uuid4().hex[:8]}"
        account = {"code": code, "name": "Suspense", "type": "asset"}
        assert (await http.post("/accounts", json=account, headers=STAFF)).status_code == 201
        lines = [{"account": code, "debit_minor": 500}, {"account": "1000", "credit_minor": 500}]
        _one_answer(await _at_once(http, "/journal-entries", {"currency": "EUR", "memo": "once", "lines": lines}))
        listed = (await http.get("/journal-entries", params={"account": code}, headers=STAFF)).json()
        assert len(listed["items"]) == 1

    async def test_support_one_ticket(self, platform: Platform) -> None:
        http = platform.http["support"]
        customer = f"cust-{uuid.uuid4().hex[:8]}"
        ticket = {"customer_id": customer, "subject": "Broken", "description": "It arrived broken"}
        _one_answer(await _at_once(http, "/tickets", ticket))
        listed = (await http.get("/tickets", params={"customer_id": customer}, headers=STAFF)).json()
        assert len(listed["items"]) == 1
