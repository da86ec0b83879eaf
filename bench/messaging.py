"""`outbox_relay` and `consumer_apply`: the shared library's relay and consumer against plain aiokafka loops."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from backoffice import db, events, outbox
from backoffice.consumer import Consumer
from backoffice.db import Conn
from backoffice.envelope import Envelope, encode
from backoffice.settings import ServiceSettings
from backoffice.topics import events_topic
from bench.loadgen import collector_paused, paced
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
    """Rows committed to the outbox in one transaction, then the relay publishes and deletes them; against a bare
    producer."""

    def __init__(self, stack: Stack, dsn: str, prefix: str) -> None:
        self.stack = stack
        self.dsn = dsn
        self.prefix = prefix

    async def _fill(self, conn: Conn, count: int) -> None:
        await conn.execute("TRUNCATE outbox")
        async with conn.transaction():
            for start in range(0, count, 1000):
                await outbox.append_many(conn, [order_placed(n) for n in range(start, min(count, start + 1000))])

    @contextlib.asynccontextmanager
    async def _relaying(self, pool_size: int) -> AsyncIterator[asyncpg.Pool]:
        """The relay running as a service runs it (service.py), every lane held, and a service's pool to write with:
        its connections' release wakes the relay."""
        settings = ServiceSettings(database_url=self.dsn, db_pool_min=1, db_pool_max=pool_size)
        relay = outbox.Relay(
            dsn=self.dsn,
            bootstrap=self.stack.bootstrap,
            topic_prefix=self.prefix,
            batch_size=settings.outbox_batch_size,
            poll_interval=settings.outbox_poll_interval_s,
            min_cycle=settings.outbox_min_cycle_ms / 1000,
        )
        task = asyncio.create_task(relay.run())
        writers = await db.create_pool(settings)
        try:
            await wait_until(lambda: _true(len(relay.lanes) == outbox.LANES and relay.kafka_ok), timeout=60)
            yield writers
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await relay.stop()
            await writers.close()

    async def ours(self, count: int) -> Timed:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("TRUNCATE outbox")
            async with self._relaying(1) as writers:
                meter = CpuMeter(self.stack.processes())
                async with writers.acquire() as writer:
                    await self._fill(writer, count)
                started = time.perf_counter()
                await wait_until(lambda: _unsent_zero(conn), timeout=300)
                rate = count / (time.perf_counter() - started)
                return Timed(rate, meter.cores())
        finally:
            await conn.close()

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
        async with started_producer(self.stack.bootstrap, plain=True) as producer:
            meter = CpuMeter(self.stack.processes())
            started = time.perf_counter()
            futures = [await producer.send(t, value=v, key=k, headers=h) for t, k, v, h in records]
            await asyncio.gather(*futures)
            return Timed(count / (time.perf_counter() - started), meter.cores())

    async def latency(self, *, ours: bool, rate: float, seconds: float) -> list[float]:
        """ms from each event's due time (`paced`, in ticks of 10 ms) until a reader of the topic has it. Ours: each
        tick's events committed to the outbox in one transaction of a service's pool, published by the relay; the
        baseline: the same bytes sent by the bare producer. The events are made beforehand (the load generator
        shares its process, and its CPU, with the relay)."""
        topic = events_topic(order_placed(0).service, prefix=self.prefix)
        envs = [Envelope.wrap(order_placed(n)) for n in range(max(1, int(rate * seconds)))]
        due: dict[bytes, float] = {}

        async with Tail(self.stack.bootstrap, topic) as tail:
            with collector_paused():
                if ours:
                    async with self._relaying(4) as writers:

                        async def commit(items: range, at: float) -> None:
                            due.update((envs[n].subject.encode(), at) for n in items)
                            async with writers.acquire() as conn, conn.transaction():
                                await outbox.append_many(conn, [envs[n] for n in items])

                        await paced(commit, rate=rate, seconds=seconds)
                        await tail.until(due, timeout=120)
                else:
                    records = [encode(env) for env in envs]
                    async with started_producer(self.stack.bootstrap, plain=True) as producer:

                        async def send(items: range, at: float) -> None:
                            sent = []
                            for n in items:
                                key, value, headers = records[n]
                                due[key] = at
                                sent.append(await producer.send(topic, value=value, key=key, headers=headers))
                            await asyncio.gather(*sent)

                        await paced(send, rate=rate, seconds=seconds)
                        await tail.until(due, timeout=120)
                return [(tail.seen[key] - at) * 1000 for key, at in due.items()]


