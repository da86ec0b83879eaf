"""`ledger_post`: journal entries posted by the ledger's billing-event handler vs the same INSERTs in a bare loop.

Both sides run `WORKERS` concurrent transactions of `BATCH` entries (as partitions of the ledger's consumer would)
on the ledger's real schema, triggers included. Ours hands each transaction's events to the handler as one run, as
the consumer hands over the fresh events of a poll; the baseline inserts entry by entry. The spread case mixes
every posted event type over many parties and expense accounts; the hot-account case touches Cash (1000) in every
entry.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

import ledger
from backoffice import db, events
from backoffice.db import Conn
from backoffice.envelope import Envelope
from backoffice.settings import ServiceSettings
from bench.loadgen import collector_paused, paced
from bench.messaging import Timed
from bench.stack import CpuMeter, Stack
from ledger import domain, handlers

WORKERS = 4
BATCH = 100
EXPENSE_ACCOUNTS = [f"61{n:02d}" for n in range(32)]
MIGRATIONS = Path(ledger.__file__).parent / "migrations"
Apply = Callable[[Conn, Sequence[Any]], Awaitable[None]]


def _spread(n: int) -> events.Event:
    now = datetime.now(UTC)
    customer, vendor, amount = f"cust-{n % 200}", f"vendor-{n % 50}", 1000 + n % 900
    tax = amount // 5
    match n % 6:
        case 0:
            return events.InvoiceIssued(
                invoice_id=str(uuid.uuid4()),
                number=f"INV-2026-{n:06d}",
                customer_id=customer,
                currency="EUR",
                lines=(),
                subtotal_minor=amount,
                tax_minor=tax,
                total_minor=amount + tax,
                issued_at=now,
                due_at=now + timedelta(days=30),
            )
        case 1:
            return events.PaymentReceived(
                payment_id=str(uuid.uuid4()),
                customer_id=customer,
                currency="EUR",
                amount_minor=amount,
                applied=(events.Allocation(invoice_id=str(uuid.uuid4()), amount_minor=amount - 100),),
                unapplied_minor=100,
                received_at=now,
            )
        case 2:
            return events.CreditApplied(
                customer_id=customer, invoice_id=str(uuid.uuid4()), currency="EUR", amount_minor=amount, applied_at=now
            )
        case 3:
            return events.CreditNoteIssued(
                credit_note_id=str(uuid.uuid4()),
                number=f"CN-2026-{n:06d}",
                invoice_id=str(uuid.uuid4()),
                customer_id=customer,
                currency="EUR",
                subtotal_minor=amount,
                tax_minor=tax,
                total_minor=amount + tax,
                applied_to_invoice_minor=amount,
                to_customer_credit_minor=tax,
                issued_at=now,
            )
        case 4:
            return events.BillReceived(
                bill_id=str(uuid.uuid4()),
                vendor_id=vendor,
                bill_number=f"B-{n}",
                currency="EUR",
                expense_account=EXPENSE_ACCOUNTS[n % len(EXPENSE_ACCOUNTS)],
                subtotal_minor=amount,
                tax_minor=tax,
                total_minor=amount + tax,
                due_at=now + timedelta(days=30),
            )
        case _:
            return events.BillPaymentMade(
                payment_id=str(uuid.uuid4()),
                bill_id=str(uuid.uuid4()),
                vendor_id=vendor,
                currency="EUR",
                amount_minor=amount,
                paid_at=now,
            )


def _hot(n: int) -> events.Event:
    """Every entry has a Cash line: customer payments in (PaymentReceived), bill payments out (BillPaymentMade)."""
    return _spread(6 * n + (1 if n % 2 else 5))


def envelopes(count: int, *, hot: bool) -> list[Envelope]:
    make = _hot if hot else _spread
    return [Envelope(event=make(n)) for n in range(count)]


INSERT_ENTRY = (
    "INSERT INTO journal_entries (id, currency, memo, source_type, source_event_id, reverses_entry_id,"
    " effective_at, posted_at, line_count, total_minor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
INSERT_LINES = (
    "INSERT INTO journal_lines (entry_id, line_no, account, currency, effective_at, debit_minor, credit_minor,"
    " party) SELECT $1, l.no, l.account, $2, $3, l.debit, l.credit, l.party"
    " FROM unnest($4::int[], $5::text[], $6::bigint[], $7::bigint[], $8::text[])"
    " AS l(no, account, debit, credit, party)"
)


async def _bare_insert(conn: Conn, entry: domain.Entry) -> None:
    await conn.execute(
        INSERT_ENTRY,
        entry.id,
        entry.currency,
        entry.memo,
        entry.source_type,
        entry.source_event_id,
        None,
        entry.effective_at,
        entry.posted_at,
        len(entry.lines),
        entry.total_minor,
    )
    await conn.execute(
        INSERT_LINES,
        entry.id,
        entry.currency,
        entry.effective_at,
        list(range(1, len(entry.lines) + 1)),
        [line.account for line in entry.lines],
        [line.debit_minor for line in entry.lines],
        [line.credit_minor for line in entry.lines],
        [line.party for line in entry.lines],
    )


class LedgerBench:
    def __init__(self, stack: Stack, dsn: str) -> None:
        self.stack = stack
        self.dsn = dsn

    @classmethod
    async def create(cls, stack: Stack) -> LedgerBench:
        dsn = await stack.database("bench_ledger", db.service_migrations(MIGRATIONS, service="ledger"))
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(
                "INSERT INTO accounts (code, name, type) VALUES ($1, $2, 'expense') ON CONFLICT DO NOTHING",
                [(code, f"Expenses {code}") for code in EXPENSE_ACCOUNTS],
            )
        finally:
            await conn.close()
        return cls(stack, dsn)

    def _side(self, count: int, *, hot: bool, ours: bool) -> tuple[list[Any], Apply]:
        """What one side posts, prepared, and how it posts a transaction's share of it. Ours hands the events to the
        handler as one run (as the consumer hands over the fresh events of a poll); the baseline inserts the entries,
        built beforehand, one at a time."""
        if ours:

            async def post(conn: Conn, run: Sequence[Envelope]) -> None:
                await handlers.on_billing_events(conn, list(run))

            return list(envelopes(count, hot=hot)), post
        entries = []
        for env in envelopes(count, hot=hot):
            draft = domain.posting_for(env.event, occurred_at=env.time)
            assert draft is not None
            entries.append(
                domain.post(draft, entry_id=uuid.uuid4(), posted_at=events.now(), source_event_id=uuid.UUID(env.id))
            )

        async def insert(conn: Conn, run: Sequence[domain.Entry]) -> None:
            for entry in run:
                await _bare_insert(conn, entry)

        return entries, insert

    def _pool(self) -> Awaitable[asyncpg.Pool]:
        return db.create_pool(ServiceSettings(database_url=self.dsn, db_pool_max=WORKERS, db_pool_min=WORKERS))

    async def throughput(self, count: int, *, hot: bool = False, ours: bool = True) -> Timed:
        """All `count` posted by WORKERS connections in transactions of BATCH, each one call of the side's apply."""
        items, apply = self._side(count, hot=hot, ours=ours)
        pool = await self._pool()
        chunks = iter([items[i : i + BATCH] for i in range(0, len(items), BATCH)])

        async def worker() -> None:
            for chunk in chunks:
                async with pool.acquire() as conn, conn.transaction():
                    await apply(conn, chunk)

        try:
            meter = CpuMeter(self.stack.processes())
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(WORKERS)))
            return Timed(len(items) / (time.perf_counter() - started), meter.cores())
        finally:
            await pool.close()

    async def ours(self, count: int, *, hot: bool = False) -> Timed:
        return await self.throughput(count, hot=hot, ours=True)

    async def baseline(self, count: int, *, hot: bool = False) -> Timed:
        return await self.throughput(count, hot=hot, ours=False)

    async def latency(self, *, ours: bool, rate: float, seconds: float, hot: bool = False) -> list[float]:
        """ms from each entry's due time (`paced`, in ticks of 10 ms) until the transaction that posted it committed:
        each tick's entries in one transaction on one of WORKERS connections (a tick that finds them all busy
        waits, and that wait is in its latency)."""
        items, apply = self._side(max(1, int(rate * seconds)), hot=hot, ours=ours)
        pool = await self._pool()
        latencies: list[float] = []

        async def post(numbers: range, at: float) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await apply(conn, [items[n] for n in numbers])
            latencies.extend([(time.time() - at) * 1000] * len(numbers))

        try:
            with collector_paused():
                await paced(post, rate=rate, seconds=seconds)
        finally:
            await pool.close()
        return latencies
