"""Operator tools: dead letters listed and replayed after a fix (applied once), consumer lag."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from backoffice import ops
from backoffice.consumer import Consumer
from backoffice.db import Conn, create_pool
from backoffice.envelope import Envelope, encode
from backoffice.errors import Conflict
from backoffice.events import OrderConfirmed
from backoffice.settings import ServiceSettings
from backoffice.topics import delete_topics, ensure_topics, events_topic
from tests.conftest import BOOTSTRAP, create_topics, eventually, produce
from tests.shared.helpers import messaging_db
from tests.shared.test_consumer import EFFECTS, count, good


class TestDeadLetterReplay:
    async def test_a_dead_letter_replayed_after_the_fix_is_applied_exactly_once(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        name = uuid.uuid4().hex[:8]
        topic, group = f"{topics}ops-{name}.events", f"{topics}ops-{name}"
        await create_topics(topic, f"{group}.dlq")
        dsn = await messaging_db(await make_database("ops_replay"))
        conn = await asyncpg.connect(dsn)
        await conn.execute(EFFECTS)
        await conn.close()
        broken = {"yes": True}

        async def handler(conn: Conn, envelope: Envelope) -> None:
            assert isinstance(envelope.event, OrderConfirmed)
            if broken["yes"]:
                raise Conflict("not yet")
            await conn.execute(
                "INSERT INTO effects (event_id, key, n) VALUES ($1, $2, 0)", envelope.id, envelope.event.order_id
            )

        pool = await create_pool(ServiceSettings(database_url=dsn, db_pool_min=1, db_pool_max=2))
        consumer = Consumer(
            group=group, topics=[topic], pool=pool, bootstrap=BOOTSTRAP, handlers={OrderConfirmed: handler}
        )
        task = asyncio.create_task(consumer.run())
        try:
            await produce(topic, [good("replay-me", 1)])

            async def dead() -> bool:
                return len(await ops.read_dead_letters(BOOTSTRAP, group)) == 1

            await eventually(dead)
            letters = await ops.read_dead_letters(BOOTSTRAP, group)
            assert letters[0].info["dlq_topic"] == topic
            assert "not yet" in letters[0].info["dlq_reason"]
            broken["yes"] = False
            await ops.replay_dead_letters(BOOTSTRAP, group)
            await eventually(lambda: _effects(dsn, 1))
            await ops.replay_dead_letters(BOOTSTRAP, group, ids={letters[0].info["ce_id"]})
            await asyncio.sleep(2)
            assert await count(dsn) == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await consumer.stop()
            await pool.close()


async def _effects(dsn: str, n: int) -> bool:
    return await count(dsn) >= n


class TestLag:
    async def test_lag_counts_records_a_group_has_not_committed(self, namespace: str) -> None:
        prefix = f"{namespace}.lag{uuid.uuid4().hex[:4]}."
        await ensure_topics(BOOTSTRAP, prefix=prefix, partitions=2)
        try:
            envs = [
                Envelope(event=OrderConfirmed(order_id=f"o{i}", customer_id="c", confirmed_at=datetime.now(UTC)))
                for i in range(5)
            ]
            await produce(events_topic("orders", prefix=prefix), [encode(e) for e in envs])
            lags = {row.group: row.lag for row in await ops.group_lag(BOOTSTRAP, prefix=prefix)}
            assert lags[f"{prefix}billing"] == 5
            assert lags[f"{prefix}support"] == 5
            assert lags[f"{prefix}ledger"] == 0
        finally:
            await delete_topics(BOOTSTRAP, prefix=prefix)
