"""Placing an order whose every line is in stock, and shipping an order, in two round trips and one commit.

The locking path (`workflow.run`) takes a transaction of some ten round trips: claim the Idempotency-Key, lock
the products, insert the order, its lines, its stock, its event and its history, store the response, commit.
Nearly every order is simply in stock, so this path (with or without an Idempotency-Key) first reads the products
without locks (or recalls them from a read a few seconds old: `Catalogue`), decides and prices the order from that
snapshot exactly as the locking path would (`domain.place_order`), and then sends everything in one statement
(`place_order_in_stock`, migrations 0003 and 0005), which writes it only if each product still has the price and the
free stock the order was priced with.

Shipping is the same: the order's view is read without locks (with the other shipments of the moment:
`ViewReads`), the shipment decided from it (`domain.shipment`) and the answer built from both, and one statement
(`ship_order_from_snapshot`, migrations 0004 and 0005) writes it only if the order still has the status, the line
quantities and the history it was read with.

Both statements take their arguments as one JSON document: a call with some thirty parameters cost this process
about twice the CPU of a call with one.

Whenever the snapshot cannot be trusted, or the answer is not a plain 201, these return None and the caller takes
the locking path, which gives the authoritative answer: a line short of stock or unknown, an order not found or
not in a state to ship (the key may also hold a stored answer to replay), a backorder, stock, a price or an order
that changed in between, a deadlock.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import structlog
from fastapi import Request
from fastapi.responses import Response
from prometheus_client import Histogram
from pydantic import ValidationError

from backoffice import auth, db, events, idempotency, outbox
from backoffice.auth import Principal
from backoffice.envelope import Envelope
from backoffice.errors import Conflict, DomainError, Unavailable
from backoffice.ids import new_id
from orders import domain, schemas, store, workflow

log = structlog.get_logger("orders.fastpath")

GROUP_SIZE = Histogram(
    "orders_group_commit_writes",
    "In-stock orders (kind place) or shipments (kind ship) written per group commit",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 24),
)

STALE = "BOS01"  # raised by place_order_in_stock and ship_order_from_snapshot when the snapshot no longer holds
_WAIT_MS = 10_000  # as long as the locking path waits for a request with the same key


async def place_express(request: Request) -> Response | None:
    """`POST /orders` in the express lane (`backoffice.express`): the 201 of an order placed in full from stock by
    a caller the route would let place it, with a body the route would accept; None for anything else, which the
    route then answers."""
    try:
        principal = auth.principal_of(request, "orders:write")  # as the route's `Writer` dependency
    except DomainError:
        return None
    try:
        body = schemas.PlaceOrder.model_validate_json(await request.body())
    except ValidationError:
        return None
    if not principal.can_see(body.customer_id):
        return None
    return await place_in_stock(request, principal=principal, body=body)


async def place_in_stock(request: Request, *, principal: Principal, body: schemas.PlaceOrder) -> Response | None:
    """The 201 of an order placed in full from stock, or None when the locking path must decide."""
    key = idempotency.key_of(request)
    pool: asyncpg.Pool = request.app.state.pool
    skus = [line.sku for line in body.lines]
    hints = Catalogue.of(request.app)
    catalogue = hints.recall(skus)
    if catalogue is None:
        async with pool.acquire() as conn:
            catalogue = await store.read_products(conn, skus=skus)
        hints.remember(catalogue)
    now = events.now()
    try:
        placed = workflow.place(body, catalogue=catalogue, now=now)
    except DomainError:
        hints.forget(skus)
        return None
    order = placed.order
    if order.status != "confirmed" or any(line.reserved != line.quantity for line in order.lines):
        hints.forget(skus)
        return None
    envelopes = [Envelope.wrap(e) for e in placed.events]
    view = workflow.new_order_view(order, recorded=envelopes, now=now)
    columns, lines = store.order_document(order)
    answer = await _write(
        pool,
        request,
        principal=principal,
        key=key,
        kind="place",
        view=view,
        document={"order": columns, "now": now, "lines": lines},
        envelopes=envelopes,
    )
    if answer is None:
        hints.forget(skus)
    return answer


_T = TypeVar("_T")


def _of_app(app: Any, name: str, make: Callable[[], _T]) -> _T:
    """The app's `name` in its state, made on first use: one per app, since each app has its own database."""
    found: _T | None = getattr(app.state, name, None)
    if found is None:
        found = make()
        setattr(app.state, name, found)
    return found


