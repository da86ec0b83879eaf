"""Request and response models of the billing API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backoffice.events import Rfc3339
from billing.aging import AGING_BUCKETS, AgingRow
from billing.domain import Invoice
from billing.payables import Bill

MAX_MINOR = 10**15  # far below bigint, so sums of many amounts never overflow


Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
Minor = Annotated[int, Field(strict=True, gt=0, le=MAX_MINOR)]
CustomerId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s]+$")]
Timestamp = Rfc3339
InvoiceStatus = Literal["open", "partially_paid", "paid", "overdue", "credited"]
BillStatus = Literal["open", "partially_paid", "paid"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ----------------------------------------------------------------------------------


class Terms(_In):
    payment_terms_days: int = Field(strict=True, ge=0, le=365)


class AllocationIn(_In):
    invoice_id: uuid.UUID
    amount_minor: Minor


class PaymentIn(_In):
    customer_id: CustomerId
    currency: Currency
    amount_minor: Minor
    method: str = Field(min_length=1, max_length=50)
    reference: str = Field(max_length=200)
    received_at: Timestamp | None = None
    allocations: list[AllocationIn] | None = Field(None, max_length=200)


class VendorIn(_In):
    name: str = Field(min_length=1, max_length=200)
    payment_terms_days: int = Field(30, strict=True, ge=0, le=365)


class BillLineIn(_In):
    description: str = Field(min_length=1, max_length=500)
    amount_minor: Minor
    tax_minor: int = Field(0, strict=True, ge=0, le=MAX_MINOR)


class BillIn(_In):
    vendor_id: uuid.UUID
    bill_number: str = Field(min_length=1, max_length=64)
    currency: Currency
    lines: list[BillLineIn] = Field(min_length=1, max_length=200)
    expense_account: str = Field(pattern=r"^[0-9]{4}$", description="a 4-digit ledger account code")
    due_at: Timestamp | None = Field(None, description="defaults to the vendor's payment terms from today")


class BillPaymentIn(_In):
    amount_minor: Minor
    paid_at: Timestamp | None = None
    reference: str = Field(max_length=200)


# --- responses ---------------------------------------------------------------------------------


class InvoiceLine(BaseModel):
    sku: str
    description: str
    quantity: int
    unit_price_minor: int
    amount_minor: int


class InvoiceOut(BaseModel):
    id: str
    number: str
    customer_id: str
    order_id: str
    shipment_id: str
    currency: str
    lines: list[InvoiceLine]
    tax_rate_bps: int
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    paid_minor: int
    credit_applied_minor: int
    credited_minor: int
    balance_minor: int
    status: InvoiceStatus
    issued_at: datetime
    due_at: datetime
    dunning_level: int
    disputed: bool = Field(description="under an open dispute: dunning is paused")

    @classmethod
    def of(cls, invoice: Invoice) -> InvoiceOut:
        return cls(
            **{k: v for k, v in invoice.__dict__.items() if k not in {"lines", "closed_at"}},
            lines=[InvoiceLine(**line.model_dump()) for line in invoice.lines],
            balance_minor=invoice.balance_minor,
        )


class Applied(BaseModel):
    invoice_id: str
    amount_minor: int


class PaymentOut(BaseModel):
    id: str
    customer_id: str
    currency: str
    amount_minor: int
    applied: list[Applied]
    unapplied_minor: int
    method: str
    reference: str
    received_at: datetime

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> PaymentOut:
        return cls(**{**row, "id": str(row["id"]), "applied": [Applied(**a) for a in row["applied"]]})


class CreditNoteOut(BaseModel):
    id: str
    number: str
    invoice_id: str
    customer_id: str
    order_id: str
    return_id: str
    currency: str
    lines: list[InvoiceLine]
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    applied_to_invoice_minor: int
    to_customer_credit_minor: int
    issued_at: datetime

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> CreditNoteOut:
        return cls(**{**row, "id": str(row["id"]), "invoice_id": str(row["invoice_id"])})


class TermsOut(BaseModel):
    customer_id: str
    payment_terms_days: int
    is_default: bool


class CurrencyAmount(BaseModel):
    currency: str
    balance_minor: int


class StatementBalance(BaseModel):
    currency: str
    open_invoices_minor: int
    credit_minor: int
    balance_minor: int = Field(description="what the customer owes: open invoices minus unapplied credit")


class Statement(BaseModel):
    customer_id: str
    as_of: datetime
    payment_terms_days: int
    invoices: list[InvoiceOut]
    credit_notes: list[CreditNoteOut]
    payments: list[PaymentOut]
    credit: list[CurrencyAmount]
    balance: list[StatementBalance]


class AgingOut(BaseModel):
    customer_id: str | None = None
    vendor_id: str | None = None
    currency: str
    buckets: dict[str, int]
    total_minor: int

    @classmethod
    def of(cls, row: AgingRow, *, party: Literal["customer_id", "vendor_id"]) -> AgingOut:
        return cls(**{party: row.party_id}, currency=row.currency, buckets=row.buckets, total_minor=row.total_minor)


class AgingReport(BaseModel):
    as_of: datetime
    currency: str | None
    bucket_names: list[str] = Field(default_factory=lambda: list(AGING_BUCKETS))
    rows: list[AgingOut]
    totals: list[AgingOut]


class CustomerBalance(BaseModel):
    customer_id: str
    currency: str
    balance_minor: int


class VendorBalance(BaseModel):
    vendor_id: str
    currency: str
    balance_minor: int


class Balances(BaseModel):
    as_of: datetime
    receivables: list[CustomerBalance]
    customer_credit: list[CustomerBalance]
    payables: list[VendorBalance]


class DunningRun(BaseModel):
    as_of: datetime
    examined: int
    marked_overdue: int
    notices: int
    skipped_disputed: int


class VendorOut(BaseModel):
    id: str
    name: str
    payment_terms_days: int
    created_at: datetime

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> VendorOut:
        return cls(**{k: v for k, v in row.items() if k != "seq"} | {"id": str(row["id"])})


class BillLine(BaseModel):
    description: str
    amount_minor: int
    tax_minor: int


class BillPaymentOut(BaseModel):
    id: str
    amount_minor: int
    reference: str
    paid_at: datetime


class BillOut(BaseModel):
    id: str
    vendor_id: str
    bill_number: str
    currency: str
    lines: list[BillLine]
    expense_account: str
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    paid_minor: int
    balance_minor: int
    status: BillStatus
    received_at: datetime
    due_at: datetime
    paid_at: datetime | None
    payments: list[BillPaymentOut] | None = None

    @classmethod
    def of(cls, bill: Bill, payments: list[dict[str, Any]] | None = None) -> BillOut:
        return cls(
            **{k: v for k, v in bill.__dict__.items() if k != "lines"},
            lines=[BillLine(**line.__dict__) for line in bill.lines],
            balance_minor=bill.balance_minor,
            payments=None if payments is None else [BillPaymentOut(**{**p, "id": str(p["id"])}) for p in payments],
        )


class BillPaymentResult(BaseModel):
    id: str
    bill_id: str
    amount_minor: int
    reference: str
    paid_at: datetime
    bill: BillOut
