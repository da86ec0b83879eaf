"""Pure payables rules: vendor bills and their payments. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from backoffice import events
from backoffice.errors import Conflict, Unprocessable


@dataclass(frozen=True)
class BillLine:
    description: str
    amount_minor: int
    tax_minor: int = 0


@dataclass(frozen=True)
class Bill:
    id: str
    vendor_id: str
    bill_number: str
    currency: str
    lines: tuple[BillLine, ...]
    expense_account: str
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    received_at: datetime
    due_at: datetime
    paid_minor: int = 0
    status: str = "open"
    paid_at: datetime | None = None

    @property
    def balance_minor(self) -> int:
        return self.total_minor - self.paid_minor


def bill_due_at(*, received_at: datetime, due_at: datetime | None, terms_days: int) -> datetime:
    """The bill's own due date, else the vendor's terms counted from receipt."""
    return due_at if due_at is not None else received_at + timedelta(days=terms_days)


def receive_bill(
    *,
    bill_id: str,
    vendor_id: str,
    bill_number: str,
    currency: str,
    lines: tuple[BillLine, ...],
    expense_account: str,
    received_at: datetime,
    due_at: datetime,
) -> tuple[Bill, list[events.Event]]:
    """A vendor bill: subtotal and tax are the sums of its lines."""
    subtotal = sum(line.amount_minor for line in lines)
    tax = sum(line.tax_minor for line in lines)
    bill = Bill(
        id=bill_id,
        vendor_id=vendor_id,
        bill_number=bill_number,
        currency=currency,
        lines=lines,
        expense_account=expense_account,
        subtotal_minor=subtotal,
        tax_minor=tax,
        total_minor=subtotal + tax,
        received_at=received_at,
        due_at=due_at,
    )
    received = events.BillReceived(
        bill_id=bill.id,
        vendor_id=bill.vendor_id,
        bill_number=bill.bill_number,
        currency=bill.currency,
        expense_account=bill.expense_account,
        subtotal_minor=bill.subtotal_minor,
        tax_minor=bill.tax_minor,
        total_minor=bill.total_minor,
        due_at=bill.due_at,
    )
    return bill, [received]


def pay_bill(bill: Bill, *, payment_id: str, amount_minor: int, paid_at: datetime) -> tuple[Bill, list[events.Event]]:
    """A (partial) payment of a bill; paying more than is owed is refused."""
    if bill.status == "paid":
        raise Conflict(f"bill {bill.bill_number} is already paid")
    if amount_minor <= 0:
        raise Unprocessable("a payment must be positive", field="body.amount_minor")
    if amount_minor > bill.balance_minor:
        raise Unprocessable(
            f"{amount_minor} is more than the {bill.balance_minor} still owed on bill {bill.bill_number}",
            field="body.amount_minor",
        )
    paid = bill.paid_minor + amount_minor
    done = paid == bill.total_minor
    moved = replace(
        bill, paid_minor=paid, status="paid" if done else "partially_paid", paid_at=paid_at if done else None
    )
    caused: list[events.Event] = [
        events.BillPaymentMade(
            payment_id=payment_id,
            bill_id=bill.id,
            vendor_id=bill.vendor_id,
            currency=bill.currency,
            amount_minor=amount_minor,
            paid_at=paid_at,
        )
    ]
    if done:
        caused.append(
            events.BillPaid(
                bill_id=bill.id,
                vendor_id=bill.vendor_id,
                currency=bill.currency,
                total_minor=bill.total_minor,
                paid_at=paid_at,
            )
        )
    return moved, caused
