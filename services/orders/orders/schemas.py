"""Request and response models of the orders API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from orders import domain

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")]
CustomerId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@\-]*$")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217, upper case")]
Quantity = Annotated[int, Field(strict=True, gt=0, le=1_000_000)]
Minor = Annotated[int, Field(strict=True, ge=0, le=10**12)]
Status = Literal["backordered", "confirmed", "partially_shipped", "shipped", "cancelled"]
BillingStatus = Literal["not_invoiced", "invoiced", "paid"]


def _short(n: int) -> Any:
    """Text of 1 to n characters, not all blank (taken as sent: the limit is the one the document shows)."""
    return Field(min_length=1, max_length=n, pattern=r"\S")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _distinct(lines: list[LineIn]) -> list[LineIn]:
    seen: set[str] = set()
    for line in lines:
        if line.sku in seen:
            raise ValueError(f"sku {line.sku} appears more than once; give each sku one line")
        seen.add(line.sku)
    return lines


class CreateProduct(_Request):
    sku: Sku
    name: Annotated[str, _short(200)]
    unit_price_minor: Minor
    currency: Currency
    on_hand: Annotated[int, Field(strict=True, ge=0, le=1_000_000_000)]
    reorder_level: Annotated[int, Field(strict=True, ge=0, le=1_000_000_000)] = 0


class StockAdjustment(_Request):
    delta: Annotated[int, Field(strict=True, ge=-1_000_000_000, le=1_000_000_000, description="Never 0")]
    reason: Annotated[str, _short(200)] = Field(description="Why: a receipt, a count correction, ...")

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, delta: int) -> int:
        if delta == 0:
            raise ValueError("delta must not be 0")
        return delta


class LineIn(_Request):
    sku: Sku
    quantity: Quantity

    def item(self) -> domain.Item:
        return domain.Item(self.sku, self.quantity)


Lines = Annotated[list[LineIn], Field(min_length=1, max_length=100), AfterValidator(_distinct)]


class Address(_Request):
    name: Annotated[str, Field(max_length=200)] | None = None
    line1: Annotated[str, _short(200)]
    line2: Annotated[str, Field(max_length=200)] | None = None
    city: Annotated[str, _short(100)]
    region: Annotated[str, Field(max_length=100)] | None = None
    postal_code: Annotated[str, Field(max_length=20)] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]


class PlaceOrder(_Request):
    customer_id: CustomerId
    currency: Currency
    lines: Lines
    shipping_address: Address | Annotated[str, _short(500)]
    allow_backorder: Annotated[bool, Field(strict=True)] = False

    def items(self) -> list[domain.Item]:
        return [line.item() for line in self.lines]


class Ship(_Request):
    lines: Lines
    carrier: Annotated[str, Field(max_length=100)] | None = None
    tracking_number: Annotated[str, Field(max_length=100)] | None = None

    def items(self) -> list[domain.Item]:
        return [line.item() for line in self.lines]


class Cancel(_Request):
    reason: Annotated[str, _short(500)]


class Return(_Request):
    lines: Lines
    reason: Annotated[str, _short(500)]
    restock: Annotated[bool, Field(strict=True)]

    def items(self) -> list[domain.Item]:
        return [line.item() for line in self.lines]


# --- responses ---------------------------------------------------------------------------------


class Product(BaseModel):
    sku: str
    name: str
    unit_price_minor: int
    currency: str
    on_hand: int
    reserved: int
    available: int
    reorder_level: int
    needs_reorder: bool = Field(description="available is at or below the reorder level")

    @classmethod
    def of(cls, product: domain.Product) -> Product:
        return cls(
            sku=product.sku,
            name=product.name,
            unit_price_minor=product.unit_price_minor,
            currency=product.currency,
            on_hand=product.on_hand,
            reserved=product.reserved,
            available=product.available,
            reorder_level=product.reorder_level,
            needs_reorder=product.needs_reorder,
        )


class Adjustment(BaseModel):
    id: str
    sku: str
    delta: int
    reason: str
    created_at: datetime
    product: Product
    confirmed_orders: list[str] = Field(description="Backorders this adjustment confirmed, oldest first")


class Line(BaseModel):
    sku: str
    quantity: int = Field(description="Ordered (also given as `ordered`)")
    ordered: int
    unit_price_minor: int
    amount_minor: int
    reserved: int
    shipped: int
    returned: int
    cancelled: int
    backordered: int = Field(description="Open and still waiting for stock")

    @classmethod
    def of(cls, line: domain.Line) -> Line:
        return cls(
            sku=line.sku,
            quantity=line.quantity,
            ordered=line.quantity,
            unit_price_minor=line.unit_price_minor,
            amount_minor=line.amount_minor,
            reserved=line.reserved,
            shipped=line.shipped,
            returned=line.returned,
            cancelled=line.cancelled,
            backordered=line.waiting,
        )


class PricedLine(BaseModel):
    sku: str
    quantity: int
    unit_price_minor: int


class Shipment(BaseModel):
    id: str
    lines: list[PricedLine]
    subtotal_minor: int
    carrier: str | None
    tracking_number: str | None
    shipped_at: datetime


class ReturnOut(BaseModel):
    id: str
    lines: list[PricedLine]
    subtotal_minor: int
    reason: str
    restocked: bool
    returned_at: datetime


class Invoice(BaseModel):
    invoice_id: str
    number: str | None
    currency: str
    total_minor: int
    paid: bool
    issued_at: datetime | None
    paid_at: datetime | None


class Billing(BaseModel):
    status: BillingStatus
    invoices: list[Invoice]


class HistoryItem(BaseModel):
    type: str = Field(description="The event's name, e.g. OrderShipped or InvoicePaid")
    occurred_at: datetime
    data: dict[str, Any]


class OrderSummary(BaseModel):
    id: str
    customer_id: str
    currency: str
    status: Status
    total_minor: int
    placed_at: datetime
    updated_at: datetime | None
    billing_status: BillingStatus


class Order(BaseModel):
    id: str
    customer_id: str
    currency: str
    status: Status
    total_minor: int
    shipping_address: dict[str, str] | str
    allow_backorder: bool
    placed_at: datetime
    confirmed_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    updated_at: datetime | None
    lines: list[Line]
    shipments: list[Shipment]
    returns: list[ReturnOut]
    billing: Billing
    history: list[HistoryItem]

    @classmethod
    def of(
        cls,
        order: domain.Order,
        *,
        shipments: Sequence[Shipment],
        returns: Sequence[ReturnOut],
        invoices: Sequence[Invoice],
        history: Sequence[HistoryItem],
    ) -> Order:
        return cls(
            id=order.id,
            customer_id=order.customer_id,
            currency=order.currency,
            status=order.status,  # type: ignore[arg-type]
            total_minor=order.total_minor,
            shipping_address=order.shipping_address,
            allow_backorder=order.allow_backorder,
            placed_at=order.placed_at,
            confirmed_at=order.confirmed_at,
            cancelled_at=order.cancelled_at,
            cancel_reason=order.cancel_reason,
            updated_at=order.updated_at,
            lines=[Line.of(line) for line in order.lines],
            shipments=list(shipments),
            returns=list(returns),
            billing=Billing(
                status=domain.billing_status(  # type: ignore[arg-type]
                    invoices=len(invoices), paid=sum(i.paid for i in invoices)
                ),
                invoices=list(invoices),
            ),
            history=list(history),
        )
