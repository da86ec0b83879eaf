"""Pure receivables rules: tax, invoices, cash application, customer credit, credit notes, dunning. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from backoffice import events
from backoffice.errors import Conflict, Unprocessable

CLOSED = frozenset({"paid", "credited"})
DUNNING_LEVELS: tuple[tuple[int, int], ...] = ((1, 1), (2, 15), (3, 30))  # (level, days past due)


def tax_on(subtotal_minor: int, rate_bps: int) -> int:
    """Tax on a document's subtotal: `subtotal * rate_bps / 10000` rounded half up, in integer arithmetic only.

    The tax is computed once on the subtotal (never per line), so `subtotal + tax = total` holds exactly:
    `(subtotal * rate_bps + 5000) // 10000`, e.g. 1234 at 20 % is 246.8 -> 247, 1 at 20 % is 0.2 -> 0,
    25 at 2 % is 0.5 -> 1. Amounts are never negative, so floor division after adding half rounds half up.
    """
    if subtotal_minor < 0 or rate_bps < 0:
        raise ValueError("subtotal and rate must not be negative")
    return (subtotal_minor * rate_bps + 5000) // 10000


def document_number(prefix: str, year: int, n: int) -> str:
    """A human document number: `INV-2026-000001`, `CN-2026-000001`."""
    return f"{prefix}-{year}-{n:06d}"


def priced_lines(lines: Sequence[events.Line]) -> tuple[events.InvoiceLine, ...]:
    """Lines as shipped or returned, each with its amount."""
    return tuple(
        events.InvoiceLine(
            sku=line.sku,
            description=line.sku,
            quantity=line.quantity,
            unit_price_minor=line.unit_price_minor,
            amount_minor=line.quantity * line.unit_price_minor,
        )
        for line in lines
    )


@dataclass(frozen=True)
class Invoice:
    id: str
    number: str
    customer_id: str
    order_id: str
    shipment_id: str
    currency: str
    lines: tuple[events.InvoiceLine, ...]
    tax_rate_bps: int
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    issued_at: datetime
    due_at: datetime
    paid_minor: int = 0
    credit_applied_minor: int = 0
    credited_minor: int = 0
    status: str = "open"
    dunning_level: int = 0
    closed_at: datetime | None = None
    disputed: bool = False  # under an open dispute raised through support

    @property
    def balance_minor(self) -> int:
        return self.total_minor - self.paid_minor - self.credit_applied_minor - self.credited_minor


def issue_invoice(
    shipped: events.OrderShipped, *, invoice_id: str, number: str, tax_rate_bps: int, terms_days: int, at: datetime
) -> tuple[Invoice, list[events.Event]]:
    """An invoice for one shipment: lines as shipped, tax on the subtotal, due after the customer's terms."""
    lines = priced_lines(shipped.lines)
    subtotal = sum(line.amount_minor for line in lines)
    tax = tax_on(subtotal, tax_rate_bps)
    invoice = Invoice(
        id=invoice_id,
        number=number,
        customer_id=shipped.customer_id,
        order_id=shipped.order_id,
        shipment_id=shipped.shipment_id,
        currency=shipped.currency,
        lines=lines,
        tax_rate_bps=tax_rate_bps,
        subtotal_minor=subtotal,
        tax_minor=tax,
        total_minor=subtotal + tax,
        issued_at=at,
        due_at=at + timedelta(days=terms_days),
    )
    issued = events.InvoiceIssued(
        invoice_id=invoice.id,
        number=invoice.number,
        customer_id=invoice.customer_id,
        order_id=invoice.order_id,
        shipment_id=invoice.shipment_id,
        currency=invoice.currency,
        lines=invoice.lines,
        subtotal_minor=invoice.subtotal_minor,
        tax_minor=invoice.tax_minor,
        total_minor=invoice.total_minor,
        issued_at=invoice.issued_at,
        due_at=invoice.due_at,
    )
    settled, more = _settle(invoice, at=at)
    return settled, [issued, *more]


