"""The posting rules and the other pure rules of the ledger: no database, no broker."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from backoffice import events
from backoffice.errors import Conflict, Unprocessable
from ledger import domain
from ledger.domain import Line
from tests.ledger.conftest import T0, bill_received, invoice_issued, payment_received

LATER = T0 + timedelta(days=3)


def _sides(draft: domain.Draft | None) -> set[tuple[str, int, int, str | None]]:
    assert draft is not None
    debits = sum(line.debit_minor for line in draft.lines)
    credits = sum(line.credit_minor for line in draft.lines)
    assert debits == credits > 0
    return {(line.account, line.debit_minor, line.credit_minor, line.party) for line in draft.lines}


class TestPostingRules:
    def test_invoice_issued_debits_receivable_and_credits_revenue_and_sales_tax(self) -> None:
        draft = domain.posting_for(invoice_issued(customer="c1", subtotal=1000, tax=200), occurred_at=LATER)
        assert _sides(draft) == {("1100", 1200, 0, "c1"), ("4000", 0, 1000, None), ("2100", 0, 200, None)}
        assert draft is not None and draft.effective_at == T0 and draft.currency == "EUR"
        assert draft.source_type == "InvoiceIssued"

    def test_invoice_without_tax_leaves_the_zero_tax_line_out(self) -> None:
        draft = domain.posting_for(invoice_issued(customer="c1", subtotal=1000), occurred_at=T0)
        assert _sides(draft) == {("1100", 1000, 0, "c1"), ("4000", 0, 1000, None)}

    def test_an_invoice_of_zero_posts_nothing(self) -> None:
        assert domain.posting_for(invoice_issued(customer="c1", subtotal=0), occurred_at=T0) is None

    def test_payment_received_credits_receivable_with_applied_and_customer_credit_with_the_rest(self) -> None:
        event = payment_received(customer="c1", applied={"i1": 300, "i2": 200}, unapplied=50)
        assert _sides(domain.posting_for(event, occurred_at=T0)) == {
            ("1000", 550, 0, None),
            ("1100", 0, 500, "c1"),
            ("2300", 0, 50, "c1"),
        }

    def test_a_payment_all_unapplied_posts_to_customer_credit_only(self) -> None:
        event = payment_received(customer="c1", applied={}, unapplied=70)
        assert _sides(domain.posting_for(event, occurred_at=T0)) == {("1000", 70, 0, None), ("2300", 0, 70, "c1")}

    def test_a_payment_whose_parts_do_not_add_up_is_refused(self) -> None:
        event = payment_received(customer="c1", applied={"i1": 300}).model_copy(update={"amount_minor": 301})
        with pytest.raises(Unprocessable, match="applied \\+ unapplied"):
            domain.posting_for(event, occurred_at=T0)

    def test_credit_applied_moves_customer_credit_to_the_receivable(self) -> None:
        event = events.CreditApplied(customer_id="c1", invoice_id="i1", currency="EUR", amount_minor=40, applied_at=T0)
        assert _sides(domain.posting_for(event, occurred_at=T0)) == {("2300", 40, 0, "c1"), ("1100", 0, 40, "c1")}

    def test_credit_note_reverses_revenue_and_tax_against_receivable_and_customer_credit(self) -> None:
        event = events.CreditNoteIssued(
            credit_note_id="cn1",
            number="CN-2026-000001",
            invoice_id="i1",
            customer_id="c1",
            currency="EUR",
            subtotal_minor=500,
            tax_minor=100,
            total_minor=600,
            applied_to_invoice_minor=450,
            to_customer_credit_minor=150,
            issued_at=T0,
        )
        assert _sides(domain.posting_for(event, occurred_at=T0)) == {
            ("4100", 500, 0, None),
            ("2100", 100, 0, None),
            ("1100", 0, 450, "c1"),
            ("2300", 0, 150, "c1"),
        }

    def test_a_credit_note_whose_split_does_not_add_up_is_refused(self) -> None:
        event = events.CreditNoteIssued(
            credit_note_id="cn1",
            number="CN-2026-000001",
            invoice_id="i1",
            customer_id="c1",
            currency="EUR",
            subtotal_minor=500,
            tax_minor=100,
            total_minor=600,
            applied_to_invoice_minor=450,
            to_customer_credit_minor=100,
            issued_at=T0,
        )
        with pytest.raises(Unprocessable):
            domain.posting_for(event, occurred_at=T0)

    def test_bill_received_debits_the_expense_account_and_input_tax_and_credits_payable(self) -> None:
        draft = domain.posting_for(bill_received(vendor="v1", subtotal=900, tax=100, account="6100"), occurred_at=LATER)
        assert _sides(draft) == {("6100", 900, 0, None), ("1300", 100, 0, None), ("2000", 0, 1000, "v1")}
        assert draft is not None and draft.effective_at == LATER  # a bill carries no date: the event's time

    def test_bill_payment_debits_payable_and_credits_cash(self) -> None:
        event = events.BillPaymentMade(
            payment_id="bp1", bill_id="b1", vendor_id="v1", currency="USD", amount_minor=250, paid_at=T0
        )
        draft = domain.posting_for(event, occurred_at=T0)
        assert _sides(draft) == {("2000", 250, 0, "v1"), ("1000", 0, 250, None)}
        assert draft is not None and draft.currency == "USD"

    @pytest.mark.parametrize(
        "event",
        [
            events.InvoicePaid(invoice_id="i", customer_id="c", currency="EUR", total_minor=1, paid_at=T0),
            events.BillPaid(bill_id="b", vendor_id="v", currency="EUR", total_minor=1, paid_at=T0),
            events.InvoiceOverdue(
                invoice_id="i",
                customer_id="c",
                currency="EUR",
                balance_minor=1,
                due_at=T0,
                days_overdue=1,
                dunning_level=1,
            ),
        ],
        ids=["InvoicePaid", "BillPaid", "InvoiceOverdue"],
    )
    def test_status_events_post_nothing(self, event: events.Event) -> None:
        assert domain.posting_for(event, occurred_at=T0) is None


class TestExpenseAccounts:
    def test_a_new_code_opens_an_expense_account(self) -> None:
        opened = domain.expense_account_for("6200", None)
        assert opened is not None and opened.type == "expense" and opened.code == "6200"

    def test_an_existing_expense_account_is_used(self) -> None:
        assert domain.expense_account_for("6000", domain.Account("6000", "Operating expenses", "expense")) is None

    @pytest.mark.parametrize(
        "account",
        [domain.Account("4000", "Sales revenue", "revenue"), domain.Account("1100", "Accounts receivable", "asset")],
    )
    def test_revenue_and_control_accounts_are_refused(self, account: domain.Account) -> None:
        with pytest.raises(Unprocessable):
            domain.expense_account_for(account.code, account)

    def test_a_malformed_code_is_refused(self) -> None:
        with pytest.raises(Unprocessable):
            domain.expense_account_for("no spaces please", None)


class TestManualLines:
    KNOWN = {"1000", "4000", "2100"}

    def test_a_balanced_entry_passes(self) -> None:
        domain.check_lines("EUR", [Line("1000", debit_minor=5), Line("4000", credit_minor=5)], known=self.KNOWN)

    def test_unbalanced_is_refused_naming_the_lines(self) -> None:
        with pytest.raises(Unprocessable, match="does not balance") as caught:
            domain.check_lines("EUR", [Line("1000", debit_minor=5), Line("4000", credit_minor=4)], known=self.KNOWN)
        assert caught.value.extra["errors"][0]["field"] == "body.lines"

    def test_unknown_account_is_refused_naming_the_line(self) -> None:
        with pytest.raises(Unprocessable, match="9999") as caught:
            domain.check_lines("EUR", [Line("1000", debit_minor=5), Line("9999", credit_minor=5)], known=self.KNOWN)
        assert caught.value.extra["errors"][0]["field"] == "body.lines.1.account"

    def test_a_line_in_another_currency_is_refused(self) -> None:
        with pytest.raises(Unprocessable, match="one currency per entry") as caught:
            domain.check_lines(
                "EUR",
                [Line("1000", debit_minor=5), Line("4000", credit_minor=5)],
                known=self.KNOWN,
                line_currencies=[None, "USD"],
            )
        assert caught.value.extra["errors"][0]["field"] == "body.lines.1.currency"

    @pytest.mark.parametrize(
        "lines",
        [
            [Line("1000", debit_minor=5)],
            [Line("1000", debit_minor=5, credit_minor=5), Line("4000", credit_minor=0)],
            [Line("1000"), Line("4000")],
        ],
        ids=["one line", "two-sided", "zero"],
    )
    def test_malformed_lines_are_refused(self, lines: list[Line]) -> None:
        with pytest.raises(Unprocessable):
            domain.check_lines("EUR", lines, known=self.KNOWN)


def _entry(**changes: object) -> domain.Entry:
    base = domain.Entry(
        id=uuid.uuid4(),
        currency="EUR",
        lines=(
            Line("1100", debit_minor=120, party="c1"),
            Line("4000", credit_minor=100),
            Line("2100", credit_minor=20),
        ),
        effective_at=T0,
        posted_at=T0,
        source_type="InvoiceIssued",
    )
    return domain.Entry(**{**base.__dict__, **changes})  # type: ignore[arg-type]


class TestReversal:
    def test_swaps_debits_and_credits_and_references_the_original(self) -> None:
        original = _entry()
        reversal = domain.reverse(original, entry_id=uuid.uuid4(), posted_at=LATER, already_reversed=False)
        assert reversal.reverses_entry_id == original.id
        assert reversal.effective_at == LATER and reversal.source_type == "reversal"
        assert [(li.account, li.debit_minor, li.credit_minor, li.party) for li in reversal.lines] == [
            ("1100", 0, 120, "c1"),
            ("4000", 100, 0, None),
            ("2100", 20, 0, None),
        ]

    def test_a_future_dated_entry_is_reversed_on_its_own_date_by_default(self) -> None:
        reversal = domain.reverse(_entry(), entry_id=uuid.uuid4(), posted_at=T0 - timedelta(1), already_reversed=False)
        assert reversal.effective_at == T0

    def test_an_entry_is_reversed_once(self) -> None:
        with pytest.raises(Conflict, match="already been reversed"):
            domain.reverse(_entry(), entry_id=uuid.uuid4(), posted_at=LATER, already_reversed=True)

    def test_a_reversal_is_not_reversed(self) -> None:
        with pytest.raises(Conflict, match="itself a reversal"):
            domain.reverse(
                _entry(reverses_entry_id=uuid.uuid4()), entry_id=uuid.uuid4(), posted_at=LATER, already_reversed=False
            )

    def test_a_reversal_cannot_take_effect_before_its_original(self) -> None:
        with pytest.raises(Unprocessable):
            domain.reverse(
                _entry(), entry_id=uuid.uuid4(), posted_at=LATER, already_reversed=False, effective_at=T0 - timedelta(1)
            )

    def test_the_posted_event_carries_lines_parties_and_the_reference(self) -> None:
        original = _entry()
        reversal = domain.reverse(original, entry_id=uuid.uuid4(), posted_at=LATER, already_reversed=False)
        event = domain.posted_event(reversal)
        assert event.entry_id == str(reversal.id) and event.reverses_entry_id == str(original.id)
        assert event.lines[0] == events.PostedLine(account="1100", debit_minor=0, credit_minor=120, party="c1")
        assert event.key == str(reversal.id)


class TestBalances:
    def test_normal_side_of_each_account_type(self) -> None:
        assert domain.balance("asset", debit_minor=100, credit_minor=30) == 70
        assert domain.balance("expense", debit_minor=100, credit_minor=30) == 70
        assert domain.balance("liability", debit_minor=100, credit_minor=30) == -70
        assert domain.balance("revenue", debit_minor=10, credit_minor=30) == 20

    def test_running_balances_continue_from_the_opening_per_currency(self) -> None:
        lines = [("EUR", 10, 0), ("EUR", 0, 4), ("USD", 0, 7), ("USD", 2, 0)]
        assert domain.running_balances("asset", lines, openings={"EUR": (100, 50)}) == [60, 56, -7, -5]
        assert domain.running_balances("liability", lines, openings={}) == [-10, -6, 7, 5]

    def test_trial_balance_rows_show_the_net_in_one_column(self) -> None:
        assert domain.net_columns(debit_minor=100, credit_minor=30) == (70, 0)
        assert domain.net_columns(debit_minor=10, credit_minor=30) == (0, 20)


class TestReconcile:
    def test_ledger_rows_become_billing_figures(self) -> None:
        rows = [("1100", "c1", "EUR", 500, 200), ("2300", "c1", "EUR", 10, 60), ("2000", "v1", "EUR", 100, 400)]
        assert domain.party_balances(rows) == [
            domain.PartyBalance("receivables", "c1", "EUR", 300),
            domain.PartyBalance("customer_credit", "c1", "EUR", 50),
            domain.PartyBalance("payables", "v1", "EUR", 300),
        ]

    def test_agreeing_figures_give_no_differences_and_zero_rows_are_ignored(self) -> None:
        ledger = [domain.PartyBalance("receivables", "c1", "EUR", 300), domain.PartyBalance("payables", "v", "EUR", 0)]
        billing = [domain.PartyBalance("receivables", "c1", "EUR", 300)]
        assert domain.reconcile(ledger, billing) == (1, [])

    def test_each_side_missing_or_different_is_a_difference(self) -> None:
        ledger = [
            domain.PartyBalance("receivables", "c1", "EUR", 300),
            domain.PartyBalance("payables", "v1", "EUR", 80),
        ]
        billing = [
            domain.PartyBalance("receivables", "c1", "EUR", 250),
            domain.PartyBalance("customer_credit", "c2", "USD", 5),
        ]
        checked, differences = domain.reconcile(ledger, billing)
        assert checked == 3
        assert [(d.kind, d.party, d.currency, d.ledger_minor, d.billing_minor) for d in differences] == [
            ("customer_credit", "c2", "USD", 0, 5),
            ("payables", "v1", "EUR", 80, 0),
            ("receivables", "c1", "EUR", 300, 250),
        ]
        assert differences[2].difference_minor == 50
