"""Steps the routes share, inside the caller's transaction: lock in the fixed order, decide, save, record.

Lock order, everywhere: products (by SKU), then the order named in the request, then backorders (oldest first).
Every writer that touches an order first locks all of its products, so two writers never wait on each other in
opposite directions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

import asyncpg
import structlog
from fastapi import Request
from fastapi.responses import Response

from backoffice import events, idempotency
from backoffice.auth import Principal
from backoffice.db import Conn
from backoffice.envelope import Envelope
from backoffice.errors import NotFound, Unavailable
from backoffice.ids import new_id
from orders import domain, schemas, store

_ATTEMPTS = 3
log = structlog.get_logger("orders.workflow")


async def run(request: Request, *, principal: Principal, operation: idempotency.Operation) -> Response:
    """Run a write once per Idempotency-Key; a transaction the database aborted to break a deadlock is retried."""
    for _ in range(_ATTEMPTS):
        try:
            return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            log.warning("write_retried", path=request.url.path, error=type(exc).__name__)
    raise Unavailable("the database is busy with conflicting changes; try again")


async def record(conn: Conn, caused: Sequence[events.Event]) -> list[Envelope]:
    """Publish the events (outbox) and add them to their orders' history, in the caller's transaction."""
    envelopes = [Envelope.wrap(event) for event in caused]
    await store.record_events(conn, envelopes=envelopes)
    return envelopes


def place(body: schemas.PlaceOrder, *, catalogue: Mapping[str, domain.Product], now: datetime) -> domain.Outcome:
    """Price the order's lines from `catalogue` and reserve their stock (`domain.place_order`), under a new id."""
    address = body.shipping_address
    return domain.place_order(
        order_id=new_id(),
        customer_id=body.customer_id,
        currency=body.currency,
        items=body.items(),
        catalogue=catalogue,
        allow_backorder=body.allow_backorder,
        shipping_address=address if isinstance(address, str) else address.model_dump(exclude_none=True),
        now=now,
    )


def new_order_view(order: domain.Order, *, recorded: Sequence[Envelope], now: datetime) -> schemas.Order:
    """The view of an order just inserted, as `order_view` would read it back: no shipment, return or invoice yet,
    and its history is the events just recorded."""
    return schemas.Order.of(
        replace(order, updated_at=now),
        shipments=[],
        returns=[],
        invoices=[],
        history=_history(recorded),
    )


def shipped_view(
    read: store.OrderView,
    *,
    order: domain.Order,
    shipment: events.OrderShipped,
    recorded: Sequence[Envelope],
    now: datetime,
) -> schemas.Order:
    """The view of an order read as `read` once `shipment` is written, as `order_view` would read it back: the
    order now stands as `order`, and the shipment and the events just recorded are added to the rest as read."""
    shipped = {
        "id": shipment.shipment_id,
        "lines": [line.model_dump() for line in shipment.lines],
        "subtotal_minor": shipment.subtotal_minor,
        "carrier": shipment.carrier,
        "tracking_number": shipment.tracking_number,
        "shipped_at": now,
    }
    return view_of(
        replace(
            read,
            order=replace(order, updated_at=now),
            shipments=sorted([*read.shipments, shipped], key=lambda s: (s["shipped_at"], s["id"])),
            history=[
                *read.history,
                *(
                    {"type": e.event.name, "occurred_at": e.time, "data": e.event.model_dump(mode="json")}
                    for e in recorded
                ),
            ],
        )
    )


def _history(recorded: Sequence[Envelope]) -> list[schemas.HistoryItem]:
    """The history items of events just recorded, as the order's history reads them back (built, not validated:
    every field comes from a validated event)."""
    return [
        schemas.HistoryItem.model_construct(type=e.event.name, occurred_at=e.time, data=e.event.model_dump(mode="json"))
        for e in recorded
    ]


Decision = Callable[[domain.Order, Mapping[str, domain.Product]], domain.Outcome]


async def change_order(
    conn: Conn, *, order_id: str, decide: Decision, now: datetime
) -> tuple[domain.Outcome, dict[str, domain.Product]]:
    """Lock the order's products then the order, apply `decide`, save both, record the events.

    Returns the outcome and the locked products as they now stand.
    """
    found = await store.order_owner_and_skus(conn, order_id=order_id)
    if found is None:
        raise NotFound("order not found")
    catalogue = await store.lock_products(conn, skus=found[1])
    order = await store.get_order(conn, order_id=order_id, for_update=True)
    if order is None:
        raise NotFound("order not found")
    outcome = decide(order, catalogue)
    await store.save_orders(conn, orders=[outcome.order], now=now)
    await store.save_stock(conn, products=outcome.products, now=now)
    await record(conn, outcome.events)
    return outcome, merged(catalogue, outcome.products)


async def give_to_backorders(conn: Conn, *, stock: Mapping[str, domain.Product], now: datetime) -> domain.Filled:
    """Reserve the free stock of these locked products for backorders, oldest first; confirm those filled."""
    free = {sku: product for sku, product in stock.items() if product.available > 0}
    if not free:
        return domain.Filled((), (), ())
    waiting = await store.lock_backorders(conn, skus=free)
    filled = domain.fill_backorders(waiting, free, now=now)
    await store.save_orders(conn, orders=filled.orders, now=now)
    await store.save_stock(conn, products=filled.products, now=now)
    await record(conn, filled.events)
    return filled


def merged(catalogue: Mapping[str, domain.Product], changed: Sequence[domain.Product]) -> dict[str, domain.Product]:
    return {**catalogue, **{p.sku: p for p in changed}}


async def order_view(conn: Conn, *, order_id: str) -> schemas.Order | None:
    """The order with its lines, shipments, returns, billing state and history."""
    found = await store.order_view(conn, order_id=order_id)
    return None if found is None else view_of(found)


def view_of(found: store.OrderView) -> schemas.Order:
    return schemas.Order.of(
        found.order,
        shipments=[schemas.Shipment.model_validate(r) for r in found.shipments],
        returns=[schemas.ReturnOut.model_validate(r) for r in found.returns],
        invoices=[schemas.Invoice.model_validate(r) for r in found.invoices],
        history=[schemas.HistoryItem.model_validate(r) for r in found.history],
    )
