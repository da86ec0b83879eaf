"""The event catalog: one frozen model per event and version, decoded through a discriminated union on the type."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Minor = Annotated[int, Field(strict=True)]
NonNegMinor = Annotated[int, Field(ge=0)]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    """A time from a client is RFC 3339 text with an offset: never a number read as seconds since 1970."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("expected an RFC 3339 date-time with an offset, e.g. 2026-01-31T12:00:00Z")
    return value


Rfc3339 = Annotated[UtcDatetime, BeforeValidator(_rfc3339)]


_CE_TYPES: dict[type, str] = {}  # every event class's CloudEvents type, once computed (read for every record)


class Event(BaseModel):
    """Base of every event: frozen, ignores fields it does not know, knows its topic and record key."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    service: ClassVar[str]
    name: ClassVar[str]
    version: ClassVar[int] = 1
    key_field: ClassVar[str]

    @classmethod
    def ce_type(cls) -> str:
        known = _CE_TYPES.get(cls)
        if known is None:
            known = _CE_TYPES[cls] = f"backoffice.{cls.service}.{cls.name}.v{cls.version}"
        return known

    @property
    def key(self) -> str:
        return str(getattr(self, self.key_field))


class Line(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    sku: str
    quantity: int = Field(gt=0)
    unit_price_minor: NonNegMinor


class SkuQuantity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    sku: str
    quantity: int = Field(gt=0)


class InvoiceLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    sku: str
    description: str = ""
    quantity: int = Field(gt=0)
    unit_price_minor: NonNegMinor
    amount_minor: NonNegMinor


class Allocation(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    invoice_id: str
    amount_minor: int = Field(gt=0)


class PostedLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    account: str
    debit_minor: NonNegMinor = 0
    credit_minor: NonNegMinor = 0
    party: str | None = None  # the customer or vendor id on receivable, credit and payable lines


# --- orders.events -----------------------------------------------------------------------------


class _OrdersEvent(Event):
    service: ClassVar[str] = "orders"
    key_field: ClassVar[str] = "order_id"


class OrderPlaced(_OrdersEvent):
    name: ClassVar[str] = "OrderPlaced"
    type: Literal["backoffice.orders.OrderPlaced.v1"] = Field("backoffice.orders.OrderPlaced.v1", exclude=True)
    order_id: str
    customer_id: str
    currency: Currency
    lines: tuple[Line, ...]
    total_minor: NonNegMinor
    status: str
    placed_at: UtcDatetime


class OrderConfirmed(_OrdersEvent):
    name: ClassVar[str] = "OrderConfirmed"
    type: Literal["backoffice.orders.OrderConfirmed.v1"] = Field("backoffice.orders.OrderConfirmed.v1", exclude=True)
    order_id: str
    customer_id: str
    confirmed_at: UtcDatetime


class OrderShipped(_OrdersEvent):
    name: ClassVar[str] = "OrderShipped"
    type: Literal["backoffice.orders.OrderShipped.v1"] = Field("backoffice.orders.OrderShipped.v1", exclude=True)
    order_id: str
    shipment_id: str
    customer_id: str
    currency: Currency
    lines: tuple[Line, ...] = Field(min_length=1)
    subtotal_minor: NonNegMinor
    carrier: str | None = None
    tracking_number: str | None = None
    shipped_at: UtcDatetime


class OrderCancelled(_OrdersEvent):
    name: ClassVar[str] = "OrderCancelled"
    type: Literal["backoffice.orders.OrderCancelled.v1"] = Field("backoffice.orders.OrderCancelled.v1", exclude=True)
    order_id: str
    customer_id: str
    reason: str
    released: tuple[SkuQuantity, ...] = ()
    cancelled_at: UtcDatetime


class OrderReturned(_OrdersEvent):
    name: ClassVar[str] = "OrderReturned"
    type: Literal["backoffice.orders.OrderReturned.v1"] = Field("backoffice.orders.OrderReturned.v1", exclude=True)
    order_id: str
    return_id: str
    customer_id: str
    currency: Currency
    lines: tuple[Line, ...] = Field(min_length=1)
    subtotal_minor: NonNegMinor
    restocked: bool
    reason: str = ""
    returned_at: UtcDatetime


# --- billing.events ----------------------------------------------------------------------------


class _BillingEvent(Event):
    service: ClassVar[str] = "billing"
    key_field: ClassVar[str] = "invoice_id"


class InvoiceIssued(_BillingEvent):
    name: ClassVar[str] = "InvoiceIssued"
    type: Literal["backoffice.billing.InvoiceIssued.v1"] = Field("backoffice.billing.InvoiceIssued.v1", exclude=True)
    invoice_id: str
    number: str
    customer_id: str
    order_id: str | None = None
    shipment_id: str | None = None
    currency: Currency
    lines: tuple[InvoiceLine, ...]
    subtotal_minor: NonNegMinor
    tax_minor: NonNegMinor
    total_minor: NonNegMinor
    issued_at: UtcDatetime
    due_at: UtcDatetime


class PaymentReceived(_BillingEvent):
    name: ClassVar[str] = "PaymentReceived"
    key_field: ClassVar[str] = "payment_id"
    type: Literal["backoffice.billing.PaymentReceived.v1"] = Field(
        "backoffice.billing.PaymentReceived.v1", exclude=True
    )
    payment_id: str
    customer_id: str
    currency: Currency
    amount_minor: int = Field(gt=0)
    applied: tuple[Allocation, ...] = ()
    unapplied_minor: NonNegMinor
    method: str = ""
    reference: str = ""
    received_at: UtcDatetime


class CreditApplied(_BillingEvent):
    name: ClassVar[str] = "CreditApplied"
    type: Literal["backoffice.billing.CreditApplied.v1"] = Field("backoffice.billing.CreditApplied.v1", exclude=True)
    customer_id: str
    invoice_id: str
    currency: Currency
    amount_minor: int = Field(gt=0)
    applied_at: UtcDatetime


class InvoicePaid(_BillingEvent):
    name: ClassVar[str] = "InvoicePaid"
    type: Literal["backoffice.billing.InvoicePaid.v1"] = Field("backoffice.billing.InvoicePaid.v1", exclude=True)
    invoice_id: str
    customer_id: str
    order_id: str | None = None
    currency: Currency
    total_minor: NonNegMinor
    paid_at: UtcDatetime


class CreditNoteIssued(_BillingEvent):
    name: ClassVar[str] = "CreditNoteIssued"
    type: Literal["backoffice.billing.CreditNoteIssued.v1"] = Field(
        "backoffice.billing.CreditNoteIssued.v1", exclude=True
    )
    credit_note_id: str
    number: str
    invoice_id: str
    customer_id: str
    order_id: str | None = None
    return_id: str | None = None
    currency: Currency
    subtotal_minor: NonNegMinor
    tax_minor: NonNegMinor
    total_minor: NonNegMinor
    applied_to_invoice_minor: NonNegMinor
    to_customer_credit_minor: NonNegMinor
    issued_at: UtcDatetime


class InvoiceOverdue(_BillingEvent):
    name: ClassVar[str] = "InvoiceOverdue"
    type: Literal["backoffice.billing.InvoiceOverdue.v1"] = Field("backoffice.billing.InvoiceOverdue.v1", exclude=True)
    invoice_id: str
    customer_id: str
    order_id: str | None = None
    currency: Currency
    balance_minor: NonNegMinor
    due_at: UtcDatetime
    days_overdue: int = Field(ge=0)
    dunning_level: int = Field(ge=1, le=3)


class BillReceived(_BillingEvent):
    name: ClassVar[str] = "BillReceived"
    key_field: ClassVar[str] = "bill_id"
    type: Literal["backoffice.billing.BillReceived.v1"] = Field("backoffice.billing.BillReceived.v1", exclude=True)
    bill_id: str
    vendor_id: str
    bill_number: str
    currency: Currency
    expense_account: str
    subtotal_minor: NonNegMinor
    tax_minor: NonNegMinor
    total_minor: NonNegMinor
    due_at: UtcDatetime


class BillPaymentMade(_BillingEvent):
    name: ClassVar[str] = "BillPaymentMade"
    key_field: ClassVar[str] = "bill_id"
    type: Literal["backoffice.billing.BillPaymentMade.v1"] = Field(
        "backoffice.billing.BillPaymentMade.v1", exclude=True
    )
    payment_id: str
    bill_id: str
    vendor_id: str
    currency: Currency
    amount_minor: int = Field(gt=0)
    paid_at: UtcDatetime


class BillPaid(_BillingEvent):
    name: ClassVar[str] = "BillPaid"
    key_field: ClassVar[str] = "bill_id"
    type: Literal["backoffice.billing.BillPaid.v1"] = Field("backoffice.billing.BillPaid.v1", exclude=True)
    bill_id: str
    vendor_id: str
    currency: Currency
    total_minor: NonNegMinor
    paid_at: UtcDatetime


# --- support.events ----------------------------------------------------------------------------


class _SupportEvent(Event):
    service: ClassVar[str] = "support"
    key_field: ClassVar[str] = "ticket_id"


class _TicketState(_SupportEvent):
    ticket_id: str
    customer_id: str
    status: str
    priority: str
    subject: str = ""
    previous_status: str | None = None
    order_id: str | None = None
    invoice_id: str | None = None
    occurred_at: UtcDatetime | None = None


class TicketOpened(_TicketState):
    name: ClassVar[str] = "TicketOpened"
    type: Literal["backoffice.support.TicketOpened.v1"] = Field("backoffice.support.TicketOpened.v1", exclude=True)


class TicketStatusChanged(_TicketState):
    name: ClassVar[str] = "TicketStatusChanged"
    type: Literal["backoffice.support.TicketStatusChanged.v1"] = Field(
        "backoffice.support.TicketStatusChanged.v1", exclude=True
    )


class TicketResolved(_TicketState):
    name: ClassVar[str] = "TicketResolved"
    type: Literal["backoffice.support.TicketResolved.v1"] = Field("backoffice.support.TicketResolved.v1", exclude=True)


class TicketSLABreached(_SupportEvent):
    name: ClassVar[str] = "TicketSLABreached"
    type: Literal["backoffice.support.TicketSLABreached.v1"] = Field(
        "backoffice.support.TicketSLABreached.v1", exclude=True
    )
    ticket_id: str
    customer_id: str
    priority: str = ""
    clock: Literal["first_response", "resolution"]
    due_at: UtcDatetime
    breached_at: UtcDatetime


class DisputeOpened(_SupportEvent):
    name: ClassVar[str] = "DisputeOpened"
    type: Literal["backoffice.support.DisputeOpened.v1"] = Field("backoffice.support.DisputeOpened.v1", exclude=True)
    ticket_id: str
    customer_id: str
    invoice_id: str
    reason: str
    opened_at: UtcDatetime | None = None


class DisputeResolved(_SupportEvent):
    name: ClassVar[str] = "DisputeResolved"
    type: Literal["backoffice.support.DisputeResolved.v1"] = Field(
        "backoffice.support.DisputeResolved.v1", exclude=True
    )
    ticket_id: str
    customer_id: str
    invoice_id: str
    outcome: str
    resolved_at: UtcDatetime | None = None


# --- ledger.events -----------------------------------------------------------------------------


class JournalEntryPosted(Event):
    service: ClassVar[str] = "ledger"
    name: ClassVar[str] = "JournalEntryPosted"
    key_field: ClassVar[str] = "entry_id"
    type: Literal["backoffice.ledger.JournalEntryPosted.v1"] = Field(
        "backoffice.ledger.JournalEntryPosted.v1", exclude=True
    )
    entry_id: str
    source_event_id: str | None = None
    source_type: str
    currency: Currency
    lines: tuple[PostedLine, ...] = Field(min_length=2)
    effective_at: UtcDatetime
    posted_at: UtcDatetime
    reverses_entry_id: str | None = None


CATALOG: tuple[type[Event], ...] = (
    OrderPlaced,
    OrderConfirmed,
    OrderShipped,
    OrderCancelled,
    OrderReturned,
    InvoiceIssued,
    PaymentReceived,
    CreditApplied,
    InvoicePaid,
    CreditNoteIssued,
    InvoiceOverdue,
    BillReceived,
    BillPaymentMade,
    BillPaid,
    TicketOpened,
    TicketStatusChanged,
    TicketResolved,
    TicketSLABreached,
    DisputeOpened,
    DisputeResolved,
    JournalEntryPosted,
)

AnyEvent = Annotated[
    OrderPlaced
    | OrderConfirmed
    | OrderShipped
    | OrderCancelled
    | OrderReturned
    | InvoiceIssued
    | PaymentReceived
    | CreditApplied
    | InvoicePaid
    | CreditNoteIssued
    | InvoiceOverdue
    | BillReceived
    | BillPaymentMade
    | BillPaid
    | TicketOpened
    | TicketStatusChanged
    | TicketResolved
    | TicketSLABreached
    | DisputeOpened
    | DisputeResolved
    | JournalEntryPosted,
    Field(discriminator="type"),
]
ANY_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
TYPES: dict[str, type[Event]] = {cls.ce_type(): cls for cls in CATALOG}


def now() -> datetime:
    return datetime.now(UTC)
