"""Every SQL statement of the orders service; functions use the caller's connection and never commit."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from backoffice import events
from backoffice.db import Conn
from backoffice.envelope import Envelope
from orders import domain

# --- products ----------------------------------------------------------------------------------


def _product(row: asyncpg.Record) -> domain.Product:
    return domain.Product(
        sku=row["sku"],
        name=row["name"],
        unit_price_minor=row["unit_price_minor"],
        currency=row["currency"],
        on_hand=row["on_hand"],
        reserved=row["reserved"],
        reorder_level=row["reorder_level"],
    )


async def insert_product(conn: Conn, *, product: domain.Product, now: datetime) -> bool:
    """Add a product; False when its SKU already exists."""
    inserted = await conn.fetchval(
        "INSERT INTO products (sku, name, unit_price_minor, currency, on_hand, reserved, reorder_level,"
        " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $7)"
        " ON CONFLICT (sku) DO NOTHING RETURNING true",
        product.sku,
        product.name,
        product.unit_price_minor,
        product.currency,
        product.on_hand,
        product.reorder_level,
        now,
    )
    return bool(inserted)


async def get_product(conn: Conn, *, sku: str) -> domain.Product | None:
    row = await conn.fetchrow("SELECT * FROM products WHERE sku = $1", sku)
    return _product(row) if row else None


async def list_products(conn: Conn, *, after: str | None, limit: int) -> list[domain.Product]:
    """Products by SKU, after the SKU `after`, at most `limit`."""
    rows = await conn.fetch(
        "SELECT * FROM products WHERE ($1::text IS NULL OR sku > $1) ORDER BY sku LIMIT $2", after, limit
    )
    return [_product(r) for r in rows]


async def read_products(conn: Conn, *, skus: Iterable[str]) -> dict[str, domain.Product]:
    """The products of `skus` that exist, as of now, without locking them."""
    rows = await conn.fetch("SELECT * FROM products WHERE sku = ANY($1::text[])", list(set(skus)))
    return {r["sku"]: _product(r) for r in rows}


async def lock_products(conn: Conn, *, skus: Iterable[str]) -> dict[str, domain.Product]:
    """Lock the products of `skus` that exist, in SKU order (the fixed order every writer uses)."""
    rows = await conn.fetch(
        "SELECT * FROM products WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE", sorted(set(skus))
    )
    return {r["sku"]: _product(r) for r in rows}


async def save_stock(conn: Conn, *, products: Sequence[domain.Product], now: datetime) -> None:
    """Write on_hand and reserved of products the caller has locked."""
    await conn.executemany(
        "UPDATE products SET on_hand = $2, reserved = $3, updated_at = $4 WHERE sku = $1",
        [(p.sku, p.on_hand, p.reserved, now) for p in products],
    )


async def insert_adjustment(
    conn: Conn, *, adjustment_id: str, product: domain.Product, delta: int, reason: str, actor: str, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO stock_adjustments (id, sku, delta, reason, on_hand_after, actor, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        adjustment_id,
        product.sku,
        delta,
        reason,
        product.on_hand,
        actor,
        now,
    )


# --- orders ------------------------------------------------------------------------------------


def order_values(order: domain.Order, *, now: datetime) -> tuple[Any, ...]:
    """The columns of a new order (id ... updated_at) and its lines as arrays (sku, quantity, price, reserved): the
    parameters of `insert_order`, and the same ones of `place_order_in_stock`."""
    return (
        order.id,
        order.customer_id,
        order.currency,
        order.status,
        order.shipping_address,
        order.allow_backorder,
        order.total_minor,
        order.placed_at,
        order.confirmed_at,
        now,
        [li.sku for li in order.lines],
        [li.quantity for li in order.lines],
        [li.unit_price_minor for li in order.lines],
        [li.reserved for li in order.lines],
    )


async def insert_order(conn: Conn, *, order: domain.Order, now: datetime) -> None:
    """The order and its lines, in one statement."""
    await conn.execute(
        "WITH o AS (INSERT INTO orders (id, customer_id, currency, status, shipping_address, allow_backorder,"
        " total_minor, placed_at, confirmed_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " RETURNING id)"
        " INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_minor, reserved)"
        " SELECT o.id, l.n - 1, l.sku, l.quantity, l.price, l.reserved FROM o, unnest($11::text[], $12::int[],"
        " $13::bigint[], $14::int[]) WITH ORDINALITY AS l(sku, quantity, price, reserved, n)",
        *order_values(order, now=now),
    )


async def save_orders(conn: Conn, *, orders: Sequence[domain.Order], now: datetime) -> None:
    """Write the state and line quantities of orders the caller has locked."""
    await conn.executemany(
        "UPDATE orders SET status = $2, confirmed_at = $3, cancelled_at = $4, cancel_reason = $5, updated_at = $6"
        " WHERE id = $1",
        [(o.id, o.status, o.confirmed_at, o.cancelled_at, o.cancel_reason, now) for o in orders],
    )
    await conn.executemany(
        "UPDATE order_lines SET reserved = $3, shipped = $4, returned = $5, cancelled = $6"
        " WHERE order_id = $1 AND sku = $2",
        [(o.id, li.sku, li.reserved, li.shipped, li.returned, li.cancelled) for o in orders for li in o.lines],
    )


async def order_owner_and_skus(conn: Conn, *, order_id: str) -> tuple[str, list[str]] | None:
    """Without locking: the order's customer and its SKUs (which never change), or None."""
    row = await conn.fetchrow(
        "SELECT customer_id, array(SELECT sku FROM order_lines WHERE order_id = o.id ORDER BY sku) AS skus"
        " FROM orders o WHERE id = $1",
        order_id,
    )
    return (row["customer_id"], list(row["skus"])) if row else None


