"""The idempotent consumer on the real broker: once per event, poison to the DLQ, transient failures retried."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from backoffice.consumer import RETRIES, Batched, Consumer, Handler
from backoffice.db import create_pool
from backoffice.envelope import Envelope, encode, header_map
from backoffice.errors import NotFound
from backoffice.events import Event, Line, OrderConfirmed, OrderShipped
from backoffice.settings import ServiceSettings
from devstack.postgres import PostgresServer
from devstack.procs import free_port
from tests.conftest import BOOTSTRAP, create_topics, eventually, produce, read_topic
from tests.shared.helpers import fatal_admin_shutdown, messaging_db

EFFECTS = "CREATE TABLE IF NOT EXISTS effects (event_id uuid NOT NULL, key text NOT NULL, n int NOT NULL)"


async def record_effect(conn: asyncpg.Connection, envelope: Envelope) -> None:
    event = envelope.event
    assert isinstance(event, OrderConfirmed)
    if event.order_id.startswith("missing"):
        raise NotFound(f"order {event.order_id} is unknown here")
    await conn.execute(
        "INSERT INTO effects (event_id, key, n) VALUES ($1, $2, $3)",
        envelope.id,
        event.order_id,
        int(event.customer_id),
    )


def good(key: str, n: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return encode(Envelope(event=OrderConfirmed(order_id=key, customer_id=str(n), confirmed_at=datetime.now(UTC))))


async def _db(dsn: str) -> str:
    await messaging_db(dsn)
    conn = await asyncpg.connect(dsn)
    await conn.execute(EFFECTS)
    await conn.close()
    return dsn


@contextlib.asynccontextmanager
async def consuming(
    dsn: str,
    *,
    group: str,
    topic: str,
    bootstrap: str = BOOTSTRAP,
    batch_size: int = 100,
    commit_interval: float = 0.5,
    handlers: Mapping[type[Event], Handler] | None = None,
    gather_ms: int = 0,
) -> AsyncIterator[Consumer]:
    pool = await create_pool(ServiceSettings(database_url=dsn, db_pool_min=1, db_pool_max=4))
    consumer = Consumer(
        group=group,
        topics=[topic],
        pool=pool,
        bootstrap=bootstrap,
        batch_size=batch_size,
        handlers=handlers or {OrderConfirmed: record_effect},
        commit_interval=commit_interval,
        gather_ms=gather_ms,
    )
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()
        await pool.close()


async def count(dsn: str, sql: str = "SELECT count(*) FROM effects") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


@pytest.fixture
async def channel(topics: str) -> tuple[str, str]:
    """A topic and a consumer group of this test's own, with the group's dead-letter topic."""
    name = uuid.uuid4().hex[:8]
    topic, group = f"{topics}c-{name}.events", f"{topics}grp-{name}"
    await create_topics(topic, f"{group}.dlq")
    return topic, group


class TestAtMostOnce:
    async def test_a_record_delivered_twice_is_applied_once(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        topic, group = channel
        dsn = await _db(await make_database("consumer_twice"))
        record = good("twice", 1)
        await produce(topic, [record, good("other", 2), record])
        async with consuming(dsn, group=group, topic=topic):
            await eventually(lambda: _inbox_at_least(dsn, 2))
            await asyncio.sleep(1)
        assert await count(dsn, "SELECT count(*) FROM effects WHERE key = 'twice'") == 1
        assert await count(dsn) == 2

    async def test_batches_of_many_records_are_all_applied_once(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        topic, group = channel
        dsn = await _db(await make_database("consumer_batch"))
        await produce(topic, [good(f"k{i % 13}", i) for i in range(1000)])
        async with consuming(dsn, group=group, topic=topic, batch_size=250):
            await eventually(lambda: _effects_at_least(dsn, 1000), timeout=60)
        assert await count(dsn) == 1000
        assert await count(dsn, "SELECT count(DISTINCT n) FROM effects") == 1000

    async def test_replacing_a_consumer_mid_stream_neither_loses_nor_doubles(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        topic, group = channel
        dsn = await _db(await make_database("consumer_rebalance"))
        await produce(topic, [good(f"r{i % 7}", i) for i in range(1500)])
        async with consuming(dsn, group=group, topic=topic, batch_size=50):
            await eventually(lambda: _effects_at_least(dsn, 100), timeout=60)
            async with consuming(dsn, group=group, topic=topic, batch_size=50):
                await eventually(lambda: _effects_at_least(dsn, 700), timeout=60)
            await eventually(lambda: _effects_at_least(dsn, 1500), timeout=90)
        assert await count(dsn) == 1500
        assert await count(dsn, "SELECT count(DISTINCT event_id) FROM effects") == 1500


async def committed(group: str) -> int:
    """The sum of the offsets `group` has committed (its records acknowledged)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(max(meta.offset, 0) for meta in offsets.values())


