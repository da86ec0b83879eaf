"""The orders store against the real PostgreSQL: round trips, locks, keyset listing and the schema's guards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from backoffice import db, events
from backoffice.envelope import Envelope
from backoffice.errors import Conflict
from orders import domain, store
from orders.settings import Settings
from tests.conftest import seq_scans

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MIGRATIONS = Path(domain.__file__).parent / "migrations"


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(settings)
    async with pool.acquire() as conn:
        await db.migrate(conn, db.service_migrations(MIGRATIONS, service="orders"))
    yield pool
    await pool.close()


def sku() -> str:
    return f"S-{uuid.uuid4().hex[:10]}"


async def add(pool: asyncpg.Pool, *, on_hand: int, price: int = 100) -> domain.Product:
    product = domain.Product(sku=sku(), name="p", unit_price_minor=price, currency="EUR", on_hand=on_hand)
    async with pool.acquire() as conn:
        assert await store.insert_product(conn, product=product, now=NOW)
    return product


async def place(
    pool: asyncpg.Pool, items: list[domain.Item], *, customer: str = "c1", backorder: bool = False
) -> domain.Order:
    """Place an order the way the route does: lock the products, decide, write."""
    async with pool.acquire() as conn, conn.transaction():
        catalogue = await store.lock_products(conn, skus=[i.sku for i in items])
        placed = domain.place_order(
            order_id=str(uuid.uuid4()),
            customer_id=customer,
            currency="EUR",
            items=items,
            catalogue=catalogue,
            allow_backorder=backorder,
            shipping_address={"line1": "x", "city": "y", "country": "DE"},
            now=events.now(),
        )
        await store.insert_order(conn, order=placed.order, now=NOW)
        await store.save_stock(conn, products=placed.products, now=NOW)
    return placed.order


class TestProducts:
    async def test_a_duplicate_sku_is_not_inserted(self, pool: asyncpg.Pool) -> None:
        product = await add(pool, on_hand=1)
        async with pool.acquire() as conn:
            assert not await store.insert_product(conn, product=product, now=NOW)

    async def test_the_schema_refuses_reserving_more_than_on_hand(self, pool: asyncpg.Pool) -> None:
        product = await add(pool, on_hand=2)
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.CheckViolationError):
                await store.save_stock(conn, products=[domain.Product(**{**product.__dict__, "reserved": 3})], now=NOW)
            with pytest.raises(asyncpg.CheckViolationError):
                await store.save_stock(conn, products=[domain.Product(**{**product.__dict__, "on_hand": -1})], now=NOW)
            assert await store.get_product(conn, sku=product.sku) == product

    async def test_parallel_reservations_on_separate_connections_never_oversell(self, pool: asyncpg.Pool) -> None:
        product = await add(pool, on_hand=5)

        async def attempt() -> bool:
            try:
                await place(pool, [domain.Item(product.sku, 1)])
            except Conflict:
                return False
            return True

        results = await asyncio.gather(*(attempt() for _ in range(20)))
        assert results.count(True) == 5
        async with pool.acquire() as conn:
            shown = await store.get_product(conn, sku=product.sku)
        assert shown is not None and (shown.on_hand, shown.reserved) == (5, 5)


class TestOrders:
    async def test_an_order_round_trips_with_its_lines(self, pool: asyncpg.Pool) -> None:
        a, b = await add(pool, on_hand=5, price=300), await add(pool, on_hand=1, price=20)
        order = await place(pool, [domain.Item(a.sku, 2), domain.Item(b.sku, 3)], backorder=True)
        async with pool.acquire() as conn:
            loaded = await store.get_order(conn, order_id=order.id)
            owner = await store.order_owner_and_skus(conn, order_id=order.id)
        assert loaded is not None
        assert loaded.lines == order.lines and loaded.status == "backordered"
        assert loaded.total_minor == 660 and loaded.shipping_address == order.shipping_address
        assert owner == ("c1", sorted([a.sku, b.sku]))

    async def test_backorders_waiting_for_a_sku_are_locked_oldest_first(self, pool: asyncpg.Pool) -> None:
        scarce, other = await add(pool, on_hand=0), await add(pool, on_hand=0)
        first = await place(pool, [domain.Item(scarce.sku, 1)], backorder=True)
        await place(pool, [domain.Item(other.sku, 1)], backorder=True)
        second = await place(pool, [domain.Item(scarce.sku, 2)], backorder=True)
        async with pool.acquire() as conn, conn.transaction():
            waiting = await store.lock_backorders(conn, skus=[scarce.sku])
            assert [o.id for o in waiting] == [first.id, second.id]
            cancelled = domain.cancel(waiting[0], reason="x", catalogue={}, now=NOW).order
            await store.save_orders(conn, orders=[cancelled], now=NOW)
            assert [o.id for o in await store.lock_backorders(conn, skus=[scarce.sku])] == [second.id]

    async def test_a_locked_order_makes_a_second_writer_wait(self, pool: asyncpg.Pool) -> None:
        product = await add(pool, on_hand=3)
        order = await place(pool, [domain.Item(product.sku, 1)])
        async with pool.acquire() as holder, holder.transaction():
            await store.get_order(holder, order_id=order.id, for_update=True)
            async with pool.acquire() as other, other.transaction():
                await other.execute("SET LOCAL lock_timeout = '200ms'")
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await store.get_order(other, order_id=order.id, for_update=True)

    async def test_listing_is_newest_first_by_keyset(self, pool: asyncpg.Pool) -> None:
        product = await add(pool, on_hand=10)
        customer = f"c-{uuid.uuid4().hex[:8]}"
        ids = [(await place(pool, [domain.Item(product.sku, 1)], customer=customer)).id for _ in range(3)]
        async with pool.acquire() as conn:
            page = await store.list_orders(conn, customer_id=customer, status=None, before_seq=None, limit=2)
            rest = await store.list_orders(
                conn, customer_id=customer, status="confirmed", before_seq=page[-1]["seq"], limit=2
            )
            none = await store.list_orders(conn, customer_id=customer, status="shipped", before_seq=None, limit=2)
        assert [r["id"] for r in page + rest] == ids[::-1]
        assert none == []

    async def test_views_of_one_order_and_of_several_read_what_each_order_reads_alone(self, pool: asyncpg.Pool) -> None:
        """One order is read by its key, a list by another statement (`order_views`): both give `order_view`'s."""
        product = await add(pool, on_hand=5)
        orders = [await place(pool, [domain.Item(product.sku, n + 1)]) for n in range(2)]
        missing = str(uuid.uuid4())
        async with pool.acquire() as conn:
            alone = {o.id: await store.order_view(conn, order_id=o.id) for o in orders}
            one = await store.order_views(conn, order_ids=[orders[0].id])
            several = await store.order_views(conn, order_ids=[o.id for o in orders] + [missing])
            none = await store.order_views(conn, order_ids=[missing])
        assert one == {orders[0].id: alone[orders[0].id]}
        assert several == alone
        assert sorted(v.order.lines[0].quantity for v in several.values()) == [1, 2]
        assert none == {}

    async def test_the_group_writes_run_on_the_plans_postgresql_keeps(self, pool: asyncpg.Pool) -> None:
        """Migration 0014: planned once a session, not on every call. (Its comment says this file checks that those
        plans find each order by key; that check is `TestShipmentsWrittenAsOneSet` in tests/orders/test_fastpath.py,
        and an applied migration is not edited.)"""
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT proname, proconfig FROM pg_proc WHERE proname = ANY($1::text[]) ORDER BY proname",
                ["write_snapshot_groups", "write_snapshots", "_write_group"],
            )
        assert [(r["proname"], r["proconfig"]) for r in rows] == [
            ("_write_group", None),  # called by both: holds their setting
            ("write_snapshot_groups", ["plan_cache_mode=force_generic_plan"]),
            ("write_snapshots", ["plan_cache_mode=force_generic_plan"]),
        ]


