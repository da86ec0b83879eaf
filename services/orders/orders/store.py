"""Every SQL statement of the orders service; functions use the caller's connection and never commit."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import asyncpg
import orjson

from backoffice import db, events, outbox
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
    """Write on_hand and reserved of products the caller has locked, in one statement."""
    if not products:
        return
    await conn.execute(
        "UPDATE products p SET on_hand = v.on_hand, reserved = v.reserved, updated_at = $4"
        " FROM unnest($1::text[], $2::int[], $3::int[]) AS v(sku, on_hand, reserved) WHERE p.sku = v.sku",
        [p.sku for p in products],
        [p.on_hand for p in products],
        [p.reserved for p in products],
        now,
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
    parameters of `insert_order` (`order_document`, flattened in the same order)."""
    columns, lines = order_document(order)
    return (
        *columns.values(),
        now,
        *([line[name] for line in lines] for name in ("sku", "quantity", "price", "reserved")),
    )


def order_document(order: domain.Order) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A new order's columns (id ... confirmed_at, in the table's order) and its lines (sku, quantity, price,
    reserved) as JSON objects: the "order" and "lines" of `place_order_in_stock(jsonb, ...)` (migration 0005)."""
    return {
        "id": order.id,
        "customer_id": order.customer_id,
        "currency": order.currency,
        "status": order.status,
        "shipping_address": order.shipping_address,
        "allow_backorder": order.allow_backorder,
        "total_minor": order.total_minor,
        "placed_at": order.placed_at,
        "confirmed_at": order.confirmed_at,
    }, [
        {"sku": li.sku, "quantity": li.quantity, "price": li.unit_price_minor, "reserved": li.reserved}
        for li in order.lines
    ]


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
    """Write the state and line quantities of orders the caller has locked, in one statement."""
    if not orders:
        return
    lines = [(o.id, li) for o in orders for li in o.lines]
    await conn.execute(
        "WITH saved AS (UPDATE orders o SET status = v.status, confirmed_at = v.confirmed_at,"
        " cancelled_at = v.cancelled_at, cancel_reason = v.cancel_reason, updated_at = $6"
        " FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[])"
        " AS v(id, status, confirmed_at, cancelled_at, cancel_reason) WHERE o.id = v.id)"
        " UPDATE order_lines l SET reserved = v.reserved, shipped = v.shipped, returned = v.returned,"
        " cancelled = v.cancelled FROM unnest($7::uuid[], $8::text[], $9::int[], $10::int[], $11::int[], $12::int[])"
        " AS v(order_id, sku, reserved, shipped, returned, cancelled) WHERE l.order_id = v.order_id AND l.sku = v.sku",
        [o.id for o in orders],
        [o.status for o in orders],
        [o.confirmed_at for o in orders],
        [o.cancelled_at for o in orders],
        [o.cancel_reason for o in orders],
        now,
        [order_id for order_id, _ in lines],
        [li.sku for _, li in lines],
        [li.reserved for _, li in lines],
        [li.shipped for _, li in lines],
        [li.returned for _, li in lines],
        [li.cancelled for _, li in lines],
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
    """The order with its lines. Locking, the lines are read by a second statement: one that waited for the lock
    must see the lines as the transaction it waited for left them, which a subquery of the locking statement (run
    on the snapshot taken before the wait) would not."""
    if for_update:
        row = await conn.fetchrow("SELECT * FROM orders WHERE id = $1 FOR UPDATE", order_id)
        return None if row is None else (await _with_lines(conn, [row]))[0]
    row = await conn.fetchrow(f"SELECT {_ORDER_WITH_LINES} FROM orders o WHERE o.id = $1", order_id)
    return None if row is None else _order(row, row["lines"])


_LINE_ROW = "ROW(l.sku, l.quantity, l.unit_price_minor, l.reserved, l.shipped, l.returned, l.cancelled)"
_ORDER_WITH_LINES = (
    f"o.*, array(SELECT {_LINE_ROW} FROM order_lines l WHERE l.order_id = o.id ORDER BY l.line_no) AS lines"
)


def _line(row: Sequence[Any]) -> domain.Line:
    sku, quantity, price, reserved, shipped, returned, cancelled = row
    return domain.Line(
        sku=sku,
        quantity=quantity,
        unit_price_minor=price,
        reserved=reserved,
        shipped=shipped,
        returned=returned,
        cancelled=cancelled,
    )


def _order(r: asyncpg.Record, lines: Iterable[Sequence[Any]]) -> domain.Order:
    return domain.Order(
        id=str(r["id"]),
        customer_id=r["customer_id"],
        currency=r["currency"],
        status=r["status"],
        lines=tuple(_line(li) for li in lines),
        placed_at=r["placed_at"],
        shipping_address=r["shipping_address"],
        allow_backorder=r["allow_backorder"],
        confirmed_at=r["confirmed_at"],
        cancelled_at=r["cancelled_at"],
        cancel_reason=r["cancel_reason"],
        updated_at=r["updated_at"],
    )


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
        f"SELECT l.order_id, {_LINE_ROW} AS line FROM order_lines l WHERE l.order_id = ANY($1::uuid[])"
        " ORDER BY l.order_id, l.line_no",
        [r["id"] for r in rows],
    )
    by_order: dict[uuid.UUID, list[Sequence[Any]]] = {}
    for li in lines:
        by_order.setdefault(li["order_id"], []).append(li["line"])
    return [_order(r, by_order.get(r["id"], ())) for r in rows]


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


@dataclass(frozen=True)
class OrderView:
    order: domain.Order
    shipments: list[dict[str, Any]]
    returns: list[dict[str, Any]]
    invoices: list[dict[str, Any]]
    history: list[dict[str, Any]]


# The order, its lines, shipments, returns, invoices and history (`_view`), of the orders named in the WHERE clause.
_VIEW = (
    f"SELECT {_ORDER_WITH_LINES},"
    " array(SELECT ROW(s.id::text, s.lines::text, s.subtotal_minor, s.carrier, s.tracking_number, s.shipped_at)"
    " FROM shipments s WHERE s.order_id = o.id ORDER BY s.shipped_at, s.id) AS shipments,"
    " array(SELECT ROW(r.id::text, r.lines::text, r.subtotal_minor, r.reason, r.restocked, r.returned_at)"
    " FROM returns r WHERE r.order_id = o.id ORDER BY r.returned_at, r.id) AS returns,"
    " array(SELECT ROW(i.invoice_id, i.number, i.currency, i.total_minor, i.paid_at IS NOT NULL, i.issued_at,"
    " i.paid_at) FROM order_invoices i WHERE i.order_id = o.id ORDER BY i.issued_at NULLS LAST, i.invoice_id)"
    " AS invoices,"
    " array(SELECT ROW(e.type, e.occurred_at, e.data::text) FROM order_events e WHERE e.order_id = o.id"
    " ORDER BY e.seq) AS history"
    " FROM orders o"
)


async def order_view(conn: Conn, *, order_id: str) -> OrderView | None:
    """The order, its lines, shipments, returns, invoices and history, in one statement (one snapshot)."""
    row = await conn.fetchrow(f"{_VIEW} WHERE o.id = $1", order_id)
    return None if row is None else _view(row)


async def order_views(conn: Conn, *, order_ids: Sequence[str]) -> dict[str, OrderView]:
    """`order_view` of each of these orders that exists, by id, in one statement (one snapshot for all).

    One order is read by its key (`order_view`'s statement): PostgreSQL keeps one plan for it. The statement for a
    list is planned again on every execution, as its generic plan reckons with ten ids and so looks dearer than a
    plan for the few of the call; under a moderate load most batches (`fastpath.ViewReads`) are one order. The
    figures are in the README (Design choices, "Plans kept, not made again")."""
    if len(order_ids) == 1:
        view = await order_view(conn, order_id=order_ids[0])
        return {} if view is None else {view.order.id: view}
    rows = await conn.fetch(f"{_VIEW} WHERE o.id = ANY($1::uuid[])", list(order_ids))
    return {str(row["id"]): _view(row) for row in rows}


def _view(row: asyncpg.Record) -> OrderView:
    return OrderView(
        order=_order(row, row["lines"]),
        shipments=[
            dict(zip(_SHIPMENT, (sid, _json(lines), *rest), strict=True)) for sid, lines, *rest in row["shipments"]
        ],
        returns=[dict(zip(_RETURN, (rid, _json(lines), *rest), strict=True)) for rid, lines, *rest in row["returns"]],
        invoices=[dict(zip(_INVOICE, invoice, strict=True)) for invoice in row["invoices"]],
        history=[{"type": kind, "occurred_at": at, "data": _json(data)} for kind, at, data in row["history"]],
    )


_SHIPMENT = ("id", "lines", "subtotal_minor", "carrier", "tracking_number", "shipped_at")
_RETURN = ("id", "lines", "subtotal_minor", "reason", "restocked", "returned_at")
_INVOICE = ("invoice_id", "number", "currency", "total_minor", "paid", "issued_at", "paid_at")


def _json(value: str) -> Any:
    """A jsonb value inside an anonymous row, sent as text (`::text`): the connection's jsonb codec, which reads
    text, would be handed the binary form inside a record."""
    return orjson.loads(value)


# --- history -----------------------------------------------------------------------------------


async def record_events(conn: Conn, *, envelopes: Sequence[Envelope]) -> None:
    """Publish the events (outbox) and add each to its order's history, in one statement."""
    if not envelopes:
        return
    published = outbox.columns(envelopes)
    await conn.execute(
        f"WITH published AS ({outbox.insert_sql(1)}) {_insert_history(7)}",
        *published,
        *_history_columns(envelopes, data=[payload.decode() for payload in published[5]]),
    )
    db.wrote_outbox(conn)


def _insert_history(first: int) -> str:
    """An INSERT of history rows, in order, from the five arrays of `_history_columns` at $first.. $first+4."""
    p = db.placeholders(first, 5)
    return (
        "INSERT INTO order_events (event_id, order_id, type, occurred_at, data)"
        " SELECT h.id, h.order_id, h.type, h.at, h.data::jsonb"
        f" FROM unnest({p[0]}::uuid[], {p[1]}::uuid[], {p[2]}::text[], {p[3]}::timestamptz[], {p[4]}::text[])"
        " WITH ORDINALITY AS h(id, order_id, type, at, data, n) ORDER BY h.n"
    )


def _history_columns(envelopes: Sequence[Envelope], *, data: list[str]) -> list[list[Any]]:
    """The arrays of `_insert_history`: each event under its own order; `data`, each event's JSON, is taken from
    its outbox payload, encoded already."""
    return [
        [e.id for e in envelopes],
        [_order_of(e.event) for e in envelopes],
        [e.event.name for e in envelopes],
        [e.time for e in envelopes],
        data,
    ]


def _order_of(event: events.Event) -> str:
    order_id = getattr(event, "order_id", None)  # every orders.events event has one
    if not isinstance(order_id, str):
        raise TypeError(f"{event.name} names no order")
    return order_id


# --- billing's view ----------------------------------------------------------------------------


def _known_uuid(value: str | None) -> str | None:
    """`value` in the canonical form of a UUID, or None when it is none (any other id cannot be one of our orders)."""
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _insert_history_of_o(first: int) -> str:
    """The INSERT of one history row under the order `o` (a CTE) unless it is null, from $first.. $first+3 (as
    `_history_row` gives them), returning the order's id."""
    p = db.placeholders(first, 4)
    return (
        " INSERT INTO order_events (event_id, order_id, type, occurred_at, data)"
        f" SELECT {p[0]}, o.id, {p[1]}, {p[2]}, {p[3]}::jsonb FROM o WHERE o.id IS NOT NULL RETURNING order_id::text"
    )


def _history_row(envelope: Envelope) -> tuple[Any, ...]:
    """The event's history row: the parameters of `_insert_history_of_o`."""
    return (
        envelope.id,
        envelope.event.name,
        envelope.time,
        envelope.event.model_dump(mode="json"),  # the connection's jsonb codec encodes it
    )


async def record_invoice(conn: Conn, *, order_id: str | None, envelope: Envelope) -> str | None:
    """When `order_id` is one of our orders: the issued invoice under it and its history row, and the order's id;
    None (nothing written) otherwise (`record_invoices` of one)."""
    (recorded,) = await record_invoices(conn, invoices=[(order_id, envelope)])
    return recorded


async def record_invoices(conn: Conn, *, invoices: Sequence[tuple[str | None, Envelope]]) -> list[str | None]:
    """`record_invoice` of each (order id, `InvoiceIssued`) in turn, with the same outcome, in one statement for a
    run of distinct invoices (a run that names an invoice again is cut there, so the later issue is applied after
    the earlier one, as it would be on its own)."""
    recorded: list[str | None] = []
    run: list[tuple[str | None, Envelope]] = []
    seen: set[str] = set()
    for order_id, envelope in invoices:
        invoice = envelope.event
        assert isinstance(invoice, events.InvoiceIssued)
        if invoice.invoice_id in seen:
            recorded += await _record_distinct_invoices(conn, run)
            run, seen = [], set()
        run.append((order_id, envelope))
        seen.add(invoice.invoice_id)
    return recorded + await _record_distinct_invoices(conn, run)


async def _record_distinct_invoices(conn: Conn, run: list[tuple[str | None, Envelope]]) -> list[str | None]:
    if not run:
        return []
    issued = [cast(events.InvoiceIssued, envelope.event) for _, envelope in run]
    rows = await conn.fetch(
        "WITH i AS (SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],"
        " $6::timestamptz[], $7::uuid[], $8::text[], $9::timestamptz[], $10::jsonb[]) WITH ORDINALITY"
        " AS i(invoice_id, order_id, number, currency, total_minor, issued_at, event_id, type, at, data, n)),"
        " o AS (SELECT i.*, orders.id AS known FROM i JOIN orders ON orders.id = i.order_id AND orders.id = ANY($2)),"
        " invoice AS (INSERT INTO order_invoices (invoice_id, order_id, number, currency, total_minor, issued_at)"
        " SELECT invoice_id, known, number, currency, total_minor, issued_at FROM o ORDER BY n"
        " ON CONFLICT (invoice_id) DO UPDATE"
        " SET number = EXCLUDED.number, total_minor = EXCLUDED.total_minor, issued_at = EXCLUDED.issued_at)"
        " INSERT INTO order_events (event_id, order_id, type, occurred_at, data)"
        " SELECT event_id, known, type, at, data FROM o ORDER BY n RETURNING event_id::text, order_id::text",
        [invoice.invoice_id for invoice in issued],
        [_known_uuid(order_id) for order_id, _ in run],
        [invoice.number for invoice in issued],
        [invoice.currency for invoice in issued],
        [invoice.total_minor for invoice in issued],
        [invoice.issued_at for invoice in issued],
        *map(list, zip(*(_history_row(envelope) for _, envelope in run), strict=True)),  # as `_history_row` gives
    )
    orders_of = {event_id: order_id for event_id, order_id in rows}
    return [orders_of.get(str(uuid.UUID(envelope.id))) for _, envelope in run]


async def record_payment(conn: Conn, *, order_id: str | None, envelope: Envelope) -> str | None:
    """The payment under its order and its history row, in one statement, and the order's id: `order_id` when it
    is one of ours, else the order of the invoice as issued before; None (nothing written) when there is neither."""
    paid = envelope.event
    assert isinstance(paid, events.InvoicePaid)
    value = await conn.fetchval(
        "WITH o AS (SELECT coalesce((SELECT id FROM orders WHERE id = $2),"
        " (SELECT order_id FROM order_invoices WHERE invoice_id = $1)) AS id),"
        " payment AS (INSERT INTO order_invoices (invoice_id, order_id, currency, total_minor, paid_at)"
        " SELECT $1, o.id, $3, $4, $5 FROM o WHERE o.id IS NOT NULL"
        " ON CONFLICT (invoice_id) DO UPDATE SET paid_at = EXCLUDED.paid_at)" + _insert_history_of_o(6),
        paid.invoice_id,
        _known_uuid(order_id),
        paid.currency,
        paid.total_minor,
        paid.paid_at,
        *_history_row(envelope),
    )
    return None if value is None else str(value)