class Catalogue:
    """The products the in-stock path last read, kept for a few seconds to spare the next order the read.

    Only ever a hint: `place_order_in_stock` writes an order only if each product still has the price and the free
    stock it was priced with. A product whose hint was wrong (the write refused it, or the hint said there was not
    enough stock) is forgotten, so the next order reads it afresh and the locking path decides this one.
    """

    TTL_S = 5.0
    MAX_PRODUCTS = 10_000

    def __init__(self) -> None:
        self._products: dict[str, tuple[domain.Product, float]] = {}

    @classmethod
    def of(cls, app: Any) -> Catalogue:
        """The app's catalogue hints."""
        return _of_app(app, "catalogue_hints", cls)

    def recall(self, skus: list[str]) -> dict[str, domain.Product] | None:
        """Every one of `skus`, if each was read less than TTL_S ago; else None."""
        now = time.monotonic()
        found = {}
        for sku in skus:
            known = self._products.get(sku)
            if known is None or now - known[1] > self.TTL_S:
                return None
            found[sku] = known[0]
        return found

    def remember(self, products: dict[str, domain.Product]) -> None:
        if len(self._products) + len(products) > self.MAX_PRODUCTS:
            self._products.clear()
        now = time.monotonic()
        for sku, product in products.items():
            self._products[sku] = (product, now)

    def forget(self, skus: list[str]) -> None:
        for sku in skus:
            self._products.pop(sku, None)


async def ship_express(request: Request) -> Response | None:
    """`POST /orders/{order_id}/shipments` in the express lane: the 201 of a shipment decided from the order as read
    without locks, for a caller and a body the route would accept; None for anything else, which the route answers.
    The order id must be a UUID in its canonical form (the route accepts others too, and answers them itself)."""
    order_id = request.path_params["order_id"]
    try:
        if str(uuid.UUID(order_id)) != order_id:
            return None
        principal = auth.principal_of(request, "orders:write", staff_only=True)  # as the route's `StaffWriter`
        body = schemas.Ship.model_validate_json(await request.body())
    except (ValueError, DomainError):  # a pydantic ValidationError is a ValueError
        return None
    return await ship(request, principal=principal, order_id=order_id, body=body)


async def ship(request: Request, *, principal: Principal, order_id: str, body: schemas.Ship) -> Response | None:
    """The 201 of a shipment decided from the order as read without locks, or None when the locking path must
    decide."""
    key = idempotency.key_of(request)
    pool: asyncpg.Pool = request.app.state.pool
    found = await ViewReads.of(request.app).read(pool, order_id)
    if found is None:
        return None
    read = found.order
    now = events.now()
    try:
        order, shipped = domain.shipment(
            read,
            shipment_id=new_id(),
            items=body.items(),
            carrier=body.carrier,
            tracking_number=body.tracking_number,
            now=now,
        )
    except DomainError:
        return None
    envelopes = [Envelope.wrap(shipped)]
    view = workflow.shipped_view(found, order=order, shipment=shipped, recorded=envelopes, now=now)
    return await _write(
        pool,
        request,
        principal=principal,
        key=key,
        kind="ship",
        view=view,
        document={
            "order_id": order_id,
            "read_status": read.status,
            "read_lines": [
                " ".join(map(str, (li.sku, li.reserved, li.shipped, li.returned, li.cancelled))) for li in read.lines
            ],
            "read_history": len(found.history),
            "status": order.status,
            "now": now,
            "lines": [{"sku": line.sku, "quantity": line.quantity} for line in shipped.lines],
            "shipment": {
                "id": shipped.shipment_id,
                "lines": [line.model_dump() for line in shipped.lines],
                "subtotal_minor": shipped.subtotal_minor,
                "carrier": shipped.carrier,
                "tracking_number": shipped.tracking_number,
            },
        },
        envelopes=envelopes,
    )


