"""The pure rules of billing: tax, invoices, cash application, credit notes, dunning, aging, bills."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from backoffice import events
from backoffice.errors import Conflict, Unprocessable
from billing import aging, domain, payables

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ship(customer: str, lines: list[tuple[str, int, int]], *, n: int = 1, currency: str = "EUR") -> events.OrderShipped:
    return events.OrderShipped(
        order_id=f"o{n}",
        shipment_id=f"s{n}",
        customer_id=customer,
        currency=currency,
        lines=tuple(events.Line(sku=s, quantity=q, unit_price_minor=p) for s, q, p in lines),
        subtotal_minor=sum(q * p for _, q, p in lines),
        shipped_at=T0,
    )


def give_back(order_id: str, lines: list[tuple[str, int, int]], *, customer: str = "c") -> events.OrderReturned:
    return events.OrderReturned(
        order_id=order_id,
        return_id=f"r-{order_id}",
        customer_id=customer,
        currency="EUR",
        lines=tuple(events.Line(sku=s, quantity=q, unit_price_minor=p) for s, q, p in lines),
        subtotal_minor=sum(q * p for _, q, p in lines),
        restocked=False,
        returned_at=T0,
    )


def invoice(total_lines: list[tuple[str, int, int]], *, n: int = 1, at: datetime = T0) -> domain.Invoice:
    inv, _ = domain.issue_invoice(
        ship("c", total_lines, n=n),
        invoice_id=f"i{n}",
        number=f"INV-2026-{n:06d}",
        tax_rate_bps=2000,
        terms_days=30,
        at=at,
    )
    return inv


def payment(amount: int, allocations: list[tuple[str, int]] | None = None, currency: str = "EUR") -> domain.PaymentIn:
    return domain.PaymentIn(
        id="p1",
        customer_id="c",
        currency=currency,
        amount_minor=amount,
        method="bank",
        reference="r",
        received_at=T0,
        allocations=None
        if allocations is None
        else tuple(events.Allocation(invoice_id=i, amount_minor=a) for i, a in allocations),
    )


class TestTax:
    @pytest.mark.parametrize(
        ("subtotal", "bps", "tax"),
        [
            (1000, 2000, 200),
            (1234, 2000, 247),
            (1, 2000, 0),
            (3, 2000, 1),
            (25, 200, 1),
            (24, 200, 0),
            (0, 2000, 0),
            (999_999_999_999, 2000, 200_000_000_000),
            (10, 0, 0),
            (7, 10000, 7),
        ],
    )
    def test_tax_is_rounded_half_up_in_integers(self, subtotal: int, bps: int, tax: int) -> None:
        assert domain.tax_on(subtotal, bps) == tax

    def test_document_numbers_are_zero_padded_per_year(self) -> None:
        assert domain.document_number("INV", 2026, 1) == "INV-2026-000001"
        assert domain.document_number("CN", 2027, 123456) == "CN-2027-123456"


class TestInvoice:
    def test_issued_from_shipped_lines_with_tax_and_due_date(self) -> None:
        inv, caused = domain.issue_invoice(
            ship("c", [("A", 3, 1234), ("B", 1, 1)]),
            invoice_id="i",
            number="INV-2026-000001",
            tax_rate_bps=2000,
            terms_days=14,
            at=T0,
        )
        assert (inv.subtotal_minor, inv.tax_minor, inv.total_minor, inv.balance_minor) == (3703, 741, 4444, 4444)
        assert inv.due_at == T0 + timedelta(days=14)
        assert inv.status == "open"
        [issued] = caused
        assert isinstance(issued, events.InvoiceIssued)
        assert issued.total_minor == issued.subtotal_minor + issued.tax_minor == 4444
        assert [line.amount_minor for line in issued.lines] == [3702, 1]
        assert (issued.order_id, issued.shipment_id) == ("o1", "s1")

    def test_customer_credit_settles_what_it_can(self) -> None:
        inv = invoice([("A", 1, 1000)])
        paid, used, caused = domain.apply_customer_credit(inv, available_minor=5000, at=T0)
        assert (used, paid.balance_minor, paid.status) == (1200, 0, "paid")
        assert [type(e).__name__ for e in caused] == ["CreditApplied", "InvoicePaid"]
        part, used, caused = domain.apply_customer_credit(inv, available_minor=200, at=T0)
        assert (used, part.balance_minor, part.status) == (200, 1000, "partially_paid")
        assert [type(e).__name__ for e in caused] == ["CreditApplied"]
        same, used, caused = domain.apply_customer_credit(inv, available_minor=0, at=T0)
        assert (same, used, caused) == (inv, 0, [])


class TestCashApplication:
    def test_oldest_open_invoice_first_then_credit(self) -> None:
        new = invoice([("A", 1, 500)], n=2, at=T0 + timedelta(days=1))
        old = invoice([("A", 1, 1000)], n=1)
        outcome = domain.apply_payment(payment(2000), [new, old])
        assert [(a.invoice_id, a.amount_minor) for a in outcome.applied] == [("i1", 1200), ("i2", 600)]
        assert outcome.unapplied_minor == 200
        received = outcome.events[0]
        assert isinstance(received, events.PaymentReceived)
        assert received.amount_minor == sum(a.amount_minor for a in received.applied) + received.unapplied_minor
        assert [type(e).__name__ for e in outcome.events] == ["PaymentReceived", "InvoicePaid", "InvoicePaid"]

    def test_partial_payment_moves_open_to_partially_paid(self) -> None:
        outcome = domain.apply_payment(payment(100), [invoice([("A", 1, 1000)])])
        [inv] = outcome.invoices
        assert (inv.status, inv.balance_minor) == ("partially_paid", 1100)
        assert [type(e).__name__ for e in outcome.events] == ["PaymentReceived"]

    def test_other_currency_invoices_are_not_touched_without_allocations(self) -> None:
        outcome = domain.apply_payment(payment(100, currency="USD"), [invoice([("A", 1, 1000)])])
        assert outcome.applied == () and outcome.unapplied_minor == 100

    @pytest.mark.parametrize(
        ("allocations", "field"),
        [
            ([("i1", 1201)], "body.allocations.0.amount_minor"),
            ([("nope", 1)], "body.allocations.0.invoice_id"),
            ([("i1", 1), ("i1", 1)], "body.allocations.1.invoice_id"),
            ([("i1", 600), ("i2", 600)], "body.allocations"),
        ],
    )
    def test_bad_allocations_name_the_allocation(self, allocations: list[tuple[str, int]], field: str) -> None:
        invoices = [invoice([("A", 1, 1000)], n=1), invoice([("A", 1, 1000)], n=2)]
        with pytest.raises(Unprocessable) as caught:
            domain.apply_payment(payment(1000, allocations), invoices)
        assert field in {e["field"] for e in caught.value.extra["errors"]}

    def test_allocation_to_an_invoice_in_another_currency_is_refused(self) -> None:
        usd, _ = domain.issue_invoice(
            ship("c", [("A", 1, 100)], currency="USD"),
            invoice_id="u",
            number="INV-2026-000009",
            tax_rate_bps=0,
            terms_days=0,
            at=T0,
        )
        with pytest.raises(Unprocessable) as caught:
            domain.apply_payment(payment(100, [("u", 50)]), [usd])
        assert caught.value.extra["errors"][0]["field"] == "body.allocations.0"

    def test_allocations_apply_exactly_and_leave_the_rest_as_credit(self) -> None:
        outcome = domain.apply_payment(
            payment(1000, [("i2", 300)]), [invoice([("A", 1, 1000)], n=1), invoice([("A", 1, 1000)], n=2)]
        )
        assert [(i.id, i.balance_minor) for i in outcome.invoices] == [("i2", 900)]
        assert outcome.unapplied_minor == 700


class TestCreditNotes:
    def test_reduces_the_open_balance_first_then_credit(self) -> None:
        inv = domain.apply_payment(payment(2000), [invoice([("A", 2, 1000)])]).invoices[0]  # 400 open
        note, credited, caused = domain.credit_return(
            give_back("o1", [("A", 1, 1000)]), inv, credit_note_id="cn", number="CN-2026-000001", at=T0
        )
        assert (note.subtotal_minor, note.tax_minor, note.total_minor) == (1000, 200, 1200)
        assert (note.applied_to_invoice_minor, note.to_customer_credit_minor) == (400, 800)
        assert (credited.balance_minor, credited.status) == (0, "paid")
        issued = caused[0]
        assert isinstance(issued, events.CreditNoteIssued)
        assert issued.total_minor == issued.applied_to_invoice_minor + issued.to_customer_credit_minor
        assert (issued.order_id, issued.return_id) == ("o1", "r-o1")
        assert [type(e).__name__ for e in caused] == ["CreditNoteIssued", "InvoicePaid"]

    def test_returning_lines_one_by_one_gives_back_exactly_the_invoices_tax(self) -> None:
        inv = invoice([("A", 3, 333)])  # 999 + 200 (199.8)
        prior, taxes = (0, 0), []
        for i in range(3):
            note, inv, _ = domain.credit_return(
                give_back("o1", [("A", 1, 333)]), inv, credit_note_id=f"cn{i}", number="CN", at=T0, prior=prior
            )
            taxes.append(note.tax_minor)
            prior = (prior[0] + note.subtotal_minor, prior[1] + note.tax_minor)
        assert taxes == [67, 66, 67]
        assert sum(taxes) == inv.tax_minor == 200
        assert (inv.balance_minor, inv.status) == (0, "credited")

    def test_a_whole_unpaid_invoice_returned_is_credited(self) -> None:
        _, inv, caused = domain.credit_return(
            give_back("o1", [("A", 2, 1000)]),
            invoice([("A", 2, 1000)]),
            credit_note_id="cn",
            number="CN",
            at=T0,
        )
        assert (inv.status, inv.balance_minor) == ("credited", 0)
        assert [type(e).__name__ for e in caused] == ["CreditNoteIssued"]

    def test_the_oldest_open_invoice_is_credited_else_the_latest(self) -> None:
        a = invoice([("A", 1, 100)], n=1)
        b = invoice([("A", 1, 100)], n=2, at=T0 + timedelta(hours=1))
        assert domain.invoice_for_return([b, a]) == a
        paid_a = domain.apply_payment(payment(120, [("i1", 120)]), [a]).invoices[0]
        assert domain.invoice_for_return([b, paid_a]) == b
        paid_b = domain.apply_payment(payment(120, [("i2", 120)]), [b]).invoices[0]
        assert domain.invoice_for_return([paid_a, paid_b]) == paid_b
        assert domain.invoice_for_return([]) is None

    def test_a_return_in_another_currency_is_refused(self) -> None:
        usd = give_back("o1", [("A", 1, 100)]).model_copy(update={"currency": "USD"})
        with pytest.raises(Conflict):
            domain.credit_return(usd, invoice([("A", 1, 100)]), credit_note_id="x", number="CN", at=T0)


class TestDunning:
    def test_nothing_before_a_full_day_past_due(self) -> None:
        inv = invoice([("A", 1, 100)])
        same, notices = domain.dun(inv, as_of=inv.due_at, emitted=frozenset())
        assert (same, notices) == (inv, [])
        overdue, notices = domain.dun(inv, as_of=inv.due_at + timedelta(hours=5), emitted=frozenset())
        assert (overdue.status, overdue.dunning_level, notices) == ("overdue", 0, [])

    @pytest.mark.parametrize(("days", "levels"), [(1, [1]), (14, [1]), (15, [1, 2]), (30, [1, 2, 3]), (40, [1, 2, 3])])
    def test_every_level_reached_and_not_yet_announced_in_order(self, days: int, levels: list[int]) -> None:
        inv = invoice([("A", 1, 100)])
        dunned, notices = domain.dun(inv, as_of=inv.due_at + timedelta(days=days), emitted=frozenset())
        assert [n.dunning_level for n in notices] == levels
        assert {n.days_overdue for n in notices} == {days}
        assert dunned.dunning_level == levels[-1]

    def test_levels_already_announced_are_not_repeated(self) -> None:
        inv = invoice([("A", 1, 100)])
        _, notices = domain.dun(inv, as_of=inv.due_at + timedelta(days=31), emitted=frozenset({1, 2}))
        assert [n.dunning_level for n in notices] == [3]

    def test_disputed_or_settled_invoices_are_left_alone(self) -> None:
        inv = invoice([("A", 1, 100)])
        late = inv.due_at + timedelta(days=40)
        disputed = replace(inv, disputed=True)
        assert domain.dun(disputed, as_of=late, emitted=frozenset()) == (disputed, [])
        paid = domain.apply_payment(payment(120), [inv]).invoices[0]
        assert domain.dun(paid, as_of=late, emitted=frozenset()) == (paid, [])


class TestAging:
    @pytest.mark.parametrize(
        ("days", "bucket"),
        [
            (-3, "current"),
            (0, "current"),
            (1, "1-30"),
            (30, "1-30"),
            (31, "31-60"),
            (60, "31-60"),
            (61, "61-90"),
            (90, "61-90"),
            (91, "90+"),
        ],
    )
    def test_buckets_by_whole_days_past_due(self, days: int, bucket: str) -> None:
        assert aging.aging_bucket(T0, T0 + timedelta(days=days, minutes=1)) == bucket

    def test_sums_per_party_and_currency(self) -> None:
        rows = aging.age(
            [
                ("a", "EUR", T0, 100),
                ("a", "EUR", T0 - timedelta(days=40), 50),
                ("a", "USD", T0, 7),
                ("b", "EUR", T0, 0),
            ],
            as_of=T0 + timedelta(hours=1),
        )
        assert [(r.party_id, r.currency, r.total_minor) for r in rows] == [("a", "EUR", 150), ("a", "USD", 7)]
        assert rows[0].buckets == {"current": 100, "1-30": 0, "31-60": 50, "61-90": 0, "90+": 0}


class TestBills:
    def _bill(self) -> payables.Bill:
        bill, caused = payables.receive_bill(
            bill_id="b",
            vendor_id="v",
            bill_number="N1",
            currency="EUR",
            lines=(payables.BillLine("paper", 1000, 200), payables.BillLine("ink", 500)),
            expense_account="6000",
            received_at=T0,
            due_at=T0 + timedelta(days=30),
        )
        [received] = caused
        assert isinstance(received, events.BillReceived)
        assert (received.subtotal_minor, received.tax_minor, received.total_minor) == (1500, 200, 1700)
        return bill

    def test_partial_then_full_payment(self) -> None:
        bill, caused = payables.pay_bill(self._bill(), payment_id="p", amount_minor=700, paid_at=T0)
        assert (bill.status, bill.balance_minor, [type(e).__name__ for e in caused]) == (
            "partially_paid",
            1000,
            ["BillPaymentMade"],
        )
        bill, caused = payables.pay_bill(bill, payment_id="q", amount_minor=1000, paid_at=T0)
        assert (bill.status, bill.paid_at) == ("paid", T0)
        assert [type(e).__name__ for e in caused] == ["BillPaymentMade", "BillPaid"]
        with pytest.raises(Conflict):
            payables.pay_bill(bill, payment_id="r", amount_minor=1, paid_at=T0)

    def test_over_payment_is_refused_naming_the_amount(self) -> None:
        with pytest.raises(Unprocessable) as caught:
            payables.pay_bill(self._bill(), payment_id="p", amount_minor=1701, paid_at=T0)
        assert caught.value.extra["errors"][0]["field"] == "body.amount_minor"

    def test_due_date_defaults_to_the_vendors_terms(self) -> None:
        assert payables.bill_due_at(received_at=T0, due_at=None, terms_days=45) == T0 + timedelta(days=45)
        assert payables.bill_due_at(received_at=T0, due_at=T0, terms_days=45) == T0


class Books(RuleBasedStateMachine):
    """Random shipments, payments (allocated or not) and returns for one customer, through the pure rules."""

    def __init__(self) -> None:
        super().__init__()
        self.invoices: dict[str, domain.Invoice] = {}
        self.shipped: dict[str, int] = {}  # order id -> units still returnable
        self.credit = 0
        self.money_in = 0  # payments and credit notes
        self.n = 0
        self.now = T0
        self.paid_events: dict[str, int] = {}
        self.notes: dict[str, tuple[int, int]] = {}  # invoice id -> summed (subtotal, tax) of its credit notes

    def _tick(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now

    def _record(self, caused: list[events.Event] | tuple[events.Event, ...]) -> None:
        for event in caused:
            if isinstance(event, events.InvoicePaid):
                self.paid_events[event.invoice_id] = self.paid_events.get(event.invoice_id, 0) + 1

    @rule(units=st.integers(1, 5), price=st.integers(0, 100_000), rate=st.sampled_from([0, 550, 2000, 2500]))
    def ship(self, units: int, price: int, rate: int) -> None:
        self.n += 1
        at = self._tick()
        inv, caused = domain.issue_invoice(
            ship("c", [("A", units, price)], n=self.n),
            invoice_id=f"i{self.n}",
            number=f"N{self.n:06d}",
            tax_rate_bps=rate,
            terms_days=30,
            at=at,
        )
        inv, used, more = domain.apply_customer_credit(inv, available_minor=self.credit, at=at)
        self.credit -= used
        issued = caused[0]
        assert isinstance(issued, events.InvoiceIssued)
        assert inv.total_minor == inv.subtotal_minor + inv.tax_minor == issued.total_minor
        self.invoices[inv.id] = inv
        self.shipped[inv.order_id] = units
        self._record([*caused, *more])

    @rule(amount=st.integers(1, 300_000), allocate=st.booleans(), data=st.data())
    def pay(self, amount: int, allocate: bool, data: st.DataObject) -> None:
        open_ = [i for i in self.invoices.values() if i.balance_minor > 0]
        allocations = None
        if allocate and open_:
            target = data.draw(st.sampled_from(open_))
            allocations = [(target.id, min(amount, target.balance_minor))]
        outcome = domain.apply_payment(payment(amount, allocations), list(self.invoices.values()))
        received = outcome.events[0]
        assert isinstance(received, events.PaymentReceived)
        assert received.amount_minor == sum(a.amount_minor for a in received.applied) + received.unapplied_minor
        for inv in outcome.invoices:
            self.invoices[inv.id] = inv
        self.credit += outcome.unapplied_minor
        self.money_in += amount
        self._record(outcome.events)

    @precondition(lambda self: any(self.shipped.values()))
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        order = data.draw(st.sampled_from([o for o, left in self.shipped.items() if left]))
        units = data.draw(st.integers(1, self.shipped[order]))
        self.shipped[order] -= units
        target = domain.invoice_for_return([i for i in self.invoices.values() if i.order_id == order])
        assert target is not None
        price = target.lines[0].unit_price_minor
        prior = self.notes.get(target.id, (0, 0))
        note, inv, caused = domain.credit_return(
            give_back(order, [("A", units, price)]),
            target,
            credit_note_id=f"cn{self.n}",
            number="CN",
            at=self._tick(),
            prior=prior,
        )
        self.notes[target.id] = (prior[0] + note.subtotal_minor, prior[1] + note.tax_minor)
        assert note.total_minor == note.subtotal_minor + note.tax_minor
        assert note.total_minor == note.applied_to_invoice_minor + note.to_customer_credit_minor
        self.invoices[inv.id] = inv
        self.credit += note.to_customer_credit_minor
        self.money_in += note.total_minor
        self._record(caused)

    @invariant()
    def every_invoice_adds_up_and_is_never_over_settled(self) -> None:
        for inv in self.invoices.values():
            assert inv.subtotal_minor + inv.tax_minor == inv.total_minor
            settled = inv.paid_minor + inv.credit_applied_minor + inv.credited_minor
            assert 0 <= settled <= inv.total_minor
            assert inv.balance_minor == inv.total_minor - settled >= 0
            assert (inv.balance_minor == 0) == (inv.status in domain.CLOSED)
            assert self.paid_events.get(inv.id, 0) == (1 if inv.status == "paid" else 0)

    @invariant()
    def credit_notes_never_give_back_more_than_was_invoiced(self) -> None:
        for invoice_id, (subtotal, tax) in self.notes.items():
            inv = self.invoices[invoice_id]
            assert tax == domain.tax_on(subtotal, inv.tax_rate_bps)
            assert subtotal + tax <= inv.total_minor
            if not self.shipped[inv.order_id]:  # everything returned
                assert (subtotal, tax) == (inv.subtotal_minor, inv.tax_minor)

    @invariant()
    def no_money_is_made_or_lost(self) -> None:
        assert self.credit >= 0
        settled = sum(i.paid_minor + i.credited_minor + i.credit_applied_minor for i in self.invoices.values())
        assert self.money_in == settled + self.credit


TestBooksProperty = Books.TestCase
TestBooksProperty.settings = settings(
    max_examples=100, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