class TestOffsets:
    async def test_offsets_are_committed_at_a_pace_while_records_flow_and_at_once_when_they_stop(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        topic, group = channel
        dsn = await _db(await make_database("consumer_pace"))
        total = 120
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True)
        await producer.start()
        try:
            async with consuming(dsn, group=group, topic=topic, commit_interval=3600):
                for n in range(total):  # a steady trickle: every poll finds records, none is quiet
                    key, value, headers = good(f"p{n % 5}", n)
                    await producer.send_and_wait(topic, value=value, key=key, headers=headers)
                    await asyncio.sleep(0.02)
                    if n == total * 3 // 4:
                        flowing_applied, flowing_committed = await count(dsn), await committed(group)
                await eventually(lambda: _effects_at_least(dsn, total))
                await eventually(lambda: _committed_at_least(group, total), timeout=10)
        finally:
            await producer.stop()
        # A commit per poll would keep the committed offsets within a poll of the applied records.
        assert flowing_applied > 50
        assert flowing_committed < flowing_applied - 20
        assert await committed(group) == total
        assert await count(dsn) == total


class _Unreachable:
    """A Kafka consumer whose coordinator never answers (aiokafka then waits for one indefinitely)."""

    stopped = False

    async def commit(self, offsets: object) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.stopped = True