def _settle(
    invoice: Invoice, *, at: datetime, paid: int = 0, credit: int = 0, credited: int = 0
) -> tuple[Invoice, list[events.Event]]:
    """Reduce the balance by a payment, customer credit or a credit note, and move the status to match."""
    if min(paid, credit, credited) < 0 or paid + credit + credited > invoice.balance_minor:
        raise Conflict(f"invoice {invoice.number} has only {invoice.balance_minor} left to settle")
    moved = replace(
        invoice,
        paid_minor=invoice.paid_minor + paid,
        credit_applied_minor=invoice.credit_applied_minor + credit,
        credited_minor=invoice.credited_minor + credited,
    )
    collected = moved.paid_minor + moved.credit_applied_minor
    if moved.balance_minor == 0:
        status = "paid" if collected > 0 or moved.total_minor == 0 else "credited"
    elif invoice.status == "overdue":
        status = "overdue"
    else:
        status = "partially_paid" if collected > 0 else "open"
    moved = replace(moved, status=status, closed_at=invoice.closed_at or (at if status in CLOSED else None))
    caused: list[events.Event] = []
    if status == "paid" and invoice.status != "paid":
        caused.append(
            events.InvoicePaid(
                invoice_id=moved.id,
                customer_id=moved.customer_id,
                order_id=moved.order_id,
                currency=moved.currency,
                total_minor=moved.total_minor,
                paid_at=at,
            )
        )
    return moved, caused


def apply_customer_credit(
    invoice: Invoice, *, available_minor: int, at: datetime
) -> tuple[Invoice, int, list[events.Event]]:
    """Use the customer's unapplied credit (same currency) on a newly issued invoice; return what was used."""
    used = min(available_minor, invoice.balance_minor)
    if used <= 0:
        return invoice, 0, []
    settled, caused = _settle(invoice, credit=used, at=at)
    applied = events.CreditApplied(
        customer_id=invoice.customer_id,
        invoice_id=invoice.id,
        currency=invoice.currency,
        amount_minor=used,
        applied_at=at,
    )
    return settled, used, [applied, *caused]


@dataclass(frozen=True)
class PaymentIn:
    id: str
    customer_id: str
    currency: str
    amount_minor: int
    method: str
    reference: str
    received_at: datetime
    allocations: tuple[events.Allocation, ...] | None = None


@dataclass(frozen=True)
class PaymentOutcome:
    invoices: tuple[Invoice, ...]
    applied: tuple[events.Allocation, ...]
    unapplied_minor: int
    events: tuple[events.Event, ...]


def _check_allocations(payment: PaymentIn, by_id: dict[str, Invoice]) -> None:
    """422 naming each allocation that cannot be applied as asked."""
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, allocation in enumerate(payment.allocations or ()):
        where = f"body.allocations.{i}"
        invoice = by_id.get(allocation.invoice_id)
        if invoice is None or invoice.customer_id != payment.customer_id:
            errors.append({"field": f"{where}.invoice_id", "message": "no such invoice for this customer"})
        elif allocation.invoice_id in seen:
            errors.append({"field": f"{where}.invoice_id", "message": "invoice allocated twice"})
        elif invoice.currency != payment.currency:
            errors.append({"field": where, "message": f"invoice {invoice.number} is in {invoice.currency}"})
        elif allocation.amount_minor > invoice.balance_minor:
            message = f"above the balance {invoice.balance_minor} of invoice {invoice.number}"
            errors.append({"field": f"{where}.amount_minor", "message": message})
        seen.add(allocation.invoice_id)
    total = sum(a.amount_minor for a in payment.allocations or ())
    if total > payment.amount_minor:
        errors.append({"field": "body.allocations", "message": f"allocations {total} exceed the payment"})
    if errors:
        names = ", ".join(e["field"] for e in errors[:5])
        raise Unprocessable(f"the payment cannot be applied as asked: {names}", errors=errors)


def apply_payment(payment: PaymentIn, invoices: Sequence[Invoice]) -> PaymentOutcome:
    """Cash application: to the listed invoices, or oldest open invoice first; what is left is customer credit."""
    by_id = {inv.id: inv for inv in invoices}
    if payment.allocations is not None:
        _check_allocations(payment, by_id)
        plan = [(by_id[a.invoice_id], a.amount_minor) for a in payment.allocations]
    else:
        plan = []
        left = payment.amount_minor
        candidates = [i for i in invoices if i.customer_id == payment.customer_id and i.currency == payment.currency]
        for invoice in sorted(candidates, key=lambda i: (i.issued_at, i.number)):
            take = min(left, invoice.balance_minor)
            if take > 0:
                plan.append((invoice, take))
                left -= take
    changed: list[Invoice] = []
    paid_events: list[events.Event] = []
    for invoice, amount in plan:
        settled, caused = _settle(invoice, paid=amount, at=payment.received_at)
        changed.append(settled)
        paid_events += caused
    applied = tuple(events.Allocation(invoice_id=inv.id, amount_minor=amount) for inv, amount in plan)
    unapplied = payment.amount_minor - sum(a.amount_minor for a in applied)
    received = events.PaymentReceived(
        payment_id=payment.id,
        customer_id=payment.customer_id,
        currency=payment.currency,
        amount_minor=payment.amount_minor,
        applied=applied,
        unapplied_minor=unapplied,
        method=payment.method,
        reference=payment.reference,
        received_at=payment.received_at,
    )
    return PaymentOutcome(tuple(changed), applied, unapplied, (received, *paid_events))


