"""The ledger's rules, pure: posting rules per billing event, manual entries, reversals, balances, reconciliation."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from backoffice import events
from backoffice.errors import Conflict, Unprocessable

AccountType = Literal["asset", "liability", "equity", "revenue", "expense"]
DEBIT_NORMAL: frozenset[str] = frozenset({"asset", "expense"})
ACCOUNT_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")

CASH = "1000"
RECEIVABLE = "1100"
INPUT_TAX = "1300"
PAYABLE = "2000"
SALES_TAX = "2100"
CUSTOMER_CREDIT = "2300"
SALES = "4000"
SALES_RETURNS = "4100"
CONTROL_ACCOUNTS: frozenset[str] = frozenset({CASH, RECEIVABLE, INPUT_TAX, PAYABLE, SALES_TAX, CUSTOMER_CREDIT})
PARTY_ACCOUNTS: Mapping[str, str] = {
    RECEIVABLE: "receivables",
    CUSTOMER_CREDIT: "customer_credit",
    PAYABLE: "payables",
}


@dataclass(frozen=True)
class Account:
    code: str
    name: str
    type: AccountType


@dataclass(frozen=True)
class Line:
    account: str
    debit_minor: int = 0
    credit_minor: int = 0
    party: str | None = None


@dataclass(frozen=True)
class Draft:
    """What an entry will say, before it gets an id: the output of a posting rule or a manual request."""

    currency: str
    lines: tuple[Line, ...]
    effective_at: datetime
    source_type: str
    memo: str | None = None


@dataclass(frozen=True)
class Entry:
    id: uuid.UUID
    currency: str
    lines: tuple[Line, ...]
    effective_at: datetime
    posted_at: datetime
    source_type: str
    source_event_id: uuid.UUID | None = None
    memo: str | None = None
    reverses_entry_id: uuid.UUID | None = None

    @property
    def total_minor(self) -> int:
        return sum(line.debit_minor for line in self.lines)


# --- posting rules --------------------------------------------------------------------------------------------


def _lines(*candidates: Line) -> tuple[Line, ...]:
    """The lines with an amount: zero-amount lines are left out."""
    return tuple(c for c in candidates if c.debit_minor or c.credit_minor)


def _require(ok: bool, event: events.Event, detail: str) -> None:
    if not ok:
        raise Unprocessable(f"{event.name} cannot be posted: {detail}")


Posting = tuple[tuple[Line, ...], datetime, str]  # lines (zero lines left out), effective time, memo


def _invoice_issued(event: events.InvoiceIssued, occurred_at: datetime) -> Posting:
    _require(event.total_minor == event.subtotal_minor + event.tax_minor, event, "total != subtotal + tax")
    lines = _lines(
        Line(RECEIVABLE, debit_minor=event.total_minor, party=event.customer_id),
        Line(SALES, credit_minor=event.subtotal_minor),
        Line(SALES_TAX, credit_minor=event.tax_minor),
    )
    return lines, event.issued_at, f"Invoice {event.number}"


def _payment_received(event: events.PaymentReceived, occurred_at: datetime) -> Posting:
    applied = sum(a.amount_minor for a in event.applied)
    _require(event.amount_minor == applied + event.unapplied_minor, event, "amount != applied + unapplied")
    lines = _lines(
        Line(CASH, debit_minor=event.amount_minor),
        Line(RECEIVABLE, credit_minor=applied, party=event.customer_id),
        Line(CUSTOMER_CREDIT, credit_minor=event.unapplied_minor, party=event.customer_id),
    )
    return lines, event.received_at, f"Payment {event.reference or event.payment_id}"


def _credit_applied(event: events.CreditApplied, occurred_at: datetime) -> Posting:
    lines = _lines(
        Line(CUSTOMER_CREDIT, debit_minor=event.amount_minor, party=event.customer_id),
        Line(RECEIVABLE, credit_minor=event.amount_minor, party=event.customer_id),
    )
    return lines, event.applied_at, f"Credit applied to invoice {event.invoice_id}"


def _credit_note_issued(event: events.CreditNoteIssued, occurred_at: datetime) -> Posting:
    _require(event.total_minor == event.subtotal_minor + event.tax_minor, event, "total != subtotal + tax")
    _require(
        event.total_minor == event.applied_to_invoice_minor + event.to_customer_credit_minor,
        event,
        "total != applied to invoice + to customer credit",
    )
    lines = _lines(
        Line(SALES_RETURNS, debit_minor=event.subtotal_minor),
        Line(SALES_TAX, debit_minor=event.tax_minor),
        Line(RECEIVABLE, credit_minor=event.applied_to_invoice_minor, party=event.customer_id),
        Line(CUSTOMER_CREDIT, credit_minor=event.to_customer_credit_minor, party=event.customer_id),
    )
    return lines, event.issued_at, f"Credit note {event.number}"


def _bill_received(event: events.BillReceived, occurred_at: datetime) -> Posting:
    _require(event.total_minor == event.subtotal_minor + event.tax_minor, event, "total != subtotal + tax")
    lines = _lines(
        Line(event.expense_account, debit_minor=event.subtotal_minor),
        Line(INPUT_TAX, debit_minor=event.tax_minor),
        Line(PAYABLE, credit_minor=event.total_minor, party=event.vendor_id),
    )
    return lines, occurred_at, f"Bill {event.bill_number}"  # a bill carries no date of its own


def _bill_payment_made(event: events.BillPaymentMade, occurred_at: datetime) -> Posting:
    lines = _lines(
        Line(PAYABLE, debit_minor=event.amount_minor, party=event.vendor_id),
        Line(CASH, credit_minor=event.amount_minor),
    )
    return lines, event.paid_at, f"Payment of bill {event.bill_id}"


_RULES: Mapping[type[events.Event], Callable[[Any, datetime], Posting]] = {
    events.InvoiceIssued: _invoice_issued,
    events.PaymentReceived: _payment_received,
    events.CreditApplied: _credit_applied,
    events.CreditNoteIssued: _credit_note_issued,
    events.BillReceived: _bill_received,
    events.BillPaymentMade: _bill_payment_made,
}
POSTED_EVENTS: tuple[type[events.Event], ...] = tuple(_RULES)


def posting_for(event: events.Event, *, occurred_at: datetime) -> Draft | None:
    """The entry a billing event posts (balanced by construction), or None when it posts nothing.

    `occurred_at` (the event's time) dates the events that carry no date of their own (BillReceived).
    Raises Unprocessable for an event whose amounts contradict each other: it can never be posted.
    """
    rule = _RULES.get(type(event))
    if rule is None:
        return None
    lines, when, memo = rule(event, occurred_at)
    if not lines:
        return None
    currency: str = getattr(event, "currency")  # noqa: B009 - every posted event has one
    return Draft(currency=currency, lines=lines, effective_at=when, source_type=event.name, memo=memo)


def expense_account_for(code: str, account: Account | None) -> Account | None:
    """The account a bill's expense goes to: an expense or (non-control) asset account, or, for a well-formed code
    not yet in the chart, a new expense account to open (returned). Raises Unprocessable for any other."""
    if account is None:
        if not ACCOUNT_CODE.match(code):
            raise Unprocessable(f"BillReceived cannot be posted: expense account {code!r} is not a valid code")
        return Account(code=code, name=f"Expenses {code} (opened by a bill)", type="expense")
    if account.type not in ("expense", "asset") or code in CONTROL_ACCOUNTS:
        raise Unprocessable(f"BillReceived cannot be posted: account {code} ({account.type}) is not an expense account")
    return None


# --- entries --------------------------------------------------------------------------------------------------


def check_lines(
    currency: str, lines: Sequence[Line], *, known: Iterable[str], line_currencies: Sequence[str | None] = ()
) -> None:
    """Refuse what the books cannot hold: fewer than two lines, a line not exactly one-sided, a line in another
    currency, an unknown account, debits != credits. Each problem is named by its field (`body.lines.N...`)."""
    known_codes = set(known)
    if len(lines) < 2:
        raise Unprocessable("a journal entry needs at least two lines", field="body.lines")
    for n, line_currency in enumerate(line_currencies):
        if line_currency is not None and line_currency != currency:
            raise Unprocessable(
                f"line currency {line_currency} differs from the entry's {currency}: one currency per entry",
                field=f"body.lines.{n}.currency",
            )
    for n, line in enumerate(lines):
        if (line.debit_minor > 0) == (line.credit_minor > 0) or min(line.debit_minor, line.credit_minor) < 0:
            raise Unprocessable("each line is either a debit or a credit, in minor units > 0", field=f"body.lines.{n}")
        if line.account not in known_codes:
            raise Unprocessable(
                f"account {line.account} is not in the chart of accounts", field=f"body.lines.{n}.account"
            )
    debits = sum(line.debit_minor for line in lines)
    credits = sum(line.credit_minor for line in lines)
    if debits != credits:
        raise Unprocessable(
            f"the entry does not balance: debits {debits} != credits {credits} ({currency})", field="body.lines"
        )


def post(draft: Draft, *, entry_id: uuid.UUID, posted_at: datetime, source_event_id: uuid.UUID | None) -> Entry:
    """The entry of a draft whose lines are known to balance."""
    return Entry(
        id=entry_id,
        currency=draft.currency,
        lines=draft.lines,
        effective_at=draft.effective_at,
        posted_at=posted_at,
        source_type=draft.source_type,
        source_event_id=source_event_id,
        memo=draft.memo,
    )


def reverse(
    original: Entry,
    *,
    entry_id: uuid.UUID,
    posted_at: datetime,
    already_reversed: bool,
    effective_at: datetime | None = None,
    memo: str | None = None,
) -> Entry:
    """The reversing entry: the same lines with debits and credits swapped, referencing the original."""
    if original.reverses_entry_id is not None:
        raise Conflict(
            f"entry {original.id} is itself a reversal of {original.reverses_entry_id}; post a new entry instead"
        )
    if already_reversed:
        raise Conflict(f"entry {original.id} has already been reversed; an entry is reversed once")
    when = effective_at or max(posted_at, original.effective_at)  # by default now, never before the original
    if when < original.effective_at:
        raise Unprocessable("a reversal cannot take effect before the entry it reverses", field="body.effective_at")
    swapped = tuple(
        replace(line, debit_minor=line.credit_minor, credit_minor=line.debit_minor) for line in original.lines
    )
    return Entry(
        id=entry_id,
        currency=original.currency,
        lines=swapped,
        effective_at=when,
        posted_at=posted_at,
        source_type="reversal",
        memo=memo or f"Reversal of entry {original.id}",
        reverses_entry_id=original.id,
    )


def posted_event(entry: Entry) -> events.JournalEntryPosted:
    return events.JournalEntryPosted(
        entry_id=str(entry.id),
        source_event_id=str(entry.source_event_id) if entry.source_event_id else None,
        source_type=entry.source_type,
        currency=entry.currency,
        lines=tuple(
            events.PostedLine(
                account=line.account, debit_minor=line.debit_minor, credit_minor=line.credit_minor, party=line.party
            )
            for line in entry.lines
        ),
        effective_at=entry.effective_at,
        posted_at=entry.posted_at,
        reverses_entry_id=str(entry.reverses_entry_id) if entry.reverses_entry_id else None,
    )


# --- balances -------------------------------------------------------------------------------------------------


def balance(account_type: str, *, debit_minor: int, credit_minor: int) -> int:
    """The balance on the account's normal side: debit - credit for assets and expenses, else credit - debit."""
    return debit_minor - credit_minor if account_type in DEBIT_NORMAL else credit_minor - debit_minor


def net_columns(*, debit_minor: int, credit_minor: int) -> tuple[int, int]:
    """A trial-balance row: the net amount in the debit or the credit column."""
    net = debit_minor - credit_minor
    return (net, 0) if net >= 0 else (0, -net)


def running_balances(
    account_type: str, lines: Iterable[tuple[str, int, int]], *, openings: Mapping[str, tuple[int, int]]
) -> list[int]:
    """The balance after each (currency, debit, credit) line, per currency, from the debits and credits before."""
    totals = dict(openings)
    out = []
    for currency, debit, credit in lines:
        debits, credits = totals.get(currency, (0, 0))
        totals[currency] = (debits + debit, credits + credit)
        out.append(balance(account_type, debit_minor=debits + debit, credit_minor=credits + credit))
    return out


# --- reconciliation -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartyBalance:
    kind: str  # receivables, customer_credit or payables
    party: str | None
    currency: str
    balance_minor: int


@dataclass(frozen=True)
class Difference:
    kind: str
    party: str | None
    currency: str
    ledger_minor: int
    billing_minor: int

    @property
    def difference_minor(self) -> int:
        return self.ledger_minor - self.billing_minor


def party_balances(rows: Iterable[tuple[str, str | None, str, int, int]]) -> list[PartyBalance]:
    """(account, party, currency, debits, credits) of 1100, 2300 and 2000 as the balances billing also keeps:
    receivables are 1100 debit - credit; customer credit (2300) and payables (2000) credit - debit."""
    out = []
    for account, party, currency, debits, credits in rows:
        kind = PARTY_ACCOUNTS.get(account)
        if kind is not None:
            amount = debits - credits if account == RECEIVABLE else credits - debits
            out.append(PartyBalance(kind=kind, party=party, currency=currency, balance_minor=amount))
    return out


def reconcile(ledger: Iterable[PartyBalance], billing: Iterable[PartyBalance]) -> tuple[int, list[Difference]]:
    """Compare per (kind, party, currency); a row missing on one side counts as 0. Returns (checked, differences)."""
    ours: dict[tuple[str, str | None, str], int] = {}
    theirs: dict[tuple[str, str | None, str], int] = {}
    for side, rows in ((ours, ledger), (theirs, billing)):
        for row in rows:
            key = (row.kind, row.party, row.currency)
            side[key] = side.get(key, 0) + row.balance_minor
    keys = sorted({k for k, v in ours.items() if v} | {k for k, v in theirs.items() if v}, key=_sort_key)
    differences = [
        Difference(kind=k[0], party=k[1], currency=k[2], ledger_minor=ours.get(k, 0), billing_minor=theirs.get(k, 0))
        for k in keys
        if ours.get(k, 0) != theirs.get(k, 0)
    ]
    return len(keys), differences


def _sort_key(key: tuple[str, str | None, str]) -> tuple[str, str, str]:
    return key[0], key[1] or "", key[2]