async def _write(
    pool: asyncpg.Pool,
    request: Request,
    *,
    principal: Principal,
    key: str | None,
    kind: str,
    view: schemas.Order,
    document: dict[str, Any],
    envelopes: list[Envelope],
) -> Response | None:
    """Write `document` of `kind` ('place' or 'ship', see `_SINGLE`), completed with the request's caller, key and
    hash and the events (each one's outbox row, and the type and time of its history row), then the answer and the
    events' payloads: the 201 it wrote, the answer it found stored under the key, or None when the snapshot no
    longer held.

    With group commit on, the write is made with the other orders of the moment, in one transaction
    (`GroupCommit`); an order the group could not write for a reason of its own (its key held by a request in
    flight, anything unexpected) is then written on its own, as without a group."""
    encoded = idempotency.encoded(view)
    digest = None if key is None else idempotency.digest_of(request, await request.body())
    recorded, payloads = [], []
    for env in envelopes:
        row, payload = outbox.document_of(env)
        row["type"], row["at"] = env.event.name, env.time
        recorded.append(row)
        payloads.append(payload)
    document.update(
        principal=principal.sub, key=key, request_hash=digest, status_code=201, wait_ms=_WAIT_MS, events=recorded
    )
    group = GroupCommit.of(request.app, kind)
    outcome, stored = "retry", None
    if group is not None:
        outcome, stored = await group.submit(pool, document, encoded, payloads)
    if outcome not in ("written", "stored", "stale", "deadlock"):  # on its own, waiting as long as a key may take
        outcome, stored = await _write_single(pool, kind, document, encoded, payloads)
        if outcome == "busy":
            raise Conflict("a request with this Idempotency-Key is still in progress")
    if outcome == "stored":
        assert stored is not None and digest is not None
        return idempotency.replay(stored, digest)
    if outcome == "written":
        return Response(encoded, status_code=201, media_type="application/json")
    return None  # stale or deadlock: the locking path decides


# The single function of each kind of snapshot write (migration 0005).
_SINGLE = {"place": "place_order_in_stock", "ship": "ship_order_from_snapshot"}


async def _write_single(
    pool: asyncpg.Pool, kind: str, document: dict[str, Any], answer: bytes, payloads: list[bytes]
) -> tuple[str, asyncpg.Record | None]:
    """One write by its single function, in its own transaction: 'written'; 'stored', with the answer stored under
    its key; 'stale', 'deadlock', or 'busy' (its key held by a request in flight for longer than the document's
    `wait_ms`). Any other error is raised."""
    async with pool.acquire() as conn:
        try:
            row = await conn.fetchrow(
                f"SELECT * FROM {_SINGLE[kind]}($1::jsonb, $2::bytea, $3::bytea[])", document, answer, payloads
            )
        except asyncpg.DeadlockDetectedError:
            return "deadlock", None
        except asyncpg.LockNotAvailableError:
            return "busy", None
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == STALE:
                return "stale", None
            raise
        assert row is not None
        if not row[0]:
            return "stored", row
        db.wrote_outbox(conn)
    return "written", None