async def get_order(conn: Conn, *, order_id: str, for_update: bool = False) -> domain.Order | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT * FROM orders WHERE id = $1{lock}", order_id)
    if row is None:
        return None
    return (await _with_lines(conn, [row]))[0]


async def lock_backorders(conn: Conn, *, skus: Iterable[str]) -> list[domain.Order]:
    """Lock the backorders waiting for any of `skus`, oldest first."""
    rows = await conn.fetch(
        "SELECT o.* FROM orders o WHERE o.status = 'backordered' AND EXISTS (SELECT 1 FROM order_lines l"
        " WHERE l.order_id = o.id AND l.sku = ANY($1::text[]) AND l.reserved + l.shipped + l.cancelled < l.quantity)"
        " ORDER BY o.seq FOR UPDATE OF o",
        sorted(set(skus)),
    )
    return await _with_lines(conn, rows)


async def _with_lines(conn: Conn, rows: Sequence[asyncpg.Record]) -> list[domain.Order]:
    if not rows:
        return []
    lines = await conn.fetch(
        "SELECT * FROM order_lines WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, line_no", [r["id"] for r in rows]
    )
    by_order: dict[uuid.UUID, list[domain.Line]] = {}
    for li in lines:
        by_order.setdefault(li["order_id"], []).append(
            domain.Line(
                sku=li["sku"],
                quantity=li["quantity"],
                unit_price_minor=li["unit_price_minor"],
                reserved=li["reserved"],
                shipped=li["shipped"],
                returned=li["returned"],
                cancelled=li["cancelled"],
            )
        )
    return [
        domain.Order(
            id=str(r["id"]),
            customer_id=r["customer_id"],
            currency=r["currency"],
            status=r["status"],
            lines=tuple(by_order.get(r["id"], ())),
            placed_at=r["placed_at"],
            shipping_address=r["shipping_address"],
            allow_backorder=r["allow_backorder"],
            confirmed_at=r["confirmed_at"],
            cancelled_at=r["cancelled_at"],
            cancel_reason=r["cancel_reason"],
            updated_at=r["updated_at"],
        )
        for r in rows
    ]


async def list_orders(
    conn: Conn, *, customer_id: str | None, status: str | None, before_seq: int | None, limit: int
) -> list[asyncpg.Record]:
    """Order summaries newest first (keyset on `seq`), with their invoice counts."""
    where: list[str] = []
    args: list[Any] = []
    filters = (("o.customer_id = ${}", customer_id), ("o.status = ${}", status), ("o.seq < ${}", before_seq))
    for clause, value in filters:
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    args.append(limit)
    return list(
        await conn.fetch(
            "SELECT o.seq, o.id::text AS id, o.customer_id, o.currency, o.status, o.total_minor, o.placed_at,"
            " o.updated_at, b.invoices, b.paid FROM orders o CROSS JOIN LATERAL (SELECT count(*) AS invoices,"
            " count(i.paid_at) AS paid FROM order_invoices i WHERE i.order_id = o.id) b"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY o.seq DESC LIMIT ${len(args)}",
            *args,
        )
    )


