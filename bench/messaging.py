"""`outbox_relay` and `consumer_apply`: the shared library's relay and consumer against plain aiokafka loops."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from backoffice import db, events, outbox
from backoffice.consumer import Consumer
from backoffice.db import Conn
from backoffice.envelope import Envelope, encode
from backoffice.settings import ServiceSettings
from bench.stack import PARTITIONS, CpuMeter, Stack

Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers


@dataclass
class Timed:
    rate: float
    cpu: dict[str, float]


def order_placed(n: int) -> events.OrderPlaced:
    """A typical event: an order of two lines, keyed by its own id."""
    return events.OrderPlaced(
        order_id=str(uuid.uuid4()),
        customer_id=f"bench-customer-{n % 500}",
        currency="EUR",
        lines=(
            events.Line(sku=f"SKU-{n % 97}", quantity=2, unit_price_minor=1250),
            events.Line(sku=f"SKU-{n % 89}", quantity=1, unit_price_minor=990),
        ),
        total_minor=3490,
        status="confirmed",
        placed_at=datetime.now(UTC),
    )


async def create_topic(stack: Stack, name: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(0.5)  # leadership settles before the first produce
    return name


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("the bench timed out waiting for the work to finish")
        await asyncio.sleep(interval)


# --- outbox_relay ---------------------------------------------------------------------------------------------


class RelayBench:
    """Rows committed to the outbox in one transaction, then the relay publishes and marks them; vs a bare producer."""

    def __init__(self, stack: Stack, dsn: str, prefix: str) -> None:
        self.stack = stack
        self.dsn = dsn
        self.prefix = prefix

    async def _fill(self, conn: Conn, count: int) -> None:
        await conn.execute("TRUNCATE outbox")
        async with conn.transaction():
            for start in range(0, count, 1000):
                await outbox.append_many(conn, [order_placed(n) for n in range(start, min(count, start + 1000))])

    async def ours(self, count: int) -> Timed:
        settings = ServiceSettings(database_url=self.dsn, db_pool_min=1, db_pool_max=1)
        relay = outbox.Relay(  # as a service runs it (service.py)
            dsn=self.dsn,
            bootstrap=self.stack.bootstrap,
            topic_prefix=self.prefix,
            poll_interval=settings.outbox_poll_interval_s,
        )
        task = asyncio.create_task(relay.run())
        conn = await asyncpg.connect(self.dsn)
        writers = await db.create_pool(settings)
        try:
            await conn.execute("TRUNCATE outbox")
            await wait_until(lambda: _true(len(relay.lanes) == outbox.LANES and relay.kafka_ok), timeout=60)
            meter = CpuMeter(self.stack.processes())
            async with writers.acquire() as writer:  # a service's pool: its release wakes the relay
                await self._fill(writer, count)
            started = time.perf_counter()
            await wait_until(lambda: _unsent_zero(conn), timeout=300)
            rate = count / (time.perf_counter() - started)
            return Timed(rate, meter.cores())
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await relay.stop()
            await conn.close()
            await writers.close()

    async def baseline(self, count: int) -> Timed:
        conn = await asyncpg.connect(self.dsn)
        try:
            await self._fill(conn, count)
            rows = await conn.fetch("SELECT topic, key, headers::text AS headers, payload FROM outbox ORDER BY seq")
        finally:
            await conn.close()
        records = [
            (
                self.prefix + r["topic"],
                r["key"].encode(),
                bytes(r["payload"]),
                [(k, v.encode()) for k, v in orjson.loads(r["headers"])],
            )
            for r in rows
        ]
        producer = outbox.new_producer(self.stack.bootstrap)  # the plain aiokafka idempotent producer
        await producer.start()
        try:
            meter = CpuMeter(self.stack.processes())
            started = time.perf_counter()
            futures = [await producer.send(t, value=v, key=k, headers=h) for t, k, v, h in records]
            await asyncio.gather(*futures)
            return Timed(count / (time.perf_counter() - started), meter.cores())
        finally:
            await producer.stop()


async def _true(value: bool) -> bool:
    return value


async def _unsent_zero(conn: Conn) -> bool:
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL)")


# --- consumer_apply -------------------------------------------------------------------------------------------

EFFECTS = (
    "CREATE TABLE IF NOT EXISTS bench_effects (event_id uuid PRIMARY KEY, run text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
INSERT_EFFECT = "INSERT INTO bench_effects (event_id, run) VALUES ($1, $2)"


class ConsumerBench:
    """Records already on a topic, applied by the service consumer (inbox + effect row) vs a plain consumer loop."""

    def __init__(self, stack: Stack, dsn: str) -> None:
        self.stack = stack
        self.dsn = dsn

    async def _produce(self, count: int) -> str:
        topic = await create_topic(self.stack, f"bench-consume-{uuid.uuid4().hex[:8]}")
        producer = outbox.new_producer(self.stack.bootstrap)
        await producer.start()
        try:
            futures = []
            for n in range(count):
                key, value, headers = encode(Envelope(event=order_placed(n)))
                futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return topic

    async def _measure(self, pool: asyncpg.Pool, run: str, count: int, meter: CpuMeter) -> Timed:
        async def all_applied() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM bench_effects WHERE run = $1", run) >= count)

        await wait_until(all_applied, timeout=600, interval=0.05)
        cpu = meter.cores()
        span = await pool.fetchrow("SELECT max(applied_at) - min(applied_at) FROM bench_effects WHERE run = $1", run)
        assert span is not None
        seconds = max(span[0].total_seconds(), 1e-6)
        return Timed((count - 1) / seconds, cpu)

    async def ours(self, count: int) -> Timed:
        topic = await self._produce(count)
        run = uuid.uuid4().hex

        async def effect(conn: Conn, envelope: Envelope) -> None:
            await conn.execute(INSERT_EFFECT, envelope.id, run)

        pool = await db.create_pool(ServiceSettings(database_url=self.dsn))
        await pool.execute(EFFECTS)
        consumer = Consumer(
            group=f"bench-{run}",
            topics=[topic],
            pool=pool,
            bootstrap=self.stack.bootstrap,
            handlers={events.OrderPlaced: effect},
        )
        meter = CpuMeter(self.stack.processes())
        task = asyncio.create_task(consumer.run())
        try:
            return await self._measure(pool, run, count, meter)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await consumer.stop()
            await pool.close()

    async def baseline(self, count: int) -> Timed:
        topic = await self._produce(count)
        run = uuid.uuid4().hex
        pool = await db.create_pool(ServiceSettings(database_url=self.dsn))
        await pool.execute(EFFECTS)
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.stack.bootstrap,
            group_id=f"bench-{run}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=500,
            isolation_level="read_committed",
        )
        await consumer.start()

        async def loop() -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                for tp, records in batches.items():
                    async with pool.acquire() as conn, conn.transaction():
                        for record in records:
                            ce_id = next(v for k, v in record.headers if k == "ce_id").decode()
                            await conn.execute(INSERT_EFFECT, ce_id, run)
                    await consumer.commit({tp: records[-1].offset + 1})

        meter = CpuMeter(self.stack.processes())
        task = asyncio.create_task(loop())
        try:
            return await self._measure(pool, run, count, meter)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await consumer.stop()
            await pool.close()
