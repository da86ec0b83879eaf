"""The store against the real PostgreSQL: gap-free numbering under concurrency, once per shipment, guards."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from backoffice import events
from billing import handlers, store, store_dunning
from tests.billing.conftest import Billing, new_id, returned, shipped
from tests.conftest import seq_scans


class Boom(Exception):
    pass


async def issue(billing: Billing, *, at: datetime, fail: bool = False, customer: str | None = None) -> str | None:
    """Issue one invoice in its own transaction; with `fail`, roll it back after the number was taken."""
    try:
        async with billing.pool.acquire() as conn, conn.transaction():
            invoice = await handlers.invoice_shipment(
                conn,
                shipped(customer or new_id("c"), [("A", 1, 100)]),
                tax_rate_bps=2000,
                default_terms_days=30,
                at=at,
            )
            await asyncio.sleep(0.01)
            if fail:
                raise Boom
    except Boom:
        return None
    assert invoice is not None
    return invoice.number


class TestNumbering:
    async def test_parallel_issuing_gives_unique_gap_free_numbers(self, billing: Billing) -> None:
        at = datetime(2031, 6, 1, tzinfo=UTC)
        numbers = await asyncio.gather(*(issue(billing, at=at) for _ in range(20)))
        assert sorted(n for n in numbers if n) == [f"INV-2031-{i:06d}" for i in range(1, 21)]

    async def test_a_rolled_back_issue_gives_its_number_back(self, billing: Billing) -> None:
        at = datetime(2032, 6, 1, tzinfo=UTC)
        numbers = await asyncio.gather(*(issue(billing, at=at, fail=i % 3 == 0) for i in range(15)))
        kept = sorted(n for n in numbers if n)
        assert kept == [f"INV-2032-{i:06d}" for i in range(1, len(kept) + 1)]
        assert len(kept) == 10

    async def test_a_shipment_invoiced_already_takes_no_number(self, billing: Billing) -> None:
        at = datetime(2035, 6, 1, tzinfo=UTC)
        customer = new_id("c")
        event = shipped(customer, [("A", 1, 100)])

        async def invoice(shipment: events.OrderShipped) -> str | None:
            async with billing.pool.acquire() as conn, conn.transaction():
                made = await handlers.invoice_shipment(
                    conn,
                    shipment,
                    tax_rate_bps=2000,
                    default_terms_days=30,
                    at=at,  # type: ignore[arg-type]
                )
            return None if made is None else made.number

        first = await invoice(event)
        assert await invoice(event) is None
        assert await invoice(shipped(customer, [("A", 1, 100)])) == "INV-2035-000002"
        assert first == "INV-2035-000001"

    async def test_numbers_restart_each_year(self, billing: Billing) -> None:
        last = await issue(billing, at=datetime(2033, 12, 31, 23, 59, tzinfo=UTC))
        first = await issue(billing, at=datetime(2034, 1, 1, 0, 1, tzinfo=UTC))
        assert (last, first) == ("INV-2033-000001", "INV-2034-000001")

    async def test_credit_notes_have_their_own_sequence(self, billing: Billing) -> None:
        customer = new_id("c")
        invoice = await billing.invoice(shipped(customer, [("A", 2, 100)]))
        one = await billing.credit(returned(invoice.order_id, customer, [("A", 1, 100)]))
        two = await billing.credit(returned(invoice.order_id, customer, [("A", 1, 100)]))
        year = datetime.now(UTC).year
        assert int(two.number.rsplit("-", 1)[1]) == int(one.number.rsplit("-", 1)[1]) + 1
        assert one.number.startswith(f"CN-{year}-")

    async def test_credit_notes_of_one_invoice_carry_its_tax_exactly(self, billing: Billing) -> None:
        customer = new_id("c")
        invoice = await billing.invoice(shipped(customer, [("A", 3, 333)]))
        notes = [await billing.credit(returned(invoice.order_id, customer, [("A", 1, 333)])) for _ in range(3)]
        assert [n.tax_minor for n in notes] == [67, 66, 67]
        assert sum(n.total_minor for n in notes) == invoice.total_minor


class TestOncePerDocument:
    async def test_a_shipment_is_invoiced_once_however_often_it_comes(self, billing: Billing) -> None:
        event = shipped(new_id("c"), [("A", 1, 100)])

        async def once() -> object:
            async with billing.pool.acquire() as conn, conn.transaction():
                return await handlers.invoice_shipment(
                    conn, event, tax_rate_bps=2000, default_terms_days=30, at=datetime.now(UTC)
                )

        results = await asyncio.gather(*(once() for _ in range(5)))
        assert sum(r is not None for r in results) == 1
        count = await billing.pool.fetchval("SELECT count(*) FROM invoices WHERE shipment_id = $1", event.shipment_id)
        assert count == 1

    async def test_a_return_is_credited_once(self, billing: Billing) -> None:
        customer = new_id("c")
        invoice = await billing.invoice(shipped(customer, [("A", 2, 100)]))
        event = returned(invoice.order_id, customer, [("A", 1, 100)])
        await billing.credit(event)
        async with billing.pool.acquire() as conn, conn.transaction():
            assert await handlers.credit_return(conn, event, at=datetime.now(UTC)) is None


class TestGuards:
    async def test_the_database_refuses_an_over_settled_invoice(self, billing: Billing) -> None:
        invoice = await billing.invoice(shipped(new_id("c"), [("A", 1, 100)]))
        over = invoice.__class__(**{**invoice.__dict__, "paid_minor": invoice.total_minor + 1})
        with pytest.raises(asyncpg.CheckViolationError):
            async with billing.pool.acquire() as conn, conn.transaction():
                await store.update_invoice(conn, invoice=over)

    async def test_customer_credit_never_goes_below_zero(self, billing: Billing) -> None:
        customer = new_id("c")
        async with billing.pool.acquire() as conn, conn.transaction():
            await store.add_credit(conn, customer_id=customer, currency="EUR", delta_minor=100)
        with pytest.raises(asyncpg.CheckViolationError):
            async with billing.pool.acquire() as conn, conn.transaction():
                await store.add_credit(conn, customer_id=customer, currency="EUR", delta_minor=-101)
        async with billing.pool.acquire() as conn:
            assert await store.lock_credit(conn, customer_id=customer, currency="EUR") == 100

    async def test_dunning_notices_are_recorded_once_per_level(self, billing: Billing) -> None:
        invoice = await billing.invoice(shipped(new_id("c"), [("A", 1, 100)]))
        as_of = invoice.due_at + timedelta(days=20)
        async with billing.pool.acquire() as conn, conn.transaction():
            first = await store_dunning.record_notices(conn, invoice_id=invoice.id, levels=[1, 2], days=20, as_of=as_of)
            again = await store_dunning.record_notices(
                conn, invoice_id=invoice.id, levels=[1, 2, 3], days=20, as_of=as_of
            )
        assert (first, again) == ([1, 2], [3])


class TestBatchedInvoicing:
    """`invoice_shipments`: a consumer's run of shipments in three statements, as if invoiced one after another."""

    async def batch(self, billing: Billing, shipments: list[events.OrderShipped], at: datetime) -> list[str | None]:
        async with billing.pool.acquire() as conn, conn.transaction():
            made = await handlers.invoice_shipments(conn, shipments, tax_rate_bps=2000, default_terms_days=30, at=at)
        return [None if invoice is None else invoice.number for invoice in made]

    async def test_numbers_follow_the_batch_and_a_shipment_is_invoiced_once(self, billing: Billing) -> None:
        at = datetime(2036, 6, 1, tzinfo=UTC)
        before = shipped(new_id("c"), [("A", 1, 100)])
        assert await self.batch(billing, [before], at) == ["INV-2036-000001"]
        a, b, c = (shipped(new_id("c"), [("A", 2, 100)]) for _ in range(3))
        again = a.model_copy()  # the same shipment, delivered again within the run
        numbers = await self.batch(billing, [a, before, b, again, c], at)
        assert numbers == ["INV-2036-000002", None, "INV-2036-000003", None, "INV-2036-000004"]
        rows = await billing.pool.fetch(
            "SELECT shipment_id, number, total_minor FROM invoices WHERE shipment_id = ANY($1::text[]) ORDER BY number",
            [s.shipment_id for s in (before, a, b, c)],
        )
        assert [(r["shipment_id"], r["number"], r["total_minor"]) for r in rows] == [
            (before.shipment_id, "INV-2036-000001", 120),
            (a.shipment_id, "INV-2036-000002", 240),
            (b.shipment_id, "INV-2036-000003", 240),
            (c.shipment_id, "INV-2036-000004", 240),
        ]
        for shipment, number in ((a, "INV-2036-000002"), (c, "INV-2036-000004")):
            invoice_id = await billing.pool.fetchval("SELECT id::text FROM invoices WHERE number = $1", number)
            assert [name for name, _ in await billing.published(invoice_id)] == ["InvoiceIssued"]
            assert shipment.customer_id in await billing.pool.fetchval(
                "SELECT string_agg(customer_id, ',') FROM customers"
            )

    async def test_invoiced_shipments_are_looked_up_by_key_in_the_plan_a_prepared_statement_keeps(
        self, billing: Billing
    ) -> None:
        """The consumer's statement is prepared, and PostgreSQL may keep one generic plan for it. The check for
        shipments invoiced already was planned, while `invoices` was small, as a hash join over the whole table, and
        that plan was kept as the table grew: each batch read every invoice (measured in the pipeline: some 300
        whole-table scans in a 15 s step). It must find each shipment by its key in that plan too."""
        at = datetime(2038, 6, 1, tzinfo=UTC)
        done, new = (shipped(new_id("c"), [("A", 1, 100)]) for _ in range(2))
        assert await self.batch(billing, [done], at) == ["INV-2038-000001"]
        async with billing.pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            before = await seq_scans(conn, "invoices")
            taken = await store.start_shipment_invoices(
                conn, shipments=[(s.shipment_id, s.customer_id, s.currency) for s in (done, new)], year=2038
            )
            scans = await seq_scans(conn, "invoices") - before
        assert taken.numbers == {new.shipment_id: 2}
        assert scans == 0

    async def test_credit_is_used_in_batch_order_and_terms_per_customer(self, billing: Billing) -> None:
        at = datetime(2037, 6, 1, tzinfo=UTC)
        rich, other = new_id("c"), new_id("c")
        async with billing.pool.acquire() as conn, conn.transaction():
            await store.add_credit(conn, customer_id=rich, currency="EUR", delta_minor=150)
            await store.set_terms(conn, customer_id=other, days=7)
        first, second, third = (shipped(rich, [("A", 1, 100)]) for _ in range(3))  # 120 each with tax
        theirs = shipped(other, [("A", 1, 100)])
        await self.batch(billing, [first, theirs, second, third], at)
        rows = {
            r["shipment_id"]: r
            for r in await billing.pool.fetch(
                "SELECT shipment_id, credit_applied_minor, balance_minor, status, due_at FROM invoices"
                " WHERE customer_id = ANY($1::text[])",
                [rich, other],
            )
        }
        assert [
            (rows[s.shipment_id]["credit_applied_minor"], rows[s.shipment_id]["status"]) for s in (first, second, third)
        ] == [
            (120, "paid"),
            (30, "partially_paid"),
            (0, "open"),
        ]
        assert rows[theirs.shipment_id]["due_at"] == at + timedelta(days=7)
        assert rows[first.shipment_id]["due_at"] == at + timedelta(days=30)
        async with billing.pool.acquire() as conn:
            assert await store.lock_credit(conn, customer_id=rich, currency="EUR") == 0
        settled = await billing.pool.fetch(
            "SELECT i.shipment_id, s.amount_minor FROM invoice_settlements s JOIN invoices i ON i.id = s.invoice_id"
            " WHERE i.customer_id = $1 AND s.kind = 'credit'",
            rich,
        )
        assert sorted((r["shipment_id"], r["amount_minor"]) for r in settled) == sorted(
            [(first.shipment_id, 120), (second.shipment_id, 30)]
        )
        first_id = await billing.pool.fetchval(
            "SELECT id::text FROM invoices WHERE shipment_id = $1", first.shipment_id
        )
        published = [name for name, _ in await billing.published(first_id)]
        assert published == ["InvoiceIssued", "CreditApplied", "InvoicePaid"]