def issued(order_id: str, number: str, total: int, invoice: str | None = None) -> events.InvoiceIssued:
    """An `InvoiceIssued` of `total` (no tax) for customer c1, issued at NOW."""
    return events.InvoiceIssued(
        invoice_id=invoice or str(uuid.uuid4()),
        number=number,
        customer_id="c1",
        order_id=order_id,
        currency="EUR",
        lines=(),
        subtotal_minor=total,
        tax_minor=0,
        total_minor=total,
        issued_at=NOW,
        due_at=NOW + timedelta(days=30),
    )


class TestBillingView:
    async def test_issued_then_paid_invoices_upsert_under_their_order(self, pool: asyncpg.Pool) -> None:
        product = await add(pool, on_hand=1)
        order = await place(pool, [domain.Item(product.sku, 1)])
        invoice = str(uuid.uuid4())
        issued = events.InvoiceIssued(
            invoice_id=invoice,
            number="INV-2026-000042",
            customer_id="c1",
            order_id=order.id,
            currency="EUR",
            lines=(),
            subtotal_minor=100,
            tax_minor=19,
            total_minor=119,
            issued_at=NOW,
            due_at=NOW + timedelta(days=30),
        )
        paid = events.InvoicePaid(invoice_id=invoice, customer_id="c1", currency="EUR", total_minor=119, paid_at=NOW)
        async with pool.acquire() as conn:
            assert await store.record_invoice(conn, order_id=order.id.upper(), envelope=Envelope(issued)) == order.id
            assert await store.record_payment(conn, order_id=None, envelope=Envelope(paid)) == order.id  # as issued
            view = await store.order_view(conn, order_id=order.id)
        assert view is not None
        (row,) = view.invoices
        assert (row["number"], row["total_minor"], row["paid"], row["paid_at"]) == ("INV-2026-000042", 119, True, NOW)
        assert [(h["type"], h["data"]["invoice_id"]) for h in view.history] == [
            ("InvoiceIssued", invoice),
            ("InvoicePaid", invoice),
        ]

    async def test_an_invoice_or_payment_of_no_order_of_ours_writes_nothing(self, pool: asyncpg.Pool) -> None:
        invoice = str(uuid.uuid4())
        issued = events.InvoiceIssued(
            invoice_id=invoice,
            number="INV-2026-000043",
            customer_id="c1",
            order_id=str(uuid.uuid4()),
            currency="EUR",
            lines=(),
            subtotal_minor=100,
            tax_minor=0,
            total_minor=100,
            issued_at=NOW,
            due_at=NOW + timedelta(days=30),
        )
        paid = events.InvoicePaid(invoice_id=invoice, customer_id="c1", currency="EUR", total_minor=100, paid_at=NOW)
        async with pool.acquire() as conn:
            for order_id in (issued.order_id, "not-a-uuid", None):
                assert await store.record_invoice(conn, order_id=order_id, envelope=Envelope(issued)) is None
            assert await store.record_payment(conn, order_id=None, envelope=Envelope(paid)) is None
            written = await conn.fetchval(
                "SELECT (SELECT count(*) FROM order_invoices WHERE invoice_id = $1)"
                " + (SELECT count(*) FROM order_events WHERE type LIKE 'Invoice%' AND data->>'invoice_id' = $1)",
                invoice,
            )
        assert written == 0

    async def test_a_run_of_invoices_is_recorded_as_one_at_a_time_would_record_it(self, pool: asyncpg.Pool) -> None:
        """One statement for the run: each invoice of ours under its order with its history row, in run order; an
        invoice of no order of ours writes nothing; an invoice issued again later in the run ends with the later
        issue's number and total, and both issues in the history."""
        product = await add(pool, on_hand=2)
        first, second = [await place(pool, [domain.Item(product.sku, 1)]) for _ in range(2)]
        again = str(uuid.uuid4())

        run = [
            issued(first.id, "INV-1", 100, again),
            issued(str(uuid.uuid4()), "INV-X", 5),
            issued(second.id, "INV-2", 200),
            issued(first.id, "INV-3", 300, again),
        ]
        async with pool.acquire() as conn, conn.transaction():
            recorded = await store.record_invoices(conn, invoices=[(i.order_id, Envelope(i)) for i in run])
        assert recorded == [first.id, None, second.id, first.id]
        async with pool.acquire() as conn:
            views = [await store.order_view(conn, order_id=o.id) for o in (first, second)]
            strays = await conn.fetchval("SELECT count(*) FROM order_invoices WHERE invoice_id = $1", run[1].invoice_id)
        assert views[0] is not None and views[1] is not None
        assert [(i["invoice_id"], i["number"], i["total_minor"]) for i in views[0].invoices] == [(again, "INV-3", 300)]
        assert [(i["number"], i["total_minor"]) for i in views[1].invoices] == [("INV-2", 200)]
        assert [h["data"]["number"] for h in views[0].history if h["type"] == "InvoiceIssued"] == ["INV-1", "INV-3"]
        assert [h["data"]["number"] for h in views[1].history if h["type"] == "InvoiceIssued"] == ["INV-2"]
        assert strays == 0

    async def test_a_run_of_invoices_finds_its_orders_by_key_in_the_plan_a_prepared_statement_keeps(
        self, pool: asyncpg.Pool
    ) -> None:
        """The consumer's statement is prepared, and PostgreSQL may keep one generic plan for it: the join to the
        orders must be by key in that plan too, not a hash join over every order (measured in the pipeline: whole-
        table scans of `orders`, each batch reading more rows as the table grew)."""
        product = await add(pool, on_hand=1)
        order = await place(pool, [domain.Item(product.sku, 1)])
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            before = await seq_scans(conn, "orders")
            recorded = await store.record_invoices(
                conn, invoices=[(order.id, Envelope(issued(order.id, "INV-K", 100)))]
            )
            scans = await seq_scans(conn, "orders") - before
        assert recorded == [order.id]
        assert scans == 0
