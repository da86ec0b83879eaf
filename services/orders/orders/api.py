"""Routes of the orders API: the catalogue and its stock, orders and their fulfilment."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from backoffice import events, express
from backoffice.auth import Principal, require
from backoffice.db import Conn
from backoffice.errors import Conflict, NotFound, Unprocessable
from backoffice.ids import new_id
from backoffice.pagination import Cursor, Limit, Page, decode_cursor, page
from orders import domain, fastpath, schemas, store, workflow

Reader = Annotated[Principal, Depends(require("orders:read"))]
Writer = Annotated[Principal, Depends(require("orders:write"))]
StaffWriter = Annotated[Principal, Depends(require("orders:write", staff_only=True))]
Stocker = Annotated[Principal, Depends(require("inventory:write", staff_only=True))]
CatalogueReader = Annotated[Principal, Depends(require("orders:read", "inventory:write"))]
SkuPath = Annotated[str, Path(min_length=1, max_length=64)]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No valid bearer token"},
    403: {"description": "The token lacks the scope, or a customer asks for a staff action"},
    404: {"description": "Not found (or another customer's)"},
    409: {"description": "The current state forbids this; `detail` says why"},
    422: {"description": "Invalid input; `errors` names each field"},
}

router = APIRouter(responses=PROBLEMS)


E = TypeVar("E", bound=events.Event)


def _the(kind: type[E], outcome: domain.Outcome) -> E:
    """The one event of `kind` an outcome caused."""
    return next(e for e in outcome.events if isinstance(e, kind))


async def _view(conn: Conn, order_id: uuid.UUID | str) -> schemas.Order:
    view = await workflow.order_view(conn, order_id=str(order_id))
    if view is None:
        raise NotFound("order not found")
    return view


# --- catalogue and stock -----------------------------------------------------------------------


@router.post("/products", status_code=201, response_model=schemas.Product, tags=["inventory"])
async def create_product(body: schemas.CreateProduct, request: Request, principal: Stocker) -> Response:
    """Add a product to the catalogue with its opening stock."""
    product = domain.Product(
        sku=body.sku,
        name=body.name,
        unit_price_minor=body.unit_price_minor,
        currency=body.currency,
        on_hand=body.on_hand,
        reorder_level=body.reorder_level,
    )

    async def operation(conn: Conn) -> tuple[int, Any]:
        if not await store.insert_product(conn, product=product, now=events.now()):
            raise Conflict(f"a product with sku {body.sku} already exists")
        return 201, schemas.Product.of(product)

    return await workflow.run(request, principal=principal, operation=operation)


@router.get("/products", response_model=Page[schemas.Product], tags=["inventory"])
async def list_products(
    request: Request, principal: CatalogueReader, limit: Limit = 50, cursor: Cursor = None
) -> Page[schemas.Product]:
    """The catalogue by SKU, with stock levels."""
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after[0], str):
        raise Unprocessable("cursor is not valid", field="query.cursor")
    async with request.app.state.pool.acquire() as conn:
        found = await store.list_products(conn, after=after[0] if after else None, limit=limit + 1)
    return page([schemas.Product.of(p) for p in found], limit=limit, key=lambda p: [p.sku])


@router.get("/products/{sku}", response_model=schemas.Product, tags=["inventory"])
async def get_product(sku: SkuPath, request: Request, principal: CatalogueReader) -> schemas.Product:
    """A product with `on_hand`, `reserved` and `available`."""
    async with request.app.state.pool.acquire() as conn:
        product = await store.get_product(conn, sku=sku)
    if product is None:
        raise NotFound(f"product {sku} not found")
    return schemas.Product.of(product)


@router.post(
    "/products/{sku}/stock-adjustments", status_code=201, response_model=schemas.Adjustment, tags=["inventory"]
)
async def adjust_stock(sku: SkuPath, body: schemas.StockAdjustment, request: Request, principal: Stocker) -> Response:
    """A receipt or a count correction; freed stock goes to backorders, oldest first."""

    async def operation(conn: Conn) -> tuple[int, Any]:
        now = events.now()
        product = (await store.lock_products(conn, skus=[sku])).get(sku)
        if product is None:
            raise NotFound(f"product {sku} not found")
        adjusted = domain.adjust_stock(product, delta=body.delta)
        await store.save_stock(conn, products=[adjusted], now=now)
        adjustment_id = new_id()
        await store.insert_adjustment(
            conn,
            adjustment_id=adjustment_id,
            product=adjusted,
            delta=body.delta,
            reason=body.reason,
            actor=principal.sub,
            now=now,
        )
        filled = await workflow.give_to_backorders(conn, stock={sku: adjusted}, now=now)
        final = workflow.merged({sku: adjusted}, filled.products)[sku]
        return 201, schemas.Adjustment(
            id=adjustment_id,
            sku=sku,
            delta=body.delta,
            reason=body.reason,
            created_at=now,
            product=schemas.Product.of(final),
            confirmed_orders=[o.id for o in filled.orders if o.status == "confirmed"],
        )

    return await workflow.run(request, principal=principal, operation=operation)


# --- orders ------------------------------------------------------------------------------------


@router.post("/orders", status_code=201, response_model=schemas.Order, tags=["orders"])
async def place_order(body: schemas.PlaceOrder, request: Request, principal: Writer) -> Response:
    """Price the lines from the catalogue and reserve their stock; short lines are a 409 unless backordered."""
    principal.ensure_visible(body.customer_id, what="customer")
    if not express.tried(request):  # else the express lane has just found the fast path does not apply
        placed = await fastpath.place_in_stock(request, principal=principal, body=body)
        if placed is not None:
            return placed

    async def operation(conn: Conn) -> tuple[int, Any]:
        now = events.now()
        catalogue = await store.lock_products(conn, skus=[item.sku for item in body.items()])
        placed = workflow.place(body, catalogue=catalogue, now=now)
        await store.insert_order(conn, order=placed.order, now=now)
        await store.save_stock(conn, products=placed.products, now=now)
        recorded = await workflow.record(conn, placed.events)
        return 201, workflow.new_order_view(placed.order, recorded=recorded, now=now)

    return await workflow.run(request, principal=principal, operation=operation)


@router.get("/orders", response_model=Page[schemas.OrderSummary], tags=["orders"])
async def list_orders(
    request: Request,
    principal: Reader,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    status: schemas.Status | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.OrderSummary]:
    """Orders newest first, by customer and status; a customer sees only their own."""
    before = decode_cursor(cursor)
    if before is not None and not isinstance(before[0], int):
        raise Unprocessable("cursor is not valid", field="query.cursor")
    async with request.app.state.pool.acquire() as conn:
        rows = await store.list_orders(
            conn,
            customer_id=principal.scope_customer(customer_id),
            status=status,
            before_seq=before[0] if before else None,
            limit=limit + 1,
        )
    summaries = [
        (
            row["seq"],
            schemas.OrderSummary(
                id=row["id"],
                customer_id=row["customer_id"],
                currency=row["currency"],
                status=row["status"],
                total_minor=row["total_minor"],
                placed_at=row["placed_at"],
                updated_at=row["updated_at"],
                billing_status=domain.billing_status(invoices=row["invoices"], paid=row["paid"]),  # type: ignore[arg-type]
            ),
        )
        for row in rows
    ]
    found = page(summaries, limit=limit, key=lambda pair: [pair[0]])
    return Page[schemas.OrderSummary](items=[s for _, s in found.items], next_cursor=found.next_cursor)


@router.get("/orders/{order_id}", response_model=schemas.Order, tags=["orders"])
async def get_order(order_id: uuid.UUID, request: Request, principal: Reader) -> schemas.Order:
    """The order: lines (ordered, reserved, shipped, returned), shipments, returns, billing state and history."""
    async with request.app.state.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        view = await workflow.order_view(conn, order_id=str(order_id))
    if view is None:
        raise NotFound("order not found")
    principal.ensure_visible(view.customer_id, what="order")
    return view


@router.post("/orders/{order_id}/shipments", status_code=201, response_model=schemas.Order, tags=["orders"])
async def ship_order(order_id: uuid.UUID, body: schemas.Ship, request: Request, principal: StaffWriter) -> Response:
    """Ship some or all of the reserved quantities; answers the order with its new shipment."""
    if not express.tried(request):  # else the express lane has just found the fast path does not apply
        shipped = await fastpath.ship(request, principal=principal, order_id=str(order_id), body=body)
        if shipped is not None:
            return shipped

    async def operation(conn: Conn) -> tuple[int, Any]:
        now = events.now()
        outcome, _ = await workflow.change_order(
            conn,
            order_id=str(order_id),
            decide=lambda order, catalogue: domain.ship(
                order,
                shipment_id=new_id(),
                items=body.items(),
                catalogue=catalogue,
                carrier=body.carrier,
                tracking_number=body.tracking_number,
                now=now,
            ),
            now=now,
        )
        await store.insert_shipment(conn, shipment=_the(events.OrderShipped, outcome))
        return 201, await _view(conn, order_id)

    return await workflow.run(request, principal=principal, operation=operation)


@router.post("/orders/{order_id}/cancel", response_model=schemas.Order, tags=["orders"])
async def cancel_order(order_id: uuid.UUID, body: schemas.Cancel, request: Request, principal: StaffWriter) -> Response:
    """Cancel everything not yet shipped and release its reservation (which may confirm waiting backorders)."""

    async def operation(conn: Conn) -> tuple[int, Any]:
        now = events.now()
        _, stock = await workflow.change_order(
            conn,
            order_id=str(order_id),
            decide=lambda order, catalogue: domain.cancel(order, reason=body.reason, catalogue=catalogue, now=now),
            now=now,
        )
        await workflow.give_to_backorders(conn, stock=stock, now=now)
        return 200, await _view(conn, order_id)

    return await workflow.run(request, principal=principal, operation=operation)


@router.post("/orders/{order_id}/returns", status_code=201, response_model=schemas.Order, tags=["orders"])
async def return_items(order_id: uuid.UUID, body: schemas.Return, request: Request, principal: StaffWriter) -> Response:
    """Take back shipped quantities, restocking them when asked; answers the order with its new return."""

    async def operation(conn: Conn) -> tuple[int, Any]:
        now = events.now()
        outcome, stock = await workflow.change_order(
            conn,
            order_id=str(order_id),
            decide=lambda order, catalogue: domain.return_items(
                order,
                return_id=new_id(),
                items=body.items(),
                reason=body.reason,
                restock=body.restock,
                catalogue=catalogue,
                now=now,
            ),
            now=now,
        )
        await store.insert_return(conn, returned=_the(events.OrderReturned, outcome))
        if body.restock:
            await workflow.give_to_backorders(conn, stock=stock, now=now)
        return 201, await _view(conn, order_id)

    return await workflow.run(request, principal=principal, operation=operation)