class ViewReads:
    """The orders that the shipments of the moment ship, read together: one statement and one round trip
    (`store.order_views`) for the reads asked while the previous batch was being read, up to MAX_ORDERS.

    Under a trickle a batch is one order, read as before. Under load each shipment's read was a round trip of its
    own: a statement to send (a write to PostgreSQL's socket, which wakes its backend), a connection taken from the
    pool and given back, and the statement's start-up in the backend, in the one process that every order of the
    pipeline passes through twice. Each view of a batch comes from the same snapshot, as each came from its own;
    the write checks, as ever, that the order has not changed since.

    A batch the database could not read fails each of its reads with that error, as the read alone would have.
    """

    MAX_ORDERS = 64

    def __init__(self) -> None:
        self._waiting: list[tuple[str, asyncio.Future[store.OrderView | None]]] = []
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, app: Any) -> ViewReads:
        """The app's batched reads."""
        return _of_app(app, "view_reads", cls)

    async def read(self, pool: asyncpg.Pool, order_id: str) -> store.OrderView | None:
        """The order's view as `store.order_view` reads it (None when there is no such order), read with the others
        of the moment."""
        found: asyncio.Future[store.OrderView | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((order_id, found))
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_all(pool), name="orders-view-reads")
        return await found

    async def _read_all(self, pool: asyncpg.Pool) -> None:
        batch: list[tuple[str, asyncio.Future[store.OrderView | None]]] = []
        try:
            while self._waiting:
                batch = [(i, f) for i, f in self._waiting[: self.MAX_ORDERS] if not f.done()]  # not given up on
                del self._waiting[: self.MAX_ORDERS]
                if not batch:
                    continue
                try:
                    async with pool.acquire() as conn:
                        views = await store.order_views(conn, order_ids=sorted({i for i, _ in batch}))
                except Exception as exc:  # noqa: BLE001 - each read fails as it would have alone
                    for _, found in batch:
                        if not found.done():
                            found.set_exception(exc)
                    batch = []
                    continue
                for order_id, found in batch:
                    if not found.done():
                        found.set_result(views.get(order_id))
                batch = []
        finally:
            self._reader = None
            for _, found in [*batch, *self._waiting]:  # cancelled: the service is stopping
                if not found.done():
                    found.set_exception(Unavailable("the service is stopping; try again"))
            self._waiting.clear()


# A group's write (migrations 0006 to 0009): one row per write of the group, in order.
WRITE_SNAPSHOTS = "SELECT * FROM write_snapshots($1, $2::jsonb, $3::bytea[], $4::bytea[], $5::integer[])"


_Outcomes = list[tuple[str, asyncpg.Record | None]]  # each write's outcome, and the answer stored under its key


@dataclass(eq=False)
class _Waiting:
    document: dict[str, Any]
    answer: bytes
    payloads: list[bytes]
    outcome: asyncio.Future[tuple[str, asyncpg.Record | None]]


