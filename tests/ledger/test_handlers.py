"""Billing events through the real broker: one entry per event id, duplicates ignored, bad events dead-lettered."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from backoffice import events
from backoffice.envelope import Envelope, encode, header_map
from tests.conftest import eventually, produce, read_topic
from tests.ledger.conftest import READ, T0, bill_received, invoice_issued, payment_received, uid


def _keyed(*envelopes: Envelope) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    return [encode(env) for env in envelopes]


async def _entries_for(client: httpx.AsyncClient, env: Envelope) -> list[dict[str, Any]]:
    body = (await client.get(f"/journal-entries?source_event_id={env.id}", headers=READ)).json()
    return list(body["items"])


async def _balance(client: httpx.AsyncClient, code: str, cur: str = "EUR") -> int:
    return int((await client.get(f"/accounts/{code}/balance?currency={cur}", headers=READ)).json()["balance_minor"])


def _with_id(ce_id: str) -> Callable[[list[Any]], list[Any]]:
    return lambda records: [r for r in records if header_map(r.headers).get("ce_id") == ce_id]


class TestConsumption:
    async def test_each_event_posts_one_entry_however_often_it_is_delivered(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        customer = uid("c-")
        invoice = Envelope(event=invoice_issued(customer=customer, subtotal=1000, tax=190))
        paid = Envelope(
            event=events.InvoicePaid(
                invoice_id=invoice.event.key, customer_id=customer, currency="EUR", total_minor=1190, paid_at=T0
            )
        )
        await produce(f"{topics}billing.events", _keyed(invoice, invoice, paid, invoice))

        async def posted() -> bool:
            return len(await _entries_for(client, invoice)) == 1

        await eventually(posted)
        await produce(f"{topics}billing.events", _keyed(invoice))  # a late redelivery
        marker = Envelope(event=invoice_issued(customer=customer, subtotal=1))
        await produce(f"{topics}billing.events", _keyed(marker))

        async def marker_posted() -> bool:
            return len(await _entries_for(client, marker)) == 1

        await eventually(marker_posted)
        assert len(await _entries_for(client, invoice)) == 1
        assert await _entries_for(client, paid) == []
        listed = (await client.get("/journal-entries?account=1100&limit=200", headers=READ)).json()["items"]
        assert sum(1 for e in listed if any(li["party"] == customer for li in e["lines"])) == 2

    async def test_the_entry_is_announced_once_with_its_source_event(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        payment = Envelope(event=payment_received(customer=uid("c-"), applied={"i1": 300}, unapplied=20))
        await produce(f"{topics}billing.events", _keyed(payment, payment))

        def mine(records: list[Any]) -> list[Any]:
            return [r for r in records if orjson.loads(r.value).get("source_event_id") == payment.id]

        records = mine(await read_topic(f"{topics}ledger.events", until=lambda rs: bool(mine(rs))))
        assert len(records) == 1
        data = orjson.loads(records[0].value)
        assert data["source_type"] == "PaymentReceived"
        assert {(li["account"], li["debit_minor"], li["credit_minor"]) for li in data["lines"]} == {
            ("1000", 320, 0),
            ("1100", 0, 300),
            ("2300", 0, 20),
        }
        assert header_map(records[0].headers)["ce_subject"] == data["entry_id"] == records[0].key.decode()

    async def test_a_whole_flow_leaves_each_party_at_its_open_balance(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        cur = "SEK"
        customer, vendor = uid("c-"), uid("v-")
        invoice = invoice_issued(customer=customer, subtotal=1000, tax=250, currency=cur)
        flow = [
            invoice,
            payment_received(customer=customer, applied={invoice.invoice_id: 1000}, unapplied=100, currency=cur),
            events.CreditApplied(
                customer_id=customer, invoice_id=invoice.invoice_id, currency=cur, amount_minor=60, applied_at=T0
            ),
            events.CreditNoteIssued(
                credit_note_id=uid("cn-"),
                number="CN-2026-000009",
                invoice_id=invoice.invoice_id,
                customer_id=customer,
                currency=cur,
                subtotal_minor=400,
                tax_minor=100,
                total_minor=500,
                applied_to_invoice_minor=190,
                to_customer_credit_minor=310,
                issued_at=T0,
            ),
            bill_received(vendor=vendor, subtotal=800, tax=200, currency=cur),
        ]
        envelopes = [Envelope(event=e) for e in flow]
        bill = flow[-1]
        assert isinstance(bill, events.BillReceived)
        envelopes.append(
            Envelope(
                event=events.BillPaymentMade(
                    payment_id=uid("bp-"),
                    bill_id=bill.bill_id,
                    vendor_id=vendor,
                    currency=cur,
                    amount_minor=600,
                    paid_at=T0,
                )
            )
        )
        await produce(f"{topics}billing.events", _keyed(*envelopes))

        async def all_posted() -> bool:
            for env in envelopes:
                if len(await _entries_for(client, env)) != 1:
                    return False
            return True

        await eventually(all_posted)
        party = (await client.get(f"/journal-entries?currency={cur}&limit=200", headers=READ)).json()["items"]
        by_party: dict[tuple[str, str | None], int] = {}
        for entry in party:
            for li in entry["lines"]:
                key = (li["account"], li["party"])
                by_party[key] = by_party.get(key, 0) + li["debit_minor"] - li["credit_minor"]
        assert by_party[("1100", customer)] == 1250 - 1000 - 60 - 190 == 0
        assert -by_party[("2300", customer)] == 100 - 60 + 310
        assert -by_party[("2000", vendor)] == 1000 - 600
        tb = (await client.get(f"/reports/trial-balance?currency={cur}", headers=READ)).json()
        assert tb["balanced"] and tb["totals"]["debit_minor"] > 0


class TestRejection:
    async def test_an_event_whose_amounts_contradict_is_dead_lettered_and_posts_nothing(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        bad = Envelope(
            event=payment_received(customer=uid("c-"), applied={"i1": 300}).model_copy(update={"amount_minor": 999})
        )
        wrong_account = Envelope(event=bill_received(vendor=uid("v-"), subtotal=10, account="4000"))
        await produce(f"{topics}billing.events", _keyed(bad, wrong_account))
        dlq = f"{topics}ledger.dlq"
        for env in (bad, wrong_account):
            dead = _with_id(env.id)(await read_topic(dlq, until=lambda rs, e=env: bool(_with_id(e.id)(rs))))
            assert len(dead) == 1
            assert header_map(dead[0].headers)["dlq_reason"].startswith("rejected: Unprocessable")
            assert await _entries_for(client, env) == []

    async def test_a_bill_to_a_new_expense_account_opens_it(self, client: httpx.AsyncClient, topics: str) -> None:
        code = f"6{uuid.uuid4().int % 10**7:07d}"
        bill = Envelope(event=bill_received(vendor=uid("v-"), subtotal=500, tax=50, account=code))
        await produce(f"{topics}billing.events", _keyed(bill))

        async def posted() -> bool:
            return len(await _entries_for(client, bill)) == 1

        await eventually(posted)
        account = (await client.get(f"/accounts/{code}", headers=READ)).json()
        assert account["type"] == "expense"
        assert await _balance(client, code) == 500