class TestStopping:
    async def test_stopping_gives_up_a_commit_kafka_does_not_answer(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(Consumer, "CLOSE_COMMIT_TIMEOUT_S", 0.2)
        consumer = Consumer(group="g", topics=["t"], pool=None, bootstrap="unused:9092", handlers={})  # type: ignore[arg-type]
        kafka = _Unreachable()
        consumer._consumer = kafka  # type: ignore[assignment]
        consumer._uncommitted = {TopicPartition("t", 0): 42}
        async with asyncio.timeout(5):
            await consumer.stop()
        assert kafka.stopped
        assert consumer._consumer is None


class _Flaky:
    """A Kafka consumer whose first commit fails the way a broker restart makes it fail."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.committed: list[dict[TopicPartition, int]] = []
        self.failures = 1

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("the broker went away")
        self.committed.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


class TestCommitFailure:
    async def test_offsets_of_a_failed_commit_are_committed_by_the_next_of_partitions_still_assigned(self) -> None:
        mine, moved = TopicPartition("t", 0), TopicPartition("t", 1)
        consumer = Consumer(group="g", topics=["t"], pool=None, bootstrap="unused:9092", handlers={})  # type: ignore[arg-type]
        kafka = _Flaky(assigned={mine})
        consumer._consumer = kafka  # type: ignore[assignment]
        consumer._uncommitted = {mine: 10, moved: 7}
        await consumer.commit()
        assert kafka.committed == []
        await consumer.commit()
        assert kafka.committed == [{mine: 10}]  # the moved partition is its new owner's to commit


async def _committed_at_least(group: str, n: int) -> bool:
    return await committed(group) >= n


class TestGathering:
    async def test_a_gathering_consumer_applies_a_trickle_in_few_transactions(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        """With `gather_ms`, the broker holds a fetch until that long has passed: events produced one at a time over
        0.3 s are applied together, in one or two transactions, and each once."""
        topic, group = channel
        dsn = await _db(await make_database("consumer_gathering"))
        async with consuming(dsn, group=group, topic=topic, gather_ms=1500) as consumer:
            await eventually(lambda: _assigned(consumer))
            producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True)
            await producer.start()
            try:
                for i in range(10):
                    key, value, headers = good("trickle", i)
                    await producer.send_and_wait(topic, value=value, key=key, headers=headers)
                    await asyncio.sleep(0.03)
            finally:
                await producer.stop()
            await eventually(lambda: _effects_at_least(dsn, 10), timeout=30)
        assert await count(dsn, "SELECT count(DISTINCT event_id) FROM effects") == await count(dsn) == 10
        assert await count(dsn, "SELECT count(DISTINCT received_at) FROM inbox") <= 2

    def test_only_consumers_and_relays_off_the_order_to_ledger_path_gather(self) -> None:
        from billing.settings import Settings as Billing
        from ledger.settings import Settings as Ledger
        from orders.settings import Settings as Orders
        from support.settings import Settings as Support

        assert [s().consumer_gather_ms for s in (Billing, Ledger)] == [0, 0]
        assert [s().consumer_gather_ms for s in (Orders, Support)] == [200, 200]
        # and the relays of orders and billing, on that path, publish within 50 ms; ledger's and support's gather
        assert [s().outbox_min_cycle_ms for s in (Orders, Billing, Ledger, Support)] == [50, 50, 250, 250]


async def _assigned(consumer: Consumer) -> bool:
    return consumer._consumer is not None and bool(consumer._consumer.assignment())


class TestBatchedHandlers:
    """A `Batched` handler takes each run of consecutive fresh events in one call, in record order; a refused event
    in a run is dead-lettered alone."""

    async def test_runs_are_applied_in_one_call_each_in_order_and_a_refused_event_alone_is_dead_lettered(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        topic, group = channel
        dsn = await _db(await make_database("consumer_batched"))
        calls: list[list[int]] = []  # the n of the events of each call

        async def record_effects(conn: asyncpg.Connection, envelopes: list[Envelope]) -> None:
            calls.append([int(e.event.customer_id) for e in envelopes])  # type: ignore[attr-defined]
            for envelope in envelopes:
                await record_effect(conn, envelope)

        shipped: list[str] = []

        async def note_shipped(conn: asyncpg.Connection, envelope: Envelope) -> None:
            shipped.append(envelope.id)

        interloper = encode(
            Envelope(
                event=OrderShipped(
                    order_id="one",
                    customer_id="c",
                    shipment_id="s",
                    currency="EUR",
                    lines=(Line(sku="A", quantity=1, unit_price_minor=1),),
                    subtotal_minor=1,
                    shipped_at=datetime.now(UTC),
                )
            )
        )
        first = [good("one", n) for n in range(40)]  # one key: one partition, in this order
        first.insert(10, interloper)  # handled by another handler: a run stops at it and resumes after it
        handlers: dict[type[Event], Handler] = {OrderConfirmed: Batched(record_effects), OrderShipped: note_shipped}
        async with consuming(dsn, group=group, topic=topic, handlers=handlers):
            await produce(topic, first)
            await eventually(lambda: _effects_at_least(dsn, 40))
            assert len(shipped) == 1
            assert max(len(ns) for ns in calls) > 1  # runs were applied in one call, not an event at a time
            assert not any(9 in ns and 10 in ns for ns in calls)  # no run spans the other handler's event
            calls.clear()
            await produce(topic, [good("one", 40), good("missing-order", 41), good("one", 42)])
            dead = await read_topic(f"{group}.dlq", until=lambda rs: len(rs) >= 1)
            await eventually(lambda: _effects_at_least(dsn, 42))
        assert [header_map(r.headers)["dlq_reason"].split(":")[0] for r in dead] == ["rejected"]
        assert [41] in calls  # the refused event, alone in its call (redone with a savepoint per record)
        conn = await asyncpg.connect(dsn)
        try:
            applied = [r["n"] for r in await conn.fetch("SELECT n FROM effects ORDER BY ctid")]
        finally:
            await conn.close()
        assert applied == [*range(41), 42]  # once each, in record order across calls


class TestPoison:
    async def test_poison_goes_to_the_dlq_with_headers_and_good_records_are_applied(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        topic, group = channel
        dsn = await _db(await make_database("consumer_poison"))
        headers_ok = good("x", 0)[2]
        unknown = [(k, b"backoffice.orders.NoSuchThing.v1" if k == "ce_type" else v) for k, v in headers_ok]
        fresh = [(k, str(uuid.uuid4()).encode() if k == "ce_id" else v) for k, v in headers_ok]
        poison = [
            (b"p1", b"{not json", fresh),
            (b"p2", b"{}", unknown),
            (
                b"p3",
                b'{"order_id": "p3"}',
                [(k, str(uuid.uuid4()).encode() if k == "ce_id" else v) for k, v in headers_ok],
            ),
            good("missing-order", 99),
        ]
        batch = [good("g1", 1), poison[0], good("g2", 2), poison[1], poison[2], good("g3", 3), poison[3], good("g4", 4)]
        await produce(topic, batch)
        async with consuming(dsn, group=group, topic=topic):
            dead = await read_topic(f"{group}.dlq", until=lambda rs: len(rs) >= 4)
            await eventually(lambda: _effects_at_least(dsn, 4))
        assert await count(dsn) == 4
        assert len(dead) == 4
        for record in dead:
            h = header_map(record.headers)
            assert h["dlq_topic"] == topic
            assert int(h["dlq_partition"]) >= 0 and int(h["dlq_offset"]) >= 0
            assert h["dlq_reason"]
            assert "ce_type" in h
        reasons = " ".join(header_map(r.headers)["dlq_reason"] for r in dead)
        assert "not JSON" in reasons and "unknown event type" in reasons and "schema" in reasons
        assert "rejected: NotFound" in reasons


@pytest.fixture
async def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresServer]:
    server = PostgresServer(Path(tmp_path_factory.mktemp("pg")), port=free_port(), fast_durability=True)
    server.start()
    yield server
    server.stop()


class TestTransientFailures:
    async def test_database_stopped_under_the_consumer_is_retried_not_dead_lettered(
        self, channel: tuple[str, str], private_postgres: PostgresServer
    ) -> None:
        topic, group = channel
        dsn = await _db(f"postgresql://postgres@127.0.0.1:{private_postgres.port}/postgres")
        await produce(topic, [good("before", i) for i in range(5)])
        async with consuming(dsn, group=group, topic=topic):
            await eventually(lambda: _effects_at_least(dsn, 5))
            private_postgres.stop()
            await produce(topic, [good("during", i) for i in range(5, 25)])
            await asyncio.sleep(4)
            private_postgres.start()
            await eventually(lambda: _effects_at_least(dsn, 25), timeout=60)
            await asyncio.sleep(1)
        assert await count(dsn) == 25
        assert await count(dsn, "SELECT count(DISTINCT event_id) FROM effects") == 25
        dead = await read_topic(f"{group}.dlq", until=lambda rs: False, timeout=3)
        assert dead == []

    async def test_a_connection_the_server_ended_while_idle_is_retried_not_dead_lettered(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        """asyncpg's InternalClientError on a connection PostgreSQL ended (see `fatal_admin_shutdown`; it is what
        stopped the outbox relay once): here it ends the handler's transaction, whose exit then finds the connection
        closed, a transient failure. The batch is read again on another connection (the consumer is not rebuilt and
        its group not rejoined), and however often it happens, nothing is dead-lettered."""
        topic, group = channel
        dsn = await _db(await make_database("consumer_ended_idle"))
        ends = [10]  # far more than the attempts an unexpected failure gets before its record is dead-lettered
        clients: list[object] = []  # the Kafka client of the consumer at each call

        async def on_an_ended_connection(conn: asyncpg.Connection, envelope: Envelope) -> None:
            clients.append(running._consumer)
            if ends[0]:
                ends[0] -= 1
                conn._con._protocol.data_received(fatal_admin_shutdown())  # type: ignore[attr-defined]
            await record_effect(conn, envelope)

        await produce(topic, [good("ended", i) for i in range(5)])
        retried = RETRIES.labels(group)._value.get()  # type: ignore[attr-defined]
        async with consuming(
            dsn, group=group, topic=topic, handlers={OrderConfirmed: on_an_ended_connection}
        ) as running:
            await eventually(lambda: _effects_at_least(dsn, 5), timeout=60)
            await asyncio.sleep(1)
        assert ends == [0]
        assert RETRIES.labels(group)._value.get() - retried >= 10  # type: ignore[attr-defined]
        assert {id(client) for client in clients} == {id(clients[0])}  # never rebuilt, its group never rejoined
        assert await count(dsn, "SELECT count(DISTINCT event_id) FROM effects") == await count(dsn) == 5
        assert await read_topic(f"{group}.dlq", until=lambda rs: False, timeout=3) == []


async def _inbox_at_least(dsn: str, n: int) -> bool:
    return await count(dsn, "SELECT count(*) FROM inbox") >= n


async def _effects_at_least(dsn: str, n: int) -> bool:
    try:
        return await count(dsn) >= n
    except (OSError, asyncpg.PostgresError):
        return False


class TestCorrelationContinues:
    async def test_an_event_caused_by_a_handler_carries_the_cause_correlation(
        self, channel: tuple[str, str], make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        from backoffice import outbox
        from backoffice.db import Conn

        topic, group = channel
        dsn = await _db(await make_database("consumer_correlation"))

        async def cause_another(conn: Conn, envelope: Envelope) -> None:
            assert isinstance(envelope.event, OrderConfirmed)
            await outbox.append(
                conn,
                OrderConfirmed(
                    order_id=f"caused-{envelope.event.order_id}", customer_id="c", confirmed_at=datetime.now(UTC)
                ),
            )

        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        cause = Envelope(
            event=OrderConfirmed(order_id="cause", customer_id="1", confirmed_at=datetime.now(UTC)),
            correlation_id="corr-chain",
            traceparent=f"00-{trace}-00f067aa0ba902b7-01",
        )
        await produce(topic, [encode(cause)])
        pool = await create_pool(ServiceSettings(database_url=dsn, db_pool_min=1, db_pool_max=2))
        consumer = Consumer(
            group=group, topics=[topic], pool=pool, bootstrap=BOOTSTRAP, handlers={OrderConfirmed: cause_another}
        )
        task = asyncio.create_task(consumer.run())
        try:
            await eventually(lambda: _outbox_rows(dsn))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await consumer.stop()
            await pool.close()
        conn = await asyncpg.connect(dsn)
        headers = dict(json.loads(await conn.fetchval("SELECT headers::text FROM outbox")))
        await conn.close()
        assert headers["ce_correlationid"] == "corr-chain"
        assert headers["traceparent"].split("-")[1] == trace
        assert headers["ce_subject"] == "caused-cause"


async def _outbox_rows(dsn: str) -> bool:
    return await count(dsn, "SELECT count(*) FROM outbox") >= 1