class GroupCommit:
    """In-stock orders (or shipments) written together: one transaction, one commit and one round trip for those
    that arrive while the previous group is being written (`write_snapshots`, migration 0006).

    One transaction of groups is written at a time per process; the orders arriving meanwhile wait and make the
    next group of their kind, up to MAX_ORDERS. Under a trickle a group is one order, written by the single
    statement itself (`_write_alone`); under load, the commit (a WAL flush), the round trip and the statement's
    overhead are shared. The kinds share that one writer (`_Writer`): a group of orders and a group of shipments
    waiting at the same moment are written in the same transaction (migration 0012), since both lock the products
    they take stock from, and written apart each waited for the other's commit.
    A group is first written as one set, each table by one statement (migration 0008 for orders, 0009 for
    shipments), when every write of it can be made; otherwise each write of the group is made in a savepoint of its
    own, so one that cannot be written leaves the others as they are. Its outcome is
    'written', 'stored' (the answer already stored under its key) or why it was not written ('stale', 'deadlock',
    'busy', 'failed'), and the caller then decides it as without a group. A group the server refused as a whole
    wrote nothing: each of its orders comes back with outcome 'retry', to be written on its own. A group whose fate
    is unknown (the connection lost while it was sent, say) is never written again: each of its requests fails with
    that error, as the single statement would have.
    """

    MAX_ORDERS = 24  # savepoints per transaction (two groups') stay under the 64 PostgreSQL tracks without overflow
    WAIT_MS = 1  # for a key held by a request in flight: its order is then written on its own, waiting as usual

    def __init__(self, kind: str, writer: _Writer | None = None) -> None:
        self.kind = kind  # 'place' or 'ship'
        self._waiting: list[_Waiting] = []
        self._shared = writer if writer is not None else _Writer()
        self._shared.kinds.append(self)

    @classmethod
    def of(cls, app: Any, kind: str) -> GroupCommit | None:
        """The app's group commit of `kind` (one per app: each has its own database); None when it is turned off."""
        settings = app.state.settings
        if not settings.group_commit:
            return None
        groups: dict[str, GroupCommit] = _of_app(app, "group_commits", dict)
        if kind not in groups:
            writer = _of_app(app, "group_writer", lambda: _Writer(settings.group_linger_ms / 1000, settings.group_fill))
            groups[kind] = cls(kind, writer)
        return groups[kind]

    async def submit(
        self, pool: asyncpg.Pool, document: dict[str, Any], answer: bytes, payloads: list[bytes]
    ) -> tuple[str, asyncpg.Record | None]:
        """The outcome of one write (an order or a shipment) made with the others of the moment, and the answer
        stored under its key when the outcome is 'stored'."""
        waiting = _Waiting(
            {**document, "wait_ms": self.WAIT_MS}, answer, payloads, asyncio.get_running_loop().create_future()
        )
        self._waiting.append(waiting)
        self._shared.start(pool)
        return await waiting.outcome

    def take(self) -> list[_Waiting]:
        """The next group: the longest-waiting writes, up to MAX_ORDERS."""
        group = self._waiting[: self.MAX_ORDERS]
        del self._waiting[: self.MAX_ORDERS]
        if group:
            GROUP_SIZE.labels(self.kind).observe(len(group))
        return group

    async def _write(self, pool: asyncpg.Pool, group: list[_Waiting]) -> _Outcomes:
        if len(group) == 1:
            return [await self._write_alone(pool, group[0])]
        async with pool.acquire() as conn:
            rows = await conn.fetch(WRITE_SNAPSHOTS, *self.arguments(group))
            if any(row["outcome"] == "written" for row in rows):
                db.wrote_outbox(conn)
        return [(row["outcome"], row if row["outcome"] == "stored" else None) for row in rows]

    def arguments(self, group: list[_Waiting]) -> tuple[Any, ...]:
        """The arguments of `WRITE_SNAPSHOTS` for `group`."""
        return (
            self.kind,
            [w.document for w in group],
            [w.answer for w in group],
            [payload for w in group for payload in w.payloads],
            [len(w.payloads) for w in group],
        )

    async def _write_alone(self, pool: asyncpg.Pool, waiting: _Waiting) -> tuple[str, asyncpg.Record | None]:
        """A group of one, written by the single function in its own transaction, with the outcome `write_snapshots`
        would give it. That function locks the products in sku order (and then the order) as the group does: a
        group of one needs neither the group's lock on its products beforehand nor a savepoint, and these were
        most of what the group added to the single function's cost (under a trickle, nearly every group)."""
        try:
            return await _write_single(pool, self.kind, waiting.document, waiting.answer, waiting.payloads)
        except asyncpg.PostgresError:
            return "failed", None


# Two groups of different kinds in one transaction (migration 0012): the first group's rows, then the second's.
WRITE_SNAPSHOT_GROUPS = (
    "SELECT * FROM write_snapshot_groups($1, $2::jsonb, $3::bytea[], $4::bytea[], $5::integer[],"
    " $6, $7::jsonb, $8::bytea[], $9::bytea[], $10::integer[])"
)