async def insert_shipment(conn: Conn, *, shipment: events.OrderShipped) -> None:
    await conn.execute(
        "INSERT INTO shipments (id, order_id, lines, subtotal_minor, carrier, tracking_number, shipped_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        shipment.shipment_id,
        shipment.order_id,
        [line.model_dump() for line in shipment.lines],
        shipment.subtotal_minor,
        shipment.carrier,
        shipment.tracking_number,
        shipment.shipped_at,
    )


async def insert_return(conn: Conn, *, returned: events.OrderReturned) -> None:
    await conn.execute(
        "INSERT INTO returns (id, order_id, lines, subtotal_minor, reason, restocked, returned_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        returned.return_id,
        returned.order_id,
        [line.model_dump() for line in returned.lines],
        returned.subtotal_minor,
        returned.reason,
        returned.restocked,
        returned.returned_at,
    )


async def shipments(conn: Conn, *, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id::text AS id, lines, subtotal_minor, carrier, tracking_number, shipped_at FROM shipments"
        " WHERE order_id = $1 ORDER BY shipped_at, id",
        order_id,
    )
    return [dict(r) for r in rows]


async def returns(conn: Conn, *, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id::text AS id, lines, subtotal_minor, reason, restocked, returned_at FROM returns"
        " WHERE order_id = $1 ORDER BY returned_at, id",
        order_id,
    )
    return [dict(r) for r in rows]


# --- history -----------------------------------------------------------------------------------


async def append_history(conn: Conn, *, envelopes: Sequence[Envelope], order_id: str | None = None) -> None:
    """One history row per event, under `order_id` or else the event's own `order_id`."""
    await conn.executemany(
        "INSERT INTO order_events (event_id, order_id, type, occurred_at, data) VALUES ($1, $2, $3, $4, $5)",
        [
            (e.id, order_id or _order_of(e.event), e.event.name, e.time, e.event.model_dump(mode="json"))
            for e in envelopes
        ],
    )


def _order_of(event: events.Event) -> str:
    order_id = getattr(event, "order_id", None)  # every orders.events event has one
    if not isinstance(order_id, str):
        raise TypeError(f"{event.name} names no order")
    return order_id


async def history(conn: Conn, *, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT type, occurred_at, data FROM order_events WHERE order_id = $1 ORDER BY seq", order_id
    )
    return [dict(r) for r in rows]


# --- billing's view ----------------------------------------------------------------------------


async def order_exists(conn: Conn, *, order_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM orders WHERE id = $1", order_id))


async def order_of_invoice(conn: Conn, *, invoice_id: str) -> str | None:
    value = await conn.fetchval("SELECT order_id::text FROM order_invoices WHERE invoice_id = $1", invoice_id)
    return str(value) if value is not None else None


async def record_invoice(conn: Conn, *, order_id: str, invoice: events.InvoiceIssued) -> None:
    await conn.execute(
        "INSERT INTO order_invoices (invoice_id, order_id, number, currency, total_minor, issued_at)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (invoice_id) DO UPDATE"
        " SET number = EXCLUDED.number, total_minor = EXCLUDED.total_minor, issued_at = EXCLUDED.issued_at",
        invoice.invoice_id,
        order_id,
        invoice.number,
        invoice.currency,
        invoice.total_minor,
        invoice.issued_at,
    )


async def record_payment(conn: Conn, *, order_id: str, paid: events.InvoicePaid) -> None:
    await conn.execute(
        "INSERT INTO order_invoices (invoice_id, order_id, currency, total_minor, paid_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (invoice_id) DO UPDATE SET paid_at = EXCLUDED.paid_at",
        paid.invoice_id,
        order_id,
        paid.currency,
        paid.total_minor,
        paid.paid_at,
    )


async def invoices(conn: Conn, *, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT invoice_id, number, currency, total_minor, paid_at IS NOT NULL AS paid, issued_at, paid_at"
        " FROM order_invoices WHERE order_id = $1 ORDER BY issued_at NULLS LAST, invoice_id",
        order_id,
    )
    return [dict(r) for r in rows]
