"""Payables against the real PostgreSQL: vendors, bills, bill payments, AP aging; and the OpenAPI document."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.billing.conftest import STAFF, Billing, new_id
from tests.conftest import auth


def key() -> dict[str, str]:
    return {**STAFF, "Idempotency-Key": str(uuid.uuid4())}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


async def vendor(billing: Billing, terms: int = 30) -> str:
    response = await billing.http.post(
        "/vendors", json={"name": "Paper & Co", "payment_terms_days": terms}, headers=STAFF
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def bill_body(vendor_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "vendor_id": vendor_id,
        "bill_number": new_id("B"),
        "currency": "EUR",
        "lines": [
            {"description": "paper", "amount_minor": 1000, "tax_minor": 200},
            {"description": "ink", "amount_minor": 500},
        ],
        "expense_account": "6000",
        "due_at": (datetime.now(UTC) + timedelta(days=10)).isoformat(),
        **extra,
    }


async def bill(billing: Billing, vendor_id: str, **extra: Any) -> dict[str, Any]:
    response = await billing.http.post("/bills", json=bill_body(vendor_id, **extra), headers=key())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


class TestBills:
    async def test_a_bill_sums_its_lines_and_announces_itself(self, billing: Billing) -> None:
        made = await bill(billing, await vendor(billing))
        assert (made["subtotal_minor"], made["tax_minor"], made["total_minor"]) == (1500, 200, 1700)
        assert (made["status"], made["balance_minor"]) == ("open", 1700)
        [(name, data)] = await billing.published(made["id"])
        assert name == "BillReceived"
        assert (data["expense_account"], data["total_minor"], data["bill_number"]) == (
            "6000",
            1700,
            made["bill_number"],
        )

    async def test_due_date_defaults_to_the_vendors_terms(self, billing: Billing) -> None:
        made = await bill(billing, await vendor(billing, terms=45), due_at=None)
        due = datetime.fromisoformat(made["due_at"]) - datetime.fromisoformat(made["received_at"])
        assert due == timedelta(days=45)

    async def test_a_vendors_bill_number_twice_is_409(self, billing: Billing) -> None:
        vendor_id = await vendor(billing)
        body = bill_body(vendor_id)
        assert (await billing.http.post("/bills", json=body, headers=key())).status_code == 201
        problem(await billing.http.post("/bills", json=body, headers=key()), 409)
        other = await vendor(billing)
        assert (await billing.http.post("/bills", json={**body, "vendor_id": other}, headers=key())).status_code == 201

    async def test_bad_bills_are_refused_naming_the_field(self, billing: Billing) -> None:
        vendor_id = await vendor(billing)
        assert "header.Idempotency-Key" in fields(
            problem(await billing.http.post("/bills", json=bill_body(vendor_id), headers=STAFF), 400)
        )
        for extra, field in [
            ({"expense_account": "60"}, "body.expense_account"),
            ({"expense_account": "abcd"}, "body.expense_account"),
            ({"lines": []}, "body.lines"),
            ({"lines": [{"description": "x", "amount_minor": -1}]}, "body.lines.0.amount_minor"),
            ({"currency": "EURO"}, "body.currency"),
            ({"status": "paid"}, "body.status"),
            ({"vendor_id": str(uuid.uuid4())}, "body.vendor_id"),
        ]:
            response = await billing.http.post("/bills", json={**bill_body(vendor_id), **extra}, headers=key())
            assert field in fields(problem(response, 422)), extra

    async def test_customers_cannot_see_payables(self, billing: Billing) -> None:
        problem(await billing.http.get("/bills", headers=auth("billing:read", customer_id="c")), 403)
        problem(await billing.http.get("/reports/ap-aging", headers=auth("billing:read", customer_id="c")), 403)


class TestBillPayments:
    async def test_partial_payments_then_paid(self, billing: Billing) -> None:
        made = await bill(billing, await vendor(billing))
        url = f"/bills/{made['id']}/payments"
        first = await billing.http.post(url, json={"amount_minor": 700, "reference": "wire 1"}, headers=key())
        assert first.status_code == 201, first.text
        assert first.json()["bill"]["status"] == "partially_paid" and first.json()["bill"]["balance_minor"] == 1000
        second = await billing.http.post(url, json={"amount_minor": 1000, "reference": "wire 2"}, headers=key())
        assert second.json()["bill"]["status"] == "paid"
        kinds = [name for name, _ in await billing.published(made["id"])]
        assert kinds == ["BillReceived", "BillPaymentMade", "BillPaymentMade", "BillPaid"]
        got = (await billing.http.get(f"/bills/{made['id']}", headers=STAFF)).json()
        assert [p["amount_minor"] for p in got["payments"]] == [700, 1000]
        problem(await billing.http.post(url, json={"amount_minor": 1, "reference": "x"}, headers=key()), 409)

    async def test_over_payment_is_422_and_parallel_payments_never_overpay(self, billing: Billing) -> None:
        made = await bill(billing, await vendor(billing))
        url = f"/bills/{made['id']}/payments"
        over = await billing.http.post(url, json={"amount_minor": 1701, "reference": "x"}, headers=key())
        assert "body.amount_minor" in fields(problem(over, 422))
        responses = await asyncio.gather(
            *(billing.http.post(url, json={"amount_minor": 500, "reference": "x"}, headers=key()) for _ in range(5))
        )
        assert sorted(r.status_code for r in responses) == [201, 201, 201, 422, 422]
        assert (await billing.http.get(f"/bills/{made['id']}", headers=STAFF)).json()["balance_minor"] == 200

    async def test_a_payment_needs_a_key_and_a_known_bill(self, billing: Billing) -> None:
        body = {"amount_minor": 1, "reference": "x"}
        problem(await billing.http.post(f"/bills/{uuid.uuid4()}/payments", json=body, headers=STAFF), 400)
        problem(await billing.http.post(f"/bills/{uuid.uuid4()}/payments", json=body, headers=key()), 404)


class TestReports:
    async def test_ap_aging_and_payables_balance(self, billing: Billing) -> None:
        vendor_id = await vendor(billing)
        now = datetime.now(UTC)
        await bill(billing, vendor_id, due_at=(now + timedelta(days=5)).isoformat())
        late = await bill(billing, vendor_id, due_at=(now - timedelta(days=40)).isoformat())
        pay = {"amount_minor": 700, "reference": "x"}
        assert (await billing.http.post(f"/bills/{late['id']}/payments", json=pay, headers=key())).status_code == 201
        report = (await billing.http.get("/reports/ap-aging", headers=STAFF)).json()
        [row] = [r for r in report["rows"] if r["vendor_id"] == vendor_id]
        assert row["buckets"] == {"current": 1700, "1-30": 0, "31-60": 1000, "61-90": 0, "90+": 0}
        balances = (await billing.http.get("/reports/balances", headers=STAFF)).json()
        assert {"vendor_id": vendor_id, "currency": "EUR", "balance_minor": 2700} in balances["payables"]

    async def test_openapi_document_builds(self, billing: Billing) -> None:
        spec = (await billing.http.get("/openapi.json")).json()
        for path in ("/invoices", "/payments", "/bills", "/bills/{bill_id}/payments", "/reports/balances"):
            assert path in spec["paths"]