class Tail:
    """Reads a topic from its end on, without a group, noting when each record key first arrived (`time.time()`)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
        self.seen: dict[bytes, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tail:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=15000)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        partitions = [TopicPartition(self.topic, p["partition"]) for p in described["partitions"]]
        if not partitions:
            raise RuntimeError(f"topic {self.topic} has no partitions")
        await self.consumer.start()
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self.consumer.position(tp)  # resolved now: nothing sent from here on is skipped
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batches.values():
                for record in records:
                    if record.key is not None:
                        self.seen.setdefault(record.key, now)

    async def until(self, keys: dict[bytes, float], *, timeout: float) -> None:
        """Until every one of `keys` has arrived. The reader shares this process with the path measured, so each check
        compares counts first and looks the keys up only once enough records have arrived."""

        async def arrived() -> bool:
            return len(self.seen) >= len(keys) and all(key in self.seen for key in keys)

        await wait_until(arrived, timeout=timeout)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()


@contextlib.asynccontextmanager
async def started_producer(bootstrap: str, *, plain: bool = False) -> AsyncIterator[AIOKafkaProducer]:
    """The idempotent producer every service publishes with, started. `plain`: with aiokafka's own partitioner, as
    a bare producer has (the baselines of `outbox_relay`); the services' hashes keys in compiled code
    (`outbox.partition_of`), to the same partitions."""
    producer = outbox.new_producer(bootstrap, partitioner=DefaultPartitioner() if plain else outbox.partition_of)
    await producer.start()
    try:
        yield producer
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
    """Records on a topic applied by the service consumer (inbox + effect row) vs a plain consumer loop: a backlog
    already on the topic for the throughput, records sent at a constant rate for the latency."""

    def __init__(self, stack: Stack, dsn: str) -> None:
        self.stack = stack
        self.dsn = dsn

    async def _produce(self, count: int) -> str:
        topic = await create_topic(self.stack, f"bench-consume-{uuid.uuid4().hex[:8]}")
        async with started_producer(self.stack.bootstrap) as producer:
            futures = []
            for n in range(count):
                key, value, headers = encode(Envelope(event=order_placed(n)))
                futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            await asyncio.gather(*futures)
        return topic

    @contextlib.asynccontextmanager
    async def _consuming(self, topic: str, *, ours: bool) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
        """One side's consumer applying `topic` from its start (its own group), and the pool and run its effect rows
        are written with."""
        run = uuid.uuid4().hex
        pool = await db.create_pool(ServiceSettings(database_url=self.dsn))
        await pool.execute(EFFECTS)
        if ours:
            task = asyncio.create_task(self._ours(pool, topic, run))
        else:
            task = asyncio.create_task(self._baseline(pool, topic, run))
        try:
            yield pool, run
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pool.close()

    async def _ours(self, pool: asyncpg.Pool, topic: str, run: str) -> None:
        async def effect(conn: Conn, envelope: Envelope) -> None:
            await conn.execute(INSERT_EFFECT, envelope.id, run)

        consumer = Consumer(
            group=f"bench-{run}",
            topics=[topic],
            pool=pool,
            bootstrap=self.stack.bootstrap,
            handlers={events.OrderPlaced: effect},
        )
        try:
            await consumer.run()
        finally:
            await consumer.stop()

    async def _baseline(self, pool: asyncpg.Pool, topic: str, run: str) -> None:
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
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                for tp, records in batches.items():
                    async with pool.acquire() as conn, conn.transaction():
                        for record in records:
                            ce_id = next(v for k, v in record.headers if k == "ce_id").decode()
                            await conn.execute(INSERT_EFFECT, ce_id, run)
                    await consumer.commit({tp: records[-1].offset + 1})
        finally:
            await consumer.stop()

    async def _throughput(self, count: int, *, ours: bool) -> Timed:
        topic = await self._produce(count)
        meter = CpuMeter(self.stack.processes())
        async with self._consuming(topic, ours=ours) as (pool, run):
            await _applied(pool, run, count)
            cpu = meter.cores()
            span = await pool.fetchrow(
                "SELECT max(applied_at) - min(applied_at) FROM bench_effects WHERE run = $1", run
            )
        assert span is not None
        seconds = max(span[0].total_seconds(), 1e-6)
        return Timed((count - 1) / seconds, cpu)

    async def ours(self, count: int) -> Timed:
        return await self._throughput(count, ours=True)

    async def baseline(self, count: int) -> Timed:
        return await self._throughput(count, ours=False)

    async def latency(self, *, ours: bool, rate: float, seconds: float) -> list[float]:
        """ms from each record's due time (`paced`, in ticks of 10 ms; sent by the bare producer) until its effect row
        was written (`applied_at`), once the consumer has joined its group and applied a first record."""
        topic = await create_topic(self.stack, f"bench-consume-{uuid.uuid4().hex[:8]}")
        envs = [Envelope(event=order_placed(n)) for n in range(1 + max(1, int(rate * seconds)))]
        records = [encode(env) for env in envs]  # made beforehand: the consumer shares this process's CPU
        due: dict[str, float] = {}
        async with (
            started_producer(self.stack.bootstrap) as producer,
            self._consuming(topic, ours=ours) as (pool, run),
        ):

            async def send(items: range, at: float) -> None:
                sent = []
                for n in items:
                    key, value, headers = records[n]
                    due[envs[n].id] = at
                    sent.append(await producer.send(topic, value=value, key=key, headers=headers))
                await asyncio.gather(*sent)

            await send(range(len(envs) - 1, len(envs)), time.time())  # the last one first, alone
            await _applied(pool, run, 1)
            due.clear()
            with collector_paused():
                count = 1 + await paced(send, rate=rate, seconds=seconds)
                await _applied(pool, run, count)
            rows = await pool.fetch("SELECT event_id::text, applied_at FROM bench_effects WHERE run = $1", run)
        return [(r["applied_at"].timestamp() - due[r["event_id"]]) * 1000 for r in rows if r["event_id"] in due]


async def _applied(pool: asyncpg.Pool, run: str, count: int) -> None:
    async def done() -> bool:
        return bool(await pool.fetchval("SELECT count(*) FROM bench_effects WHERE run = $1", run) >= count)

    await wait_until(done, timeout=600, interval=0.05)
