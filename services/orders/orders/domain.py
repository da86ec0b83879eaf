"""The rules of stock and orders: pure functions from state to new state plus the events it caused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from backoffice import events
from backoffice.errors import Conflict, Unprocessable

STATUSES = ("backordered", "confirmed", "partially_shipped", "shipped", "cancelled")


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    unit_price_minor: int
    currency: str
    on_hand: int
    reserved: int = 0
    reorder_level: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    @property
    def needs_reorder(self) -> bool:
        return self.available <= self.reorder_level


@dataclass(frozen=True)
class Item:
    """A requested quantity of a SKU (a line of a request)."""

    sku: str
    quantity: int


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    unit_price_minor: int
    reserved: int = 0
    shipped: int = 0
    returned: int = 0
    cancelled: int = 0

    @property
    def open(self) -> int:
        """Ordered and neither shipped nor cancelled."""
        return self.quantity - self.shipped - self.cancelled

    @property
    def waiting(self) -> int:
        """Open but not reserved: the backordered quantity."""
        return self.open - self.reserved

    @property
    def returnable(self) -> int:
        return self.shipped - self.returned

    @property
    def amount_minor(self) -> int:
        return self.quantity * self.unit_price_minor


@dataclass(frozen=True)
class Order:
    id: str
    customer_id: str
    currency: str
    status: str
    lines: tuple[Line, ...]
    placed_at: datetime
    shipping_address: Any = None
    allow_backorder: bool = False
    confirmed_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    updated_at: datetime | None = None

    @property
    def total_minor(self) -> int:
        return sum(line.amount_minor for line in self.lines)

    def line(self, sku: str) -> Line | None:
        return next((line for line in self.lines if line.sku == sku), None)


@dataclass(frozen=True)
class Outcome:
    """A decision: the order as it now stands, the products whose stock moved, and the events it caused."""

    order: Order
    products: tuple[Product, ...]
    events: tuple[events.Event, ...]


@dataclass(frozen=True)
class Filled:
    """Backorders given stock: the orders that changed, the products whose reservations grew, the events."""

    orders: tuple[Order, ...]
    products: tuple[Product, ...]
    events: tuple[events.Event, ...]


def adjust_stock(product: Product, *, delta: int) -> Product:
    """A receipt (delta > 0) or a count correction; on_hand never negative, never below what is reserved."""
    on_hand = product.on_hand + delta
    if on_hand < 0:
        raise Conflict(
            f"{product.sku} has {product.on_hand} on hand: a delta of {delta} would make stock negative",
            errors=[{"field": "body.delta", "message": "stock cannot go negative"}],
        )
    if on_hand < product.reserved:
        raise Conflict(
            f"{product.sku} has {product.reserved} units reserved for orders: on_hand cannot fall to {on_hand}",
            errors=[{"field": "body.delta", "message": "on_hand cannot fall below reserved"}],
        )
    return replace(product, on_hand=on_hand)


def place_order(
    *,
    order_id: str,
    customer_id: str,
    currency: str,
    items: Sequence[Item],
    catalogue: Mapping[str, Product],
    allow_backorder: bool,
    shipping_address: Any,
    now: datetime,
) -> Outcome:
    """Price the lines from the catalogue and reserve their stock; short lines are a 409 unless backordered."""
    _check_catalogue(items, catalogue, currency)
    short = [(i, item, catalogue[item.sku].available) for i, item in enumerate(items)]
    short = [(i, item, available) for i, item, available in short if item.quantity > available]
    if short and not allow_backorder:
        raise Conflict(
            f"not enough stock for {len(short)} line(s): " + ", ".join(item.sku for _, item, _ in short),
            errors=[
                {"field": f"body.lines.{i}.quantity", "message": f"{item.quantity} requested, {max(a, 0)} available"}
                for i, item, a in short
            ],
            short_lines=[{"sku": item.sku, "requested": item.quantity, "available": max(a, 0)} for _, item, a in short],
        )
    stock = dict(catalogue)
    lines = []
    for item in items:
        product = stock[item.sku]
        granted = min(item.quantity, max(product.available, 0))
        stock[item.sku] = replace(product, reserved=product.reserved + granted)
        lines.append(Line(item.sku, item.quantity, product.unit_price_minor, reserved=granted))
    status = "backordered" if short else "confirmed"
    order = Order(
        id=order_id,
        customer_id=customer_id,
        currency=currency,
        status=status,
        lines=tuple(lines),
        placed_at=now,
        shipping_address=shipping_address,
        allow_backorder=allow_backorder,
        confirmed_at=None if short else now,
    )
    placed = events.OrderPlaced(
        order_id=order_id,
        customer_id=customer_id,
        currency=currency,
        lines=_priced(order.lines, {line.sku: line.quantity for line in order.lines}),
        total_minor=order.total_minor,
        status=status,
        placed_at=now,
    )
    return Outcome(order, tuple(stock[item.sku] for item in items), (placed,))


def ship(
    order: Order,
    *,
    shipment_id: str,
    items: Sequence[Item],
    catalogue: Mapping[str, Product],
    carrier: str | None,
    tracking_number: str | None,
    now: datetime,
) -> Outcome:
    """Ship some reserved quantities: stock leaves on_hand and the reservation; partially shipped, then shipped."""
    shipped_order, shipped = shipment(
        order, shipment_id=shipment_id, items=items, carrier=carrier, tracking_number=tracking_number, now=now
    )
    products = tuple(
        replace(
            catalogue[line.sku],
            on_hand=catalogue[line.sku].on_hand - line.quantity,
            reserved=catalogue[line.sku].reserved - line.quantity,
        )
        for line in shipped.lines
    )
    return Outcome(shipped_order, products, (shipped,))


def shipment(
    order: Order,
    *,
    shipment_id: str,
    items: Sequence[Item],
    carrier: str | None,
    tracking_number: str | None,
    now: datetime,
) -> tuple[Order, events.OrderShipped]:
    """The order once these quantities have shipped, and the shipment; the stock each line takes out of its
    product's on_hand and reservation is that line's quantity in the event."""
    if order.status == "cancelled":
        raise Conflict("the order is cancelled: nothing is left to ship")
    if order.status == "shipped":
        raise Conflict("the order is already fully shipped")
    if order.status == "backordered":
        raise Conflict("the order is backordered: it can ship once a stock receipt confirms it")
    _check_on_order(order, items)
    on_order = {line.sku: line for line in order.lines}
    over = [(i, item, on_order[item.sku]) for i, item in enumerate(items) if item.quantity > on_order[item.sku].open]
    if over:
        raise Conflict(
            "shipping more than ordered minus shipped: " + ", ".join(item.sku for _, item, _ in over),
            errors=[
                {"field": f"body.lines.{i}.quantity", "message": f"{item.quantity} to ship, {line.open} left to ship"}
                for i, item, line in over
            ],
        )
    moved = {item.sku: item.quantity for item in items}
    lines = tuple(
        replace(line, reserved=line.reserved - moved[line.sku], shipped=line.shipped + moved[line.sku])
        if line.sku in moved
        else line
        for line in order.lines
    )
    status = "shipped" if all(line.open == 0 for line in lines) else "partially_shipped"
    priced = _priced(order.lines, moved)
    shipped = events.OrderShipped(
        order_id=order.id,
        shipment_id=shipment_id,
        customer_id=order.customer_id,
        currency=order.currency,
        lines=priced,
        subtotal_minor=_subtotal(priced),
        carrier=carrier,
        tracking_number=tracking_number,
        shipped_at=now,
    )
    return replace(order, lines=lines, status=status), shipped


def cancel(order: Order, *, reason: str, catalogue: Mapping[str, Product], now: datetime) -> Outcome:
    """Cancel everything not yet shipped and release its reservation."""
    if order.status == "cancelled":
        raise Conflict("the order is already cancelled")
    if order.status == "shipped":
        raise Conflict("a fully shipped order cannot be cancelled: record a return instead")
    released = {line.sku: line.reserved for line in order.lines if line.reserved > 0}
    lines = tuple(replace(line, cancelled=line.cancelled + line.open, reserved=0) for line in order.lines)
    products = tuple(replace(catalogue[sku], reserved=catalogue[sku].reserved - q) for sku, q in released.items())
    cancelled = events.OrderCancelled(
        order_id=order.id,
        customer_id=order.customer_id,
        reason=reason,
        released=tuple(events.SkuQuantity(sku=sku, quantity=q) for sku, q in released.items()),
        cancelled_at=now,
    )
    order = replace(order, lines=lines, status="cancelled", cancelled_at=now, cancel_reason=reason)
    return Outcome(order, products, (cancelled,))


def return_items(
    order: Order,
    *,
    return_id: str,
    items: Sequence[Item],
    reason: str,
    restock: bool,
    catalogue: Mapping[str, Product],
    now: datetime,
) -> Outcome:
    """Take back shipped quantities; with `restock`, they are on hand again."""
    _check_on_order(order, items)
    on_order = {line.sku: line for line in order.lines}
    over = [
        (i, item, on_order[item.sku]) for i, item in enumerate(items) if item.quantity > on_order[item.sku].returnable
    ]
    if over:
        raise Conflict(
            "returning more than was shipped: " + ", ".join(item.sku for _, item, _ in over),
            errors=[
                {
                    "field": f"body.lines.{i}.quantity",
                    "message": f"{item.quantity} to return, {line.returnable} shipped and not yet returned",
                }
                for i, item, line in over
            ],
        )
    moved = {item.sku: item.quantity for item in items}
    lines = tuple(
        replace(line, returned=line.returned + moved[line.sku]) if line.sku in moved else line for line in order.lines
    )
    products = (
        tuple(replace(catalogue[sku], on_hand=catalogue[sku].on_hand + q) for sku, q in moved.items())
        if restock
        else ()
    )
    priced = _priced(order.lines, moved)
    returned = events.OrderReturned(
        order_id=order.id,
        return_id=return_id,
        customer_id=order.customer_id,
        currency=order.currency,
        lines=priced,
        subtotal_minor=_subtotal(priced),
        restocked=restock,
        reason=reason,
        returned_at=now,
    )
    return Outcome(replace(order, lines=lines), products, (returned,))


def fill_backorders(waiting: Sequence[Order], catalogue: Mapping[str, Product], *, now: datetime) -> Filled:
    """Reserve free stock for backorders, oldest first; confirm each one that is then fully reserved."""
    stock = dict(catalogue)
    changed: list[Order] = []
    caused: list[events.Event] = []
    for order in waiting:
        if order.status != "backordered":
            continue
        lines = []
        for line in order.lines:
            product = stock.get(line.sku)
            granted = min(line.waiting, product.available) if product is not None else 0
            if granted > 0 and product is not None:
                stock[line.sku] = replace(product, reserved=product.reserved + granted)
                line = replace(line, reserved=line.reserved + granted)
            lines.append(line)
        if tuple(lines) == order.lines:
            continue
        order = replace(order, lines=tuple(lines))
        if all(line.waiting == 0 for line in lines):
            order = replace(order, status="confirmed", confirmed_at=now)
            caused.append(events.OrderConfirmed(order_id=order.id, customer_id=order.customer_id, confirmed_at=now))
        changed.append(order)
    moved = tuple(p for sku, p in stock.items() if p != catalogue[sku])
    return Filled(tuple(changed), moved, tuple(caused))


def billing_status(*, invoices: int, paid: int) -> str:
    """`not_invoiced` without invoices, `paid` once every invoice is paid, else `invoiced`."""
    if invoices == 0:
        return "not_invoiced"
    return "paid" if paid >= invoices else "invoiced"


def _check_catalogue(items: Sequence[Item], catalogue: Mapping[str, Product], currency: str) -> None:
    errors = []
    for i, item in enumerate(items):
        product = catalogue.get(item.sku)
        if product is None:
            errors.append({"field": f"body.lines.{i}.sku", "message": f"unknown sku {item.sku}"})
        elif product.currency != currency:
            message = f"{item.sku} is priced in {product.currency}, the order is in {currency}"
            errors.append({"field": f"body.lines.{i}.sku", "message": message})
    if errors:
        raise Unprocessable("; ".join(e["message"] for e in errors), errors=errors)


def _check_on_order(order: Order, items: Sequence[Item]) -> None:
    errors = [
        {"field": f"body.lines.{i}.sku", "message": f"{item.sku} is not on this order"}
        for i, item in enumerate(items)
        if order.line(item.sku) is None
    ]
    if errors:
        raise Unprocessable("; ".join(e["message"] for e in errors), errors=errors)


def _priced(lines: Sequence[Line], quantities: Mapping[str, int]) -> tuple[events.Line, ...]:
    """Event lines for `quantities`, at the order's prices, in the order's line order."""
    return tuple(
        events.Line(sku=line.sku, quantity=quantities[line.sku], unit_price_minor=line.unit_price_minor)
        for line in lines
        if quantities.get(line.sku, 0) > 0
    )


def _subtotal(lines: Sequence[events.Line]) -> int:
    return sum(line.quantity * line.unit_price_minor for line in lines)
