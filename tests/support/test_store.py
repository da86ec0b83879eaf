"""The support store against the real PostgreSQL: tickets round-trip with their clocks; SLA candidates; settings."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from backoffice.db import migrate_dsn, service_migrations
from backoffice.errors import Conflict
from support import domain, jobs, store, timeline
from support.settings import DEFAULT_SLA_POLICY, Settings

MIGRATIONS = Path(domain.__file__).parent / "migrations"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture(scope="module")
async def dsn(make_database: Callable[[str], Awaitable[str]]) -> str:
    url = await make_database("support_store")
    await migrate_dsn(url, service_migrations(MIGRATIONS, service="support"))
    return url


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


def draft(**fields: str) -> domain.Draft:
    return domain.Draft(
        customer_id=fields.get("customer_id", "c-store"),
        subject="S",
        description="D",
        priority="urgent",
        order_id=fields.get("order_id"),
    )


async def opened(conn: asyncpg.Connection, *, at: datetime = T0, **fields: str) -> domain.Ticket:
    ticket = domain.open_ticket(draft(**fields), ticket_id=str(uuid.uuid4()), policy=DEFAULT_SLA_POLICY, at=at).ticket
    await store.insert_ticket(conn, ticket=ticket)
    return ticket


class TestTickets:
    async def test_a_ticket_round_trips_with_its_clocks(self, conn: asyncpg.Connection) -> None:
        ticket = await opened(conn)
        moved = domain.change_status(ticket, "pending", at=T0 + 25 * timedelta(minutes=1)).ticket
        moved = replace(moved, assignee="ann")
        await store.save_ticket(conn, ticket=moved)
        assert await store.get_ticket(conn, ticket_id=ticket.id) == moved
        assert moved.first_response.elapsed == timedelta(minutes=25)

    async def test_the_unresolved_ticket_for_an_order_is_the_oldest_open_one(self, conn: asyncpg.Connection) -> None:
        order = str(uuid.uuid4())
        first = await opened(conn, order_id=order)
        await opened(conn, order_id=order, at=T0 + H)
        async with conn.transaction():
            found = await store.find_unresolved_for(conn, link="order", link_id=order)
        assert found is not None and found.id == first.id
        await store.save_ticket(conn, ticket=domain.change_status(first, "closed", at=T0 + 2 * H).ticket)
        async with conn.transaction():
            found = await store.find_unresolved_for(conn, link="order", link_id=order)
        assert found is not None and found.id != first.id

    async def test_one_open_dispute_per_invoice_even_when_racing(self, conn: asyncpg.Connection) -> None:
        invoice = str(uuid.uuid4())
        a, b = await opened(conn), await opened(conn)
        await store.insert_dispute(conn, dispute=domain.Dispute(str(uuid.uuid4()), a.id, "c", invoice, "r", T0))
        with pytest.raises(Conflict, match="already under an open dispute"):
            await store.insert_dispute(conn, dispute=domain.Dispute(str(uuid.uuid4()), b.id, "c", invoice, "r", T0))


class TestSlaCandidates:
    async def test_the_sql_filter_agrees_with_the_domain(self, conn: asyncpg.Connection) -> None:
        customer = f"sla-{uuid.uuid4().hex[:6]}"
        running = await opened(conn, customer_id=customer)
        paused = await opened(conn, customer_id=customer)
        await store.save_ticket(
            conn, ticket=domain.change_status(paused, "pending", at=T0 + timedelta(minutes=10)).ticket
        )
        as_of = T0 + 2 * H
        async with conn.transaction():
            found = [t for t in await store.sla_candidates(conn, as_of=as_of, limit=500) if t.customer_id == customer]
        assert [t.id for t in found] == [running.id]
        assert all(domain.sla_breaches(t, as_of=as_of).events for t in found)

    async def test_the_job_flags_once(self, dsn: str, conn: asyncpg.Connection) -> None:
        ticket = await opened(conn, at=T0 + 1000 * H)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            as_of = T0 + 1010 * H
            first = await jobs.run_sla(pool, as_of=as_of, batch_size=2)
            second = await jobs.run_sla(pool, as_of=as_of, batch_size=2)
        finally:
            await pool.close()
        assert sorted(e.clock for e in first if e.ticket_id == ticket.id) == ["first_response", "resolution"]
        assert second == []
        unsent = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE key = $1 AND headers::text LIKE '%TicketSLABreached%'", ticket.id
        )
        assert unsent == 2


class TestTimelineStore:
    async def test_keyset_newest_first_and_duplicates_ignored(self, conn: asyncpg.Connection) -> None:
        customer = f"tl-{uuid.uuid4().hex[:6]}"
        items = [timeline.Item(str(uuid.uuid4()), customer, "OrderPlaced", T0 + i * H, f"o{i}", "s") for i in range(5)]
        await store.remember_refs(conn, refs=[], items=items[:3])
        await store.remember_refs(conn, refs=[], items=items[3:] + items[:2])
        first = await store.list_timeline(conn, customer_id=customer, limit=2)
        assert [i.subject for _, i in first] == ["o4", "o3"]
        seq, last = first[-1]
        rest = await store.list_timeline(conn, customer_id=customer, limit=10, before=(last.occurred_at, seq))
        assert [i.subject for _, i in rest] == ["o2", "o1", "o0"]


class TestSettings:
    def test_sla_policy_from_the_environment_keeps_other_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SUPPORT_SLA_POLICY", '{"urgent": {"first_response_minutes": 15, "resolution_minutes": 90}}')
        settings = Settings()
        assert settings.sla_policy["urgent"].first_response_minutes == 15
        assert settings.sla_policy["low"] == DEFAULT_SLA_POLICY["low"]

    def test_an_unknown_priority_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SUPPORT_SLA_POLICY", '{"critical": {"first_response_minutes": 1, "resolution_minutes": 2}}')
        with pytest.raises(ValueError, match="unknown priorities"):
            Settings()
