"""Property: any valid history of billing events, delivered with duplicates and out of order across aggregates,
leaves every entry balanced, the trial balance at zero per currency, and the receivable, customer-credit and
payable accounts equal to the balances the same events imply. Run through the handlers against the real database."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backoffice import events
from backoffice.envelope import Envelope
from ledger import domain, store
from tests.ledger.conftest import T0, deliver

CURRENCIES = ("EUR", "USD")
Key = tuple[str, str]  # (party, currency)


@dataclass
class History:
    """A valid billing history and the balances it implies, as billing would keep them."""

    prefix: str
    events: list[events.Event] = field(default_factory=list)
    open_invoices: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # id -> customer, currency, open
    credit: dict[Key, int] = field(default_factory=lambda: defaultdict(int))
    open_bills: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # id -> vendor, currency, open
    n: int = 0

    def id(self, kind: str) -> str:
        self.n += 1
        return f"{self.prefix}-{kind}{self.n}"

    def receivables(self) -> dict[Key, int]:
        out: dict[Key, int] = defaultdict(int)
        for customer, currency, amount in self.open_invoices.values():
            out[(customer, currency)] += amount
        return {k: v for k, v in out.items() if v}

    def payables(self) -> dict[Key, int]:
        out: dict[Key, int] = defaultdict(int)
        for vendor, currency, amount in self.open_bills.values():
            out[(vendor, currency)] += amount
        return {k: v for k, v in out.items() if v}


amounts = st.integers(min_value=0, max_value=50_000)


def _issue_invoice(draw: st.DrawFn, h: History, customer: str, currency: str) -> None:
    subtotal, tax = draw(amounts), draw(st.integers(0, 10_000))
    invoice_id = h.id("inv")
    when = T0 + timedelta(minutes=h.n)
    h.events.append(
        events.InvoiceIssued(
            invoice_id=invoice_id,
            number=f"INV-2026-{h.n:06d}",
            customer_id=customer,
            currency=currency,
            lines=(),
            subtotal_minor=subtotal,
            tax_minor=tax,
            total_minor=subtotal + tax,
            issued_at=when,
            due_at=when + timedelta(days=30),
        )
    )
    h.open_invoices[invoice_id] = (customer, currency, subtotal + tax)


def _receive_payment(draw: st.DrawFn, h: History, customer: str, currency: str) -> None:
    applied = []
    for invoice_id, (c, cur, open_) in list(h.open_invoices.items()):
        if c == customer and cur == currency and open_ > 0 and draw(st.booleans()):
            amount = draw(st.integers(1, open_))
            applied.append(events.Allocation(invoice_id=invoice_id, amount_minor=amount))
            h.open_invoices[invoice_id] = (c, cur, open_ - amount)
    unapplied = draw(st.integers(0 if applied else 1, 20_000))
    h.credit[(customer, currency)] += unapplied
    h.events.append(
        events.PaymentReceived(
            payment_id=h.id("pay"),
            customer_id=customer,
            currency=currency,
            amount_minor=sum(a.amount_minor for a in applied) + unapplied,
            applied=tuple(applied),
            unapplied_minor=unapplied,
            received_at=T0 + timedelta(minutes=h.n),
        )
    )


def _apply_credit(draw: st.DrawFn, h: History, customer: str, currency: str) -> None:
    available = h.credit[(customer, currency)]
    candidates = [
        i for i, (c, cur, open_) in h.open_invoices.items() if c == customer and cur == currency and open_ > 0
    ]
    if not available or not candidates:
        return
    invoice_id = draw(st.sampled_from(candidates))
    c, cur, open_ = h.open_invoices[invoice_id]
    amount = draw(st.integers(1, min(available, open_)))
    h.open_invoices[invoice_id] = (c, cur, open_ - amount)
    h.credit[(customer, currency)] -= amount
    h.events.append(
        events.CreditApplied(
            customer_id=customer, invoice_id=invoice_id, currency=currency, amount_minor=amount, applied_at=T0
        )
    )


def _issue_credit_note(draw: st.DrawFn, h: History, customer: str, currency: str) -> None:
    candidates = [i for i, (c, cur, _) in h.open_invoices.items() if c == customer and cur == currency]
    if not candidates:
        return
    invoice_id = draw(st.sampled_from(candidates))
    c, cur, open_ = h.open_invoices[invoice_id]
    subtotal, tax = draw(st.integers(0, 20_000)), draw(st.integers(0, 4_000))
    total = subtotal + tax
    to_invoice = min(open_, total)  # billing reduces the open balance first; the excess becomes credit
    h.open_invoices[invoice_id] = (c, cur, open_ - to_invoice)
    h.credit[(customer, currency)] += total - to_invoice
    h.events.append(
        events.CreditNoteIssued(
            credit_note_id=h.id("cn"),
            number=f"CN-2026-{h.n:06d}",
            invoice_id=invoice_id,
            customer_id=customer,
            currency=currency,
            subtotal_minor=subtotal,
            tax_minor=tax,
            total_minor=total,
            applied_to_invoice_minor=to_invoice,
            to_customer_credit_minor=total - to_invoice,
            issued_at=T0 + timedelta(minutes=h.n),
        )
    )


def _receive_bill(draw: st.DrawFn, h: History, vendor: str, currency: str) -> None:
    subtotal, tax = draw(amounts), draw(st.integers(0, 10_000))
    bill_id = h.id("bill")
    h.open_bills[bill_id] = (vendor, currency, subtotal + tax)
    h.events.append(
        events.BillReceived(
            bill_id=bill_id,
            vendor_id=vendor,
            bill_number=bill_id,
            currency=currency,
            expense_account=draw(st.sampled_from(["6000", "6000", "1500"])),
            subtotal_minor=subtotal,
            tax_minor=tax,
            total_minor=subtotal + tax,
            due_at=T0 + timedelta(days=30),
        )
    )


def _pay_bill(draw: st.DrawFn, h: History, vendor: str, currency: str) -> None:
    candidates = [b for b, (v, cur, open_) in h.open_bills.items() if v == vendor and cur == currency and open_ > 0]
    if not candidates:
        return
    bill_id = draw(st.sampled_from(candidates))
    v, cur, open_ = h.open_bills[bill_id]
    amount = draw(st.integers(1, open_))
    h.open_bills[bill_id] = (v, cur, open_ - amount)
    h.events.append(
        events.BillPaymentMade(
            payment_id=h.id("bp"), bill_id=bill_id, vendor_id=vendor, currency=cur, amount_minor=amount, paid_at=T0
        )
    )
    if open_ == amount:
        h.events.append(events.BillPaid(bill_id=bill_id, vendor_id=vendor, currency=cur, total_minor=0, paid_at=T0))


ACTIONS = {
    "invoice": _issue_invoice,
    "payment": _receive_payment,
    "credit": _apply_credit,
    "credit_note": _issue_credit_note,
    "bill": _receive_bill,
    "bill_payment": _pay_bill,
}


@st.composite
def histories(draw: st.DrawFn) -> tuple[History, list[Envelope]]:
    """A valid history, and its delivery: per-aggregate order kept, aggregates interleaved, some events twice."""
    h = History(prefix=uuid.uuid4().hex[:8])
    customers = [f"{h.prefix}-c{i}" for i in range(draw(st.integers(1, 3)))]
    vendors = [f"{h.prefix}-v{i}" for i in range(draw(st.integers(1, 2)))]
    for _ in range(draw(st.integers(1, 25))):
        action = draw(st.sampled_from(sorted(ACTIONS)))
        party = draw(st.sampled_from(vendors if action.startswith("bill") else customers))
        ACTIONS[action](draw, h, party, draw(st.sampled_from(CURRENCIES)))
    envelopes = [Envelope(event=e, time=T0) for e in h.events]
    queues: dict[str, list[Envelope]] = defaultdict(list)
    for env in envelopes:
        queues[env.subject].append(env)
    delivery: list[Envelope] = []
    while queues:
        key = draw(st.sampled_from(sorted(queues)))
        delivery.append(queues[key].pop(0))
        if not queues[key]:
            del queues[key]
    redeliveries = draw(st.lists(st.sampled_from(envelopes), max_size=6)) if envelopes else []
    for env in redeliveries:  # delivered again, anywhere after the first delivery
        first = delivery.index(env)
        delivery.insert(draw(st.integers(first + 1, len(delivery))), env)
    return h, delivery


async def _party_balances(conn: asyncpg.Connection, prefix: str) -> dict[str, dict[Key, int]]:
    rows = await store.party_totals(conn, accounts=sorted(domain.PARTY_ACCOUNTS))
    out: dict[str, dict[Key, int]] = defaultdict(dict)
    for b in domain.party_balances(r for r in rows if (r[1] or "").startswith(prefix)):
        if b.balance_minor:
            out[b.kind][(b.party or "", b.currency)] = b.balance_minor
    return out


class TestBooksStayTrue:
    @settings(
        max_examples=75,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=histories())
    async def test_any_valid_delivery_keeps_the_books_true(
        self, conn: asyncpg.Connection, case: tuple[History, list[Envelope]]
    ) -> None:
        history, delivery = case
        for env in delivery:
            await deliver(conn, env)
        ids = [uuid.UUID(env.id) for env in {env.id: env for env in delivery}.values()]
        postable = {env.id for env in delivery if domain.posting_for(env.event, occurred_at=env.time) is not None}

        per_event = await conn.fetch(
            "SELECT source_event_id, count(*) AS n FROM journal_entries WHERE source_event_id = ANY($1::uuid[])"
            " GROUP BY source_event_id",
            ids,
        )
        assert {str(r["source_event_id"]) for r in per_event} == postable
        assert all(r["n"] == 1 for r in per_event)

        unbalanced = await conn.fetchval(
            "SELECT count(*) FROM (SELECT entry_id FROM journal_lines GROUP BY entry_id"
            " HAVING sum(debit_minor) <> sum(credit_minor) OR count(*) < 2) t"
        )
        assert unbalanced == 0

        for currency in await store.currencies(conn):
            rows = await store.trial_balance(conn, currency=currency, as_of=events.now())
            columns = [domain.net_columns(debit_minor=d, credit_minor=c) for _, d, c in rows]
            assert sum(d for d, _ in columns) == sum(c for _, c in columns)

        ledger = await _party_balances(conn, history.prefix)
        assert ledger.get("receivables", {}) == history.receivables()
        assert ledger.get("customer_credit", {}) == {k: v for k, v in history.credit.items() if v}
        assert ledger.get("payables", {}) == history.payables()