@dataclass(frozen=True)
class CreditNote:
    id: str
    number: str
    invoice_id: str
    customer_id: str
    order_id: str
    return_id: str
    currency: str
    lines: tuple[events.InvoiceLine, ...]
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    applied_to_invoice_minor: int
    to_customer_credit_minor: int
    issued_at: datetime


def invoice_for_return(invoices: Sequence[Invoice]) -> Invoice | None:
    """The invoice a return is credited against: the oldest with an open balance, else the latest."""
    ordered = sorted(invoices, key=lambda i: (i.issued_at, i.number))
    return next((i for i in ordered if i.balance_minor > 0), ordered[-1] if ordered else None)


def credit_note_tax(subtotal_minor: int, *, rate_bps: int, prior_subtotal_minor: int, prior_tax_minor: int) -> int:
    """The tax of a credit note, at its invoice's rate, so that all credit notes against one invoice together
    carry the tax of their summed subtotal rounded half up once (`tax_on`): returning an invoice's lines one
    at a time gives back exactly the invoice's tax, never a rounding unit more or less.
    """
    return tax_on(prior_subtotal_minor + subtotal_minor, rate_bps) - prior_tax_minor


def credit_return(
    returned: events.OrderReturned,
    invoice: Invoice,
    *,
    credit_note_id: str,
    number: str,
    at: datetime,
    prior: tuple[int, int] = (0, 0),
) -> tuple[CreditNote, Invoice, list[events.Event]]:
    """A credit note for returned lines; it reduces the open balance first and the rest becomes customer credit.

    `prior` is the (subtotal, tax) of the credit notes already issued against the invoice.
    """
    if returned.currency != invoice.currency:
        raise Conflict(f"return in {returned.currency} cannot be credited on invoice {invoice.number}")
    lines = priced_lines(returned.lines)
    subtotal = sum(line.amount_minor for line in lines)
    tax = credit_note_tax(
        subtotal, rate_bps=invoice.tax_rate_bps, prior_subtotal_minor=prior[0], prior_tax_minor=prior[1]
    )
    total = subtotal + tax
    applied = min(total, invoice.balance_minor)
    note = CreditNote(
        id=credit_note_id,
        number=number,
        invoice_id=invoice.id,
        customer_id=invoice.customer_id,
        order_id=returned.order_id,
        return_id=returned.return_id,
        currency=invoice.currency,
        lines=lines,
        subtotal_minor=subtotal,
        tax_minor=tax,
        total_minor=total,
        applied_to_invoice_minor=applied,
        to_customer_credit_minor=total - applied,
        issued_at=at,
    )
    issued = events.CreditNoteIssued(
        credit_note_id=note.id,
        number=note.number,
        invoice_id=note.invoice_id,
        customer_id=note.customer_id,
        order_id=note.order_id,
        return_id=note.return_id,
        currency=note.currency,
        subtotal_minor=note.subtotal_minor,
        tax_minor=note.tax_minor,
        total_minor=note.total_minor,
        applied_to_invoice_minor=note.applied_to_invoice_minor,
        to_customer_credit_minor=note.to_customer_credit_minor,
        issued_at=at,
    )
    settled, caused = _settle(invoice, credited=applied, at=at)
    return note, settled, [issued, *caused]


def days_overdue(due_at: datetime, as_of: datetime) -> int:
    """Whole days past due (0 until a full day has passed)."""
    return max(0, (as_of - due_at) // timedelta(days=1))


def dun(invoice: Invoice, *, as_of: datetime, emitted: frozenset[int]) -> tuple[Invoice, list[events.InvoiceOverdue]]:
    """Mark a past-due invoice overdue and announce every dunning level reached and not yet announced, in order.

    An invoice under an open dispute, settled, or not yet past due is left as it is.
    """
    if invoice.disputed or invoice.status in CLOSED or invoice.balance_minor == 0 or as_of <= invoice.due_at:
        return invoice, []
    days = days_overdue(invoice.due_at, as_of)
    due_levels = [level for level, after in DUNNING_LEVELS if days >= after and level not in emitted]
    notices = [
        events.InvoiceOverdue(
            invoice_id=invoice.id,
            customer_id=invoice.customer_id,
            order_id=invoice.order_id,
            currency=invoice.currency,
            balance_minor=invoice.balance_minor,
            due_at=invoice.due_at,
            days_overdue=days,
            dunning_level=level,
        )
        for level in due_levels
    ]
    level = max([invoice.dunning_level, *due_levels])
    return replace(invoice, status="overdue", dunning_level=level), notices
