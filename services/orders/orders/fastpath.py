"""Placing an order whose every line is in stock, in two round trips and one commit.

The locking path (`workflow.run`) takes a transaction of some ten round trips: claim the Idempotency-Key, lock
the products, insert the order, its lines, its stock, its event and its history, store the response, commit.
Nearly every order is simply in stock, so this path (with or without an Idempotency-Key) first reads the products
without locks, decides and prices the order from that snapshot exactly as the locking path would
(`domain.place_order`), and then sends everything in one statement (`place_order_in_stock`, migration 0003), which
writes it only if each product still has the price and the free stock the order was priced with.

Whenever the snapshot cannot be trusted, or the answer is not a plain 201, it returns None and the caller takes the
locking path, which gives the authoritative answer: a line short of stock or unknown (the key may also hold a
stored answer to replay), a backorder, stock or a price that changed in between, a deadlock.
"""

from __future__ import annotations

import asyncpg
import orjson
from fastapi import Request
from fastapi.responses import Response

from backoffice import db, events, idempotency, outbox
from backoffice.auth import Principal
from backoffice.envelope import Envelope
from backoffice.errors import Conflict, DomainError
from orders import schemas, store, workflow

STALE = "BOS01"  # raised by place_order_in_stock when the snapshot no longer holds
_WAIT_MS = 10_000  # as long as the locking path waits for a request with the same key


async def place_in_stock(request: Request, *, principal: Principal, body: schemas.PlaceOrder) -> Response | None:
    """The 201 of an order placed in full from stock, or None when the locking path must decide."""
    key = idempotency.key_of(request)
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        catalogue = await store.read_products(conn, skus=[item.sku for item in body.items()])
        now = events.now()
        try:
            placed = workflow.place(body, catalogue=catalogue, now=now)
        except DomainError:
            return None
        order = placed.order
        if order.status != "confirmed" or any(line.reserved != line.quantity for line in order.lines):
            return None
        envelopes = [Envelope.wrap(e) for e in placed.events]
        view = workflow.new_order_view(order, recorded=envelopes, now=now)
        encoded = orjson.dumps(idempotency.encodable(view))
        columns = outbox.columns(envelopes)
        digest = (
            None if key is None else idempotency.request_hash(request.method, request.url.path, await request.body())
        )
        try:
            stored = await conn.fetchrow(
                "SELECT * FROM place_order_in_stock($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
                " $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)",
                principal.sub,
                key,
                digest,
                201,
                encoded,
                _WAIT_MS,
                *store.order_values(order, now=now),
                *columns,  # the outbox columns, each as an array
                [env.event.name for env in envelopes],
                [env.time for env in envelopes],
                [payload.decode() for payload in columns[5]],  # the history keeps each event's data: its payload
            )
        except asyncpg.LockNotAvailableError as exc:
            raise Conflict("a request with this Idempotency-Key is still in progress") from exc
        except asyncpg.DeadlockDetectedError:
            return None
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == STALE:
                return None
            raise
        assert stored is not None
        if not stored["placed"]:
            assert digest is not None
            return idempotency.replay(stored, digest)
        db.wrote_outbox(conn)
    return Response(encoded, status_code=201, media_type="application/json")
