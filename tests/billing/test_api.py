"""The receivables API against the real PostgreSQL: invoices, payments, credit, statement, dunning, reports."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.billing.conftest import ADMIN, STAFF, Billing, new_id, returned, shipped
from tests.conftest import auth


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


async def pay(billing: Billing, customer: str, amount: int, **extra: Any) -> httpx.Response:
    body = {"customer_id": customer, "currency": "EUR", "amount_minor": amount, "method": "bank", "reference": "r"}
    return await billing.http.post("/payments", json={**body, **extra}, headers={**STAFF, **key()})


class TestInvoices:
    async def test_invoice_shows_lines_tax_total_and_due_date(self, billing: Billing) -> None:
        customer = new_id("c")
        inv = await billing.invoice(shipped(customer, [("A", 3, 1234), ("B", 1, 1)]))
        body = (await billing.http.get(f"/invoices/{inv.id}", headers=STAFF)).json()
        assert body["subtotal_minor"] == 3703
        assert body["tax_minor"] == 741  # 740.6 rounded half up
        assert body["total_minor"] == body["balance_minor"] == 4444
        assert body["status"] == "open"
        assert body["number"].startswith(f"INV-{datetime.now(UTC).year}-")
        assert [line["amount_minor"] for line in body["lines"]] == [3702, 1]
        issued, due = datetime.fromisoformat(body["issued_at"]), datetime.fromisoformat(body["due_at"])
        assert due - issued == timedelta(days=30)
        assert issued.utcoffset() == timedelta(0)

    async def test_due_date_follows_the_customers_terms(self, billing: Billing) -> None:
        customer = new_id("c")
        put = await billing.http.put(f"/customers/{customer}/terms", json={"payment_terms_days": 14}, headers=STAFF)
        assert put.status_code == 200, put.text
        inv = await billing.invoice(shipped(customer, [("A", 1, 100)]))
        assert inv.due_at - inv.issued_at == timedelta(days=14)
        terms = (await billing.http.get(f"/customers/{customer}/terms", headers=STAFF)).json()
        assert terms == {"customer_id": customer, "payment_terms_days": 14, "is_default": False}

    async def test_terms_out_of_range_or_unknown_fields_are_422(self, billing: Billing) -> None:
        url = f"/customers/{new_id('c')}/terms"
        assert "body.payment_terms_days" in fields(
            problem(await billing.http.put(url, json={"payment_terms_days": -1}, headers=STAFF), 422)
        )
        bad = await billing.http.put(url, json={"payment_terms_days": 5, "status": "x"}, headers=STAFF)
        assert "body.status" in fields(problem(bad, 422))

    async def test_a_customer_sees_only_their_own_invoices(self, billing: Billing) -> None:
        mine, theirs = new_id("c"), new_id("c")
        own = await billing.invoice(shipped(mine, [("A", 1, 100)]))
        other = await billing.invoice(shipped(theirs, [("A", 1, 100)]))
        me = auth("billing:read", customer_id=mine)
        assert (await billing.http.get(f"/invoices/{own.id}", headers=me)).status_code == 200
        problem(await billing.http.get(f"/invoices/{other.id}", headers=me), 404)
        listed = (await billing.http.get(f"/invoices?customer_id={theirs}", headers=me)).json()
        assert {i["customer_id"] for i in listed["items"]} == {mine}
        problem(await billing.http.get(f"/customers/{theirs}/statement", headers=me), 404)
        assert (await billing.http.get(f"/customers/{mine}/statement", headers=me)).status_code == 200

    async def test_list_filters_by_status_and_pages_with_a_cursor(self, billing: Billing) -> None:
        customer = new_id("c")
        made = [await billing.invoice(shipped(customer, [("A", 1, 100 + i)])) for i in range(5)]
        seen, cursor = [], None
        while True:
            url = f"/invoices?customer_id={customer}&limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = (await billing.http.get(url, headers=STAFF)).json()
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [i.id for i in made]
        assert (await pay(billing, customer, made[0].total_minor)).status_code == 201
        paid = (await billing.http.get(f"/invoices?customer_id={customer}&status=paid", headers=STAFF)).json()
        assert [i["id"] for i in paid["items"]] == [made[0].id]
        problem(await billing.http.get("/invoices?status=bogus", headers=STAFF), 422)

    async def test_auth_is_required_and_scoped(self, billing: Billing) -> None:
        problem(await billing.http.get("/invoices"), 401)
        problem(await billing.http.get("/invoices", headers=auth("orders:read")), 403)
        problem(await billing.http.get(f"/invoices/{uuid.uuid4()}", headers=STAFF), 404)
        problem(await billing.http.get("/invoices/not-a-uuid", headers=STAFF), 422)


class TestPayments:
    async def test_idempotency_key_is_required(self, billing: Billing) -> None:
        body = {"customer_id": "c", "currency": "EUR", "amount_minor": 1, "method": "bank", "reference": "r"}
        response = await billing.http.post("/payments", json=body, headers=STAFF)
        assert "header.Idempotency-Key" in fields(problem(response, 400))

    async def test_same_key_replays_the_first_answer_and_pays_once(self, billing: Billing) -> None:
        customer = new_id("c")
        inv = await billing.invoice(shipped(customer, [("A", 1, 1000)]))
        body = {"customer_id": customer, "currency": "EUR", "amount_minor": 500, "method": "card", "reference": "x"}
        headers = {**STAFF, **key()}
        first = await billing.http.post("/payments", json=body, headers=headers)
        again = await billing.http.post("/payments", json=body, headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.content == again.content
        assert (await billing.http.get(f"/invoices/{inv.id}", headers=STAFF)).json()["balance_minor"] == 700

    async def test_without_allocations_oldest_open_invoice_first_rest_is_credit(self, billing: Billing) -> None:
        customer = new_id("c")
        old = await billing.invoice(shipped(customer, [("A", 1, 1000)]))  # 1200
        new = await billing.invoice(shipped(customer, [("A", 1, 500)]))  # 600
        response = await pay(billing, customer, 1500)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["applied"] == [
            {"invoice_id": old.id, "amount_minor": 1200},
            {"invoice_id": new.id, "amount_minor": 300},
        ]
        assert body["unapplied_minor"] == 0
        assert (await billing.http.get(f"/invoices/{old.id}", headers=STAFF)).json()["status"] == "paid"
        assert (await billing.http.get(f"/invoices/{new.id}", headers=STAFF)).json()["status"] == "partially_paid"
        names = [name for name, _ in await billing.published(body["id"])]
        assert names == ["PaymentReceived"]
        paid = await billing.published(old.id)
        assert [n for n, _ in paid] == ["InvoiceIssued", "InvoicePaid"]
        assert paid[1][1]["order_id"] == old.order_id
        assert paid[1][1]["total_minor"] == 1200

    async def test_overpayment_becomes_credit_applied_to_the_next_invoice(self, billing: Billing) -> None:
        customer = new_id("c")
        response = await pay(billing, customer, 1000)
        assert response.json()["unapplied_minor"] == 1000
        received = (await billing.published(response.json()["id"]))[0][1]
        assert received["amount_minor"] == 1000 and received["applied"] == [] and received["unapplied_minor"] == 1000
        first = await billing.invoice(shipped(customer, [("A", 1, 500)]))  # 600, fully from credit
        second = await billing.invoice(shipped(customer, [("A", 1, 500)]))  # 600, 400 from credit
        assert (first.status, first.balance_minor) == ("paid", 0)
        assert (second.status, second.balance_minor) == ("partially_paid", 200)
        assert [n for n, _ in await billing.published(first.id)] == ["InvoiceIssued", "CreditApplied", "InvoicePaid"]
        applied = await billing.published(second.id)
        assert [n for n, _ in applied] == ["InvoiceIssued", "CreditApplied"]
        assert applied[1][1]["amount_minor"] == 400
        statement = (await billing.http.get(f"/customers/{customer}/statement", headers=STAFF)).json()
        assert statement["credit"] == []
        assert statement["balance"] == [
            {"currency": "EUR", "open_invoices_minor": 200, "credit_minor": 0, "balance_minor": 200}
        ]

    async def test_credit_is_only_applied_in_its_own_currency(self, billing: Billing) -> None:
        customer = new_id("c")
        assert (await pay(billing, customer, 1000)).status_code == 201
        usd = await billing.invoice(shipped(customer, [("A", 1, 500)], currency="USD"))
        assert usd.balance_minor == 600 and usd.credit_applied_minor == 0

    async def test_allocations_go_where_asked(self, billing: Billing) -> None:
        customer = new_id("c")
        old = await billing.invoice(shipped(customer, [("A", 1, 1000)]))
        new = await billing.invoice(shipped(customer, [("A", 1, 1000)]))
        response = await pay(billing, customer, 700, allocations=[{"invoice_id": new.id, "amount_minor": 500}])
        assert response.status_code == 201, response.text
        assert response.json()["applied"] == [{"invoice_id": new.id, "amount_minor": 500}]
        assert response.json()["unapplied_minor"] == 200
        assert (await billing.http.get(f"/invoices/{old.id}", headers=STAFF)).json()["balance_minor"] == 1200

    async def test_bad_allocations_are_422_naming_the_allocation(self, billing: Billing) -> None:
        customer, other = new_id("c"), new_id("c")
        mine = await billing.invoice(shipped(customer, [("A", 1, 1000)]))
        usd = await billing.invoice(shipped(customer, [("A", 1, 1000)], currency="USD"))
        theirs = await billing.invoice(shipped(other, [("A", 1, 1000)]))
        cases = [
            ([{"invoice_id": mine.id, "amount_minor": 1201}], "body.allocations.0.amount_minor"),
            ([{"invoice_id": theirs.id, "amount_minor": 1}], "body.allocations.0.invoice_id"),
            ([{"invoice_id": str(uuid.uuid4()), "amount_minor": 1}], "body.allocations.0.invoice_id"),
            (
                [{"invoice_id": mine.id, "amount_minor": 1}, {"invoice_id": usd.id, "amount_minor": 1}],
                "body.allocations.1",
            ),
            ([{"invoice_id": mine.id, "amount_minor": 900}], "body.allocations"),
            ([{"invoice_id": "nope", "amount_minor": 1}], "body.allocations.0.invoice_id"),
            ([{"invoice_id": mine.id, "amount_minor": 0}], "body.allocations.0.amount_minor"),
        ]
        for allocations, field in cases:
            response = await pay(billing, customer, 800, allocations=allocations)
            assert field in fields(problem(response, 422)), (allocations, response.text)
        assert (await billing.http.get(f"/invoices/{mine.id}", headers=STAFF)).json()["balance_minor"] == 1200

    async def test_bad_payment_bodies_are_422_naming_the_field(self, billing: Billing) -> None:
        for extra, field in [
            ({"amount_minor": 0}, "body.amount_minor"),
            ({"amount_minor": 1.5}, "body.amount_minor"),
            ({"currency": "eur"}, "body.currency"),
            ({"status": "paid"}, "body.status"),
            ({"received_at": "2026-01-01T00:00:00"}, "body.received_at"),
        ]:
            assert field in fields(problem(await pay(billing, "c", 100, **extra), 422)), extra

    async def test_a_customer_token_cannot_record_payments_even_its_own(self, billing: Billing) -> None:
        for customer in ("someone", "me"):
            body = {"customer_id": customer, "currency": "EUR", "amount_minor": 1, "method": "card", "reference": "r"}
            headers = {**auth("billing:write", customer_id="me"), **key()}
            problem(await billing.http.post("/payments", json=body, headers=headers), 403)

    async def test_parallel_payments_never_take_more_than_the_balance(self, billing: Billing) -> None:
        customer = new_id("c")
        inv = await billing.invoice(shipped(customer, [("A", 1, 1000)]))  # 1200
        allocations = [{"invoice_id": inv.id, "amount_minor": 300}]
        responses = await asyncio.gather(*(pay(billing, customer, 300, allocations=allocations) for _ in range(8)))
        assert sorted(r.status_code for r in responses) == [201] * 4 + [422] * 4
        body = (await billing.http.get(f"/invoices/{inv.id}", headers=STAFF)).json()
        assert (body["balance_minor"], body["status"]) == (0, "paid")
        assert [n for n, _ in await billing.published(inv.id)].count("InvoicePaid") == 1


class TestCreditNotes:
    async def test_return_reduces_the_open_balance_first_then_becomes_credit(self, billing: Billing) -> None:
        customer = new_id("c")
        inv = await billing.invoice(shipped(customer, [("A", 2, 1000)]))  # 2400
        assert (await pay(billing, customer, 2000)).status_code == 201  # 400 left
        note = await billing.credit(returned(inv.order_id, customer, [("A", 1, 1000)]))  # 1200
        assert (note.applied_to_invoice_minor, note.to_customer_credit_minor) == (400, 800)
        assert note.number.startswith(f"CN-{datetime.now(UTC).year}-")
        body = (await billing.http.get(f"/invoices/{inv.id}", headers=STAFF)).json()
        assert (body["balance_minor"], body["status"]) == (0, "paid")
        issued = [d for n, d in await billing.published(inv.id) if n == "CreditNoteIssued"]
        assert issued[0]["total_minor"] == 1200 and issued[0]["to_customer_credit_minor"] == 800
        assert issued[0]["return_id"] and issued[0]["order_id"] == inv.order_id
        statement = (await billing.http.get(f"/customers/{customer}/statement", headers=STAFF)).json()
        assert statement["credit"] == [{"currency": "EUR", "balance_minor": 800}]
        assert [c["id"] for c in statement["credit_notes"]] == [note.id]
        assert len(statement["payments"]) == 1 and len(statement["invoices"]) == 1
        assert statement["balance"][0]["balance_minor"] == -800
        got = await billing.http.get(f"/credit-notes/{note.id}", headers=auth("billing:read", customer_id="x"))
        problem(got, 404)

    async def test_a_fully_credited_unpaid_invoice_is_credited(self, billing: Billing) -> None:
        customer = new_id("c")
        inv = await billing.invoice(shipped(customer, [("A", 2, 1000)]))
        await billing.credit(returned(inv.order_id, customer, [("A", 2, 1000)]))
        body = (await billing.http.get(f"/invoices/{inv.id}", headers=STAFF)).json()
        assert (body["balance_minor"], body["status"]) == (0, "credited")
        assert "InvoicePaid" not in [n for n, _ in await billing.published(inv.id)]


def _iso(moment: datetime) -> str:
    return moment.isoformat()


class TestDunning:
    async def test_first_run_forty_days_late_announces_each_level_once_in_order(self, billing: Billing) -> None:
        inv = await billing.invoice(shipped(new_id("c"), [("A", 1, 1000)]))
        as_of = inv.due_at + timedelta(days=40)
        for _ in range(2):
            run = await billing.http.post("/jobs/dunning", params={"as_of": _iso(as_of)}, headers=ADMIN)
            assert run.status_code == 200, run.text
        overdue = [d for n, d in await billing.published(inv.id) if n == "InvoiceOverdue"]
        assert [d["dunning_level"] for d in overdue] == [1, 2, 3]
        assert {d["days_overdue"] for d in overdue} == {40}
        assert overdue[0]["order_id"] == inv.order_id and overdue[0]["balance_minor"] == 1200
        body = (await billing.http.get(f"/invoices/{inv.id}", headers=STAFF)).json()
        assert (body["status"], body["dunning_level"]) == ("overdue", 3)

    async def test_parallel_runs_still_announce_each_level_once(self, billing: Billing) -> None:
        inv = await billing.invoice(shipped(new_id("c"), [("A", 1, 1000)]))
        params = {"as_of": _iso(inv.due_at + timedelta(days=35))}
        runs = await asyncio.gather(
            *(billing.http.post("/jobs/dunning", params=params, headers=ADMIN) for _ in range(4))
        )
        assert {r.status_code for r in runs} == {200}
        overdue = [d["dunning_level"] for n, d in await billing.published(inv.id) if n == "InvoiceOverdue"]
        assert overdue == [1, 2, 3]

    async def test_levels_come_at_1_15_and_30_days(self, billing: Billing) -> None:
        inv = await billing.invoice(shipped(new_id("c"), [("A", 1, 1000)]))
        levels = []
        for days in (0, 1, 2, 14, 15, 29, 30, 31):
            as_of = inv.due_at + timedelta(days=days, minutes=1)
            await billing.http.post("/jobs/dunning", params={"as_of": _iso(as_of)}, headers=ADMIN)
            levels.append([d["dunning_level"] for n, d in await billing.published(inv.id) if n == "InvoiceOverdue"])
        assert levels == [[], [1], [1], [1], [1, 2], [1, 2], [1, 2, 3], [1, 2, 3]]

    async def test_an_overdue_invoice_stays_overdue_until_paid(self, billing: Billing) -> None:
        customer = new_id("c")
        inv = await billing.invoice(shipped(customer, [("A", 1, 1000)]))
        await billing.http.post("/jobs/dunning", params={"as_of": _iso(inv.due_at + timedelta(days=2))}, headers=ADMIN)
        await pay(billing, customer, 200)
        assert (await billing.http.get(f"/invoices/{inv.id}", headers=STAFF)).json()["status"] == "overdue"
        await pay(billing, customer, 1000)
        assert (await billing.http.get(f"/invoices/{inv.id}", headers=STAFF)).json()["status"] == "paid"
        overdue = await billing.http.get(f"/invoices?customer_id={customer}&status=overdue", headers=STAFF)
        assert overdue.json()["items"] == []

    async def test_only_admins_run_it_and_as_of_needs_an_offset(self, billing: Billing) -> None:
        problem(await billing.http.post("/jobs/dunning", headers=STAFF), 403)
        bad = await billing.http.post("/jobs/dunning", params={"as_of": "2026-01-01T00:00:00"}, headers=ADMIN)
        assert "query.as_of" in fields(problem(bad, 422))


class TestReports:
    async def test_ar_aging_buckets_by_days_past_due(self, billing: Billing) -> None:
        customer = new_id("c")
        await billing.http.put(f"/customers/{customer}/terms", json={"payment_terms_days": 0}, headers=STAFF)
        now = datetime.now(UTC)
        for days_ago in (0, 10, 45, 75, 120):
            await billing.invoice(shipped(customer, [("A", 1, 1000)]), at=now - timedelta(days=days_ago, hours=1))
        me = auth("billing:read", customer_id=customer)
        report = (await billing.http.get("/reports/ar-aging", params={"currency": "EUR"}, headers=me)).json()
        assert report["rows"] == [
            {
                "customer_id": customer,
                "vendor_id": None,
                "currency": "EUR",
                "buckets": {"current": 1200, "1-30": 1200, "31-60": 1200, "61-90": 1200, "90+": 1200},
                "total_minor": 6000,
            }
        ]
        staff = await billing.http.get("/reports/ar-aging", params={"customer_id": customer}, headers=STAFF)
        assert [r["customer_id"] for r in staff.json()["rows"]] == [customer]
        assert staff.json()["totals"][0]["total_minor"] == 6000
        earlier = now - timedelta(days=50)
        past = (await billing.http.get("/reports/ar-aging", params={"as_of": _iso(earlier)}, headers=me)).json()
        assert past["rows"][0]["buckets"] == {"current": 0, "1-30": 1200, "31-60": 0, "61-90": 1200, "90+": 0}

    async def test_balances_match_open_invoices_and_credit(self, billing: Billing) -> None:
        customer = new_id("c")
        await billing.invoice(shipped(customer, [("A", 1, 1000)]))
        await pay(billing, customer, 200)
        await pay(billing, customer, 1500)  # 1000 to the invoice, 500 credit
        await billing.invoice(shipped(customer, [("A", 1, 1000)]))  # 500 of credit used, 700 open
        body = (await billing.http.get("/reports/balances", headers=auth("billing:read"))).json()
        assert {"as_of", "receivables", "customer_credit", "payables"} <= body.keys()
        mine = [r for r in body["receivables"] if r["customer_id"] == customer]
        assert mine == [{"customer_id": customer, "currency": "EUR", "balance_minor": 700}]
        assert not [r for r in body["customer_credit"] if r["customer_id"] == customer]