class _Writer:
    """The one task that writes an app's groups, of every kind: those of the kinds with writes waiting, taken at
    the same moment, in one transaction (each kind's alone by its `GroupCommit._write`).

    Lingering (`group_linger_ms`, off by default): a transaction starts at most every `linger` seconds unless `fill`
    writes are waiting; a write after a quiet spell is written at once. Written back to back, the groups stay small
    between a trickle and the ceiling, and what a transaction costs whatever its size (the statements of the set
    writes, the commit, the round trip) is paid for a write or two; lingering makes fewer, larger groups, at the
    price of each request waiting up to the linger. What it saved and cost, measured, is in `bench/RESULTS.md`: it
    is off so that a request never waits for others unless the operator of a host short of CPU chooses so.
    """

    def __init__(self, linger: float = 0.0, fill: int = GroupCommit.MAX_ORDERS) -> None:
        self.kinds: list[GroupCommit] = []
        self.linger = linger
        self.fill = fill
        self._task: asyncio.Task[None] | None = None
        self._started_at = -math.inf  # when the last transaction started (event loop time)
        self._filled = asyncio.Event()  # set once `fill` writes are waiting, to end a linger

    def waiting(self) -> int:
        return sum(len(kind._waiting) for kind in self.kinds)

    def start(self, pool: asyncpg.Pool) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._write_all(pool), name="orders-group-commit")
        elif self.linger and self.waiting() >= self.fill:
            self._filled.set()

    async def _linger(self) -> None:
        """Until `fill` writes are waiting or `linger` has passed since the last transaction started."""
        loop = asyncio.get_running_loop()
        left = self._started_at + self.linger - loop.time()
        if self.waiting() < self.fill and left > 0:
            self._filled.clear()  # only `start` sets it, once the writes waiting reach `fill`
            try:
                async with asyncio.timeout(left):
                    await self._filled.wait()
            except TimeoutError:
                pass
        self._started_at = loop.time()

    async def _write_all(self, pool: asyncpg.Pool) -> None:
        taken: list[tuple[GroupCommit, list[_Waiting]]] = []
        try:
            while self.waiting():
                if self.linger:
                    await self._linger()
                taken = [(kind, group) for kind in self.kinds if (group := kind.take())]
                try:
                    if len(taken) == 1:
                        results = [await taken[0][0]._write(pool, taken[0][1])]
                    else:
                        results = await self._write_together(pool, taken)
                except asyncpg.PostgresError as exc:  # refused by the server: rolled back, nothing was written
                    log.warning("group_commit_refused", orders=sum(len(g) for _, g in taken), error=repr(exc))
                    results = [[("retry", None)] * len(group) for _, group in taken]
                except Exception as exc:  # noqa: BLE001 - the commit may have happened: never written again here
                    for _, group in taken:
                        for waiting in group:
                            if not waiting.outcome.done():
                                waiting.outcome.set_exception(exc)
                    taken = []
                    continue
                for (_, group), outcomes in zip(taken, results, strict=True):
                    for waiting, outcome in zip(group, outcomes, strict=True):
                        if not waiting.outcome.done():
                            waiting.outcome.set_result(outcome)
                taken = []
        finally:
            self._task = None
            for _, group in taken:  # cancelled while writing: whether it committed is unknown
                for waiting in group:
                    waiting.outcome.cancel()
            for kind in self.kinds:  # cancelled before their group was sent: each is written on its own
                for waiting in kind._waiting:
                    if not waiting.outcome.done():
                        waiting.outcome.set_result(("retry", None))
                kind._waiting.clear()

    @staticmethod
    async def _write_together(pool: asyncpg.Pool, taken: list[tuple[GroupCommit, list[_Waiting]]]) -> list[_Outcomes]:
        """Two groups of different kinds in one statement (`write_snapshot_groups`): each one's outcomes."""
        (first, a), (second, b) = taken
        async with pool.acquire() as conn:
            rows = await conn.fetch(WRITE_SNAPSHOT_GROUPS, *first.arguments(a), *second.arguments(b))
            if any(row["outcome"] == "written" for row in rows):
                db.wrote_outbox(conn)
        outcomes = [(row["outcome"], row if row["outcome"] == "stored" else None) for row in rows]
        return [outcomes[: len(a)], outcomes[len(a) :]]
