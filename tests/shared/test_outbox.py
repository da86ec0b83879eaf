"""The outbox relay against the real broker: published iff committed, in order per key, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from backoffice import db, outbox
from backoffice.envelope import header_map
from backoffice.settings import ServiceSettings
from backoffice.topics import ensure_topics, events_topic
from devstack.kafka import KafkaBroker
from devstack.procs import free_port
from tests.conftest import BOOTSTRAP, eventually, read_topic
from tests.shared.helpers import append_numbered, by_key, ce_ids, fatal_admin_shutdown, messaging_db, numbered


async def _unsent(dsn: str) -> int:
    """Rows still in the outbox: the relay deletes each once Kafka has acknowledged it."""
    conn = await asyncpg.connect(dsn)
    try:
        return await outbox.unsent_count(conn)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def relaying(dsn: str, bootstrap: str = BOOTSTRAP, batch_size: int = 500, prefix: str = ""):  # type: ignore[no-untyped-def]
    relay = outbox.Relay(dsn=dsn, bootstrap=bootstrap, topic_prefix=prefix, batch_size=batch_size, poll_interval=0.2)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await relay.stop()


class TestPublishedIffCommitted:
    async def test_rolled_back_event_is_never_published(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await messaging_db(await make_database("outbox_iff"))
        conn = await asyncpg.connect(dsn)
        tx = conn.transaction()
        await tx.start()
        rolled_back = await outbox.append(conn, numbered("iff-rolled-back", 0))
        await tx.rollback()
        async with conn.transaction():
            committed = await outbox.append(conn, numbered("iff-committed", 0))
        await conn.close()
        async with relaying(dsn, prefix=topics):
            records = await read_topic(
                events_topic("orders", prefix=topics), until=lambda rs: committed.id in ce_ids(rs)
            )
        assert committed.id in ce_ids(records)
        assert rolled_back.id not in ce_ids(records)
        h = header_map(next(r for r in records if header_map(r.headers)["ce_id"] == committed.id).headers)
        assert h["ce_type"] == "backoffice.orders.OrderConfirmed.v1"


class TestPartitioning:
    # Kafka's own test vectors for its Java client's murmur2 (`UtilsTest.testMurmur2`), as signed 32-bit ints.
    JAVA_MURMUR2 = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }

    @pytest.mark.parametrize("partitions", [1, 3, 6, 7, 1000])
    def test_a_key_goes_where_the_java_client_puts_it(self, partitions: int) -> None:
        for key, hashed in self.JAVA_MURMUR2.items():
            expected = (hashed & 0x7FFFFFFF) % partitions
            assert outbox.partition_of(key, list(range(partitions)), []) == expected, key

    @given(key=st.binary(max_size=200), count=st.integers(min_value=1, max_value=64), first=st.integers(0, 5))
    def test_a_key_goes_where_aiokafkas_own_partitioner_puts_it(self, key: bytes, count: int, first: int) -> None:
        partitions = list(range(first, first + count))
        available = partitions[::2]
        assert outbox.partition_of(key, partitions, available) == DefaultPartitioner()(key, partitions, available)

    def test_a_record_without_a_key_goes_to_an_available_partition_or_any_when_none_is(self) -> None:
        assert {outbox.partition_of(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)} == {1, 3}
        assert {outbox.partition_of(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}

    async def test_the_services_producer_uses_it(self) -> None:
        producer = outbox.new_producer("127.0.0.1:1")  # never started: nothing connects
        assert producer._partitioner is outbox.partition_of


class TestOrderAndRecovery:
    async def test_every_row_published_in_order_per_key(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await messaging_db(await make_database("outbox_order"))
        keys = [f"order-key-{i}" for i in range(7)]
        ids = await append_numbered(dsn, keys=keys, per_key=40)
        async with relaying(dsn, prefix=topics, batch_size=50):
            records = await read_topic(
                events_topic("orders", prefix=topics), until=lambda rs: set(ids) <= set(ce_ids(rs))
            )
        seqs = by_key([r for r in records if r.key.decode() in keys])
        assert {k: seqs[k] for k in keys} == {k: list(range(40)) for k in keys}

    async def test_rows_beyond_a_record_batch_go_in_several_in_order_each_where_the_partitioner_puts_it(
        self, topics: str, make_database: Callable[[str], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        dsn = await messaging_db(await make_database("outbox_split"))
        keys = [f"split-key-{i}" for i in range(9)]
        ids = await append_numbered(dsn, keys=keys, per_key=30)
        made = outbox.new_producer
        batches: list[tuple[str, int]] = []

        def small(bootstrap: str, **kwargs: Any) -> Any:
            producer = made(bootstrap, **kwargs, max_batch_size=2048)  # a few records a batch
            send_batch = producer.send_batch

            async def counted(batch: Any, topic: str, *, partition: int) -> Any:
                batches.append((topic, partition))
                return await send_batch(batch, topic, partition=partition)

            producer.send_batch = counted  # type: ignore[method-assign]
            return producer

        monkeypatch.setattr(outbox, "new_producer", small)
        async with relaying(dsn, prefix=topics, batch_size=270):
            records = await read_topic(
                events_topic("orders", prefix=topics), until=lambda rs: set(ids) <= set(ce_ids(rs))
            )
        ours = [r for r in records if r.key.decode() in keys]
        seqs = by_key(ours)
        assert {k: seqs[k] for k in keys} == {k: list(range(30)) for k in keys}
        partitions = [0, 1, 2]  # the `topics` fixture makes three a topic
        assert all(r.partition == outbox.partition_of(r.key, partitions, partitions) for r in ours)
        used = {outbox.partition_of(k.encode(), partitions, partitions) for k in keys}
        assert len(batches) > len(used), "270 rows in batches of 2 KiB should take several batches a partition"

    async def test_relay_killed_mid_batch_then_restarted_publishes_every_row_in_order(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await messaging_db(await make_database("outbox_kill"))
        keys = [f"kill-key-{i}" for i in range(5)]
        ids = await append_numbered(dsn, keys=keys, per_key=100)
        async with relaying(dsn, prefix=topics, batch_size=25):
            async with asyncio.timeout(30):
                while await _unsent(dsn) > len(ids) - 50:
                    await asyncio.sleep(0.01)
        assert await _unsent(dsn) > 0, "the relay should have been stopped part-way"
        async with relaying(dsn, prefix=topics, batch_size=25):
            records = await read_topic(
                events_topic("orders", prefix=topics), until=lambda rs: set(ids) <= set(ce_ids(rs))
            )
        seqs = by_key([r for r in records if r.key.decode() in keys])
        assert {k: seqs[k] for k in keys} == {k: list(range(100)) for k in keys}

    async def test_two_relays_on_one_database_neither_duplicate_nor_reorder(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await messaging_db(await make_database("outbox_two"))
        keys = [f"two-key-{i}" for i in range(16)]
        async with (
            relaying(dsn, prefix=topics, batch_size=20) as first,
            relaying(dsn, prefix=topics, batch_size=20) as second,
        ):
            ids = await append_numbered(dsn, keys=keys, per_key=30)
            records = await read_topic(
                events_topic("orders", prefix=topics), until=lambda rs: set(ids) <= set(ce_ids(rs))
            )
            assert first.lanes and second.lanes, "both replicas should relay a share of the lanes"
            assert not first.lanes & second.lanes
        mine = [r for r in records if r.key.decode() in keys]
        assert len(ce_ids(mine)) == len(set(ce_ids(mine))) == len(ids)
        seqs = by_key(mine)
        assert {k: seqs[k] for k in keys} == {k: list(range(30)) for k in keys}


class TestPacing:
    async def test_a_trickle_is_published_at_most_once_per_min_cycle(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        """Rows written one at a time, each waking the relay, are published together once `min_cycle` has passed
        since the last publication (the first, after a quiet spell, at once): two publications for eight rows."""
        dsn = await messaging_db(await make_database("outbox_pacing"))
        relay = outbox.Relay(
            dsn=dsn, bootstrap=BOOTSTRAP, topic_prefix=topics, batch_size=100, poll_interval=5.0, min_cycle=2.0
        )
        real = relay.publish_batch
        publications: list[int] = []

        async def counted() -> int:
            sent = await real()
            if sent:
                publications.append(sent)
            return sent

        relay.publish_batch = counted  # type: ignore[method-assign]
        task = asyncio.create_task(relay.run())
        ids: list[str] = []
        try:
            await eventually(lambda: _holds_lanes(relay))
            await asyncio.sleep(2.2)  # a quiet spell longer than min_cycle
            for n in range(8):
                ids += await append_numbered(dsn, keys=["paced"], per_key=1, start=n)
                relay._written()  # what releasing a pool connection that wrote outbox rows does
                await asyncio.sleep(0.05)
            await eventually(lambda: _all_sent(dsn), timeout=20)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await relay.stop()
        assert len(ids) == 8 and len(publications) == 2 and sum(publications) == 8


async def _holds_lanes(relay: outbox.Relay) -> bool:
    return bool(relay.lanes)


async def _all_sent(dsn: str) -> bool:
    return await _unsent(dsn) == 0


async def _relay_until_read(relay: outbox.Relay, topics: str, ids: list[str]) -> list[Any]:
    """Run `relay` until every event of `ids` is on the orders topic, then stop it; the records read."""
    task = asyncio.create_task(relay.run())
    try:
        return await read_topic(events_topic("orders", prefix=topics), until=lambda rs: set(ids) <= set(ce_ids(rs)))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await relay.stop()


class TestNeverStops:
    """A relay that fails in a way nobody foresaw, or hangs, goes on publishing: a stopped relay would leave every
    later row unsent while the service still answers."""

    @pytest.mark.parametrize("failure", ["hangs", "raises"])
    async def test_a_cycle_that_hangs_or_raises_the_unexpected_is_abandoned_and_every_row_still_published(
        self, failure: str, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await messaging_db(await make_database(f"outbox_{failure}"))
        keys = [f"{failure}-key-{i}" for i in range(3)]
        ids = await append_numbered(dsn, keys=keys, per_key=20)
        relay = outbox.Relay(dsn=dsn, bootstrap=BOOTSTRAP, topic_prefix=topics, batch_size=10, poll_interval=0.2)
        relay.CYCLE_TIMEOUT_S = 1.0
        real = relay.publish_batch
        broken = [True]

        async def first_fails() -> int:
            if broken and broken.pop():
                if failure == "hangs":
                    await asyncio.Event().wait()
                raise RuntimeError("nobody foresaw this")
            return await real()

        relay.publish_batch = first_fails  # type: ignore[method-assign]
        records = await _relay_until_read(relay, topics, ids)
        assert not broken, "the failure was never met"
        seqs = by_key([r for r in records if r.key.decode() in keys])
        assert {k: seqs[k] for k in keys} == {k: list(range(20)) for k in keys}
        assert await _unsent(dsn) == 0

    async def test_a_connection_the_server_ended_while_idle_is_a_retry_not_a_failure(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        """What asyncpg reads when PostgreSQL ends an idle connection (a restart, pg_terminate_backend): its FATAL
        error, unasked for, leaves the protocol consuming an error, and the next statement raises InternalClientError
        ("another operation (2) is in progress"). That is a lost connection, retried on a new one: the producer is
        kept (an unexpected failure rebuilds both clients)."""
        dsn = await messaging_db(await make_database("outbox_ended_idle"))
        keys = [f"ended-key-{i}" for i in range(3)]
        ids = await append_numbered(dsn, keys=keys, per_key=20)
        relay = outbox.Relay(dsn=dsn, bootstrap=BOOTSTRAP, topic_prefix=topics, batch_size=10, poll_interval=0.2)
        real = relay.publish_batch
        ended: list[int] = []
        seen: list[tuple[int, object]] = []  # (server pid, producer) of every batch

        async def first_finds_it_ended() -> int:
            assert relay._conn is not None
            seen.append((relay._conn.get_server_pid(), relay.producer))
            if not ended:
                ended.append(relay._conn.get_server_pid())
                relay._conn._protocol.data_received(fatal_admin_shutdown())  # type: ignore[attr-defined]
            return await real()

        relay.publish_batch = first_finds_it_ended  # type: ignore[method-assign]
        records = await _relay_until_read(relay, topics, ids)
        assert ended, "the ended connection was never met"
        assert {pid for pid, _ in seen[1:]} and ended[0] not in {pid for pid, _ in seen[1:]}  # a new connection
        assert {id(producer) for _, producer in seen} == {id(seen[0][1])}  # one producer throughout
        seqs = by_key([r for r in records if r.key.decode() in keys])
        assert {k: seqs[k] for k in keys} == {k: list(range(20)) for k in keys}
        assert await _unsent(dsn) == 0


@pytest.fixture(scope="module")
async def private_broker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A broker of this module's own, so that stopping it disturbs no other test."""
    broker = KafkaBroker(
        Path(tmp_path_factory.mktemp("broker")), port=free_port(), controller_port=free_port(), partitions=3
    )
    broker.start()
    from devstack.kafka import wait_ready

    await wait_ready(broker.bootstrap, broker=broker)
    await ensure_topics(broker.bootstrap, partitions=3)
    yield broker
    broker.stop()


class TestBrokerOutage:
    async def test_broker_stopped_and_restarted_under_the_relay_loses_nothing(
        self, private_broker: KafkaBroker, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        from devstack.kafka import wait_ready

        dsn = await messaging_db(await make_database("outbox_outage"))
        keys = ["outage-a", "outage-b"]
        async with relaying(dsn, bootstrap=private_broker.bootstrap, batch_size=10):
            before = await append_numbered(dsn, keys=keys, per_key=10)
            await asyncio.sleep(1)
            private_broker.stop()
            during = await append_numbered(dsn, keys=keys, per_key=10, start=10)
            await asyncio.sleep(2)
            assert outbox.OLDEST_UNSENT._value.get() > 0  # type: ignore[attr-defined]
            private_broker.start()
            await wait_ready(private_broker.bootstrap, broker=private_broker)
            records = await read_topic(
                "orders.events",
                bootstrap=private_broker.bootstrap,
                timeout=60,
                until=lambda rs: set(before + during) <= set(ce_ids(rs)),
            )
        assert set(before + during) <= set(ce_ids(records))
        seqs = by_key(records)
        assert {k: seqs[k] for k in keys} == {k: list(range(20)) for k in keys}


class TestWaking:
    async def test_a_commit_through_the_pool_wakes_this_relay_and_notifies_the_other_before_any_poll(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await messaging_db(await make_database("outbox_wake"))
        here = outbox.Relay(dsn=dsn, bootstrap=BOOTSTRAP, topic_prefix=topics, poll_interval=0.3)
        there = outbox.Relay(dsn=dsn, bootstrap=BOOTSTRAP, topic_prefix=topics, poll_interval=0.3)
        tasks = [asyncio.create_task(here.run())]
        # `there` stands for a replica in another process: it hears only NOTIFY, never this process's pool.
        tasks.append(asyncio.create_task(there.run()))
        await asyncio.sleep(0)
        db._on_outbox_released.remove(there._written)
        pool = await db.create_pool(ServiceSettings(database_url=dsn))
        try:
            async with asyncio.timeout(20):
                while not (len(here.lanes) == len(there.lanes) == outbox.LANES // 2):
                    await asyncio.sleep(0.05)
            here.poll_interval = there.poll_interval = 3600.0  # from now on only a wake-up publishes
            await asyncio.sleep(0.5)  # the waits begun with the short interval are over
            keys = [f"wake-{n}" for n in range(32)]
            lanes = {outbox.lane_of(k) for k in keys}
            assert lanes & here.lanes and lanes & there.lanes
            async with pool.acquire() as conn, conn.transaction():
                written = await outbox.append_many(conn, [numbered(k, 0) for k in keys])
            records = await read_topic(
                events_topic("orders", prefix=topics),
                until=lambda rs: {e.id for e in written} <= set(ce_ids(rs)),
                timeout=20,
            )
        finally:
            await pool.close()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await here.stop()
            await there.stop()
        assert {e.id for e in written} <= set(ce_ids(records))

    async def test_a_rolled_back_write_wakes_the_relay_for_nothing_and_publishes_nothing(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await messaging_db(await make_database("outbox_wake_rollback"))
        pool = await db.create_pool(ServiceSettings(database_url=dsn))
        try:
            with contextlib.suppress(RuntimeError):
                async with pool.acquire() as conn, conn.transaction():
                    await outbox.append(conn, numbered("wake-rolled-back", 0))
                    raise RuntimeError("abandon the change")
            async with pool.acquire() as conn, conn.transaction():
                kept = await outbox.append(conn, numbered("wake-kept", 0))
        finally:
            await pool.close()
        assert not db._outbox_writers  # every writer was released, and forgotten
        async with relaying(dsn, prefix=topics):
            records = await read_topic(events_topic("orders", prefix=topics), until=lambda rs: kept.id in ce_ids(rs))
        mine = [r.key.decode() for r in records if r.key.decode() in ("wake-rolled-back", "wake-kept")]
        assert mine == ["wake-kept"]


class TestReadPlan:
    async def test_a_backlog_is_read_in_seq_order_from_the_primary_key_and_stops_after_a_batch(
        self, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await messaging_db(await make_database("outbox_plan"))
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(
                "INSERT INTO outbox (event_id, lane, topic, key, headers, payload)"
                " VALUES (gen_random_uuid(), $1, 't', $2, '[]', '\\x00')",
                [(n % outbox.LANES, f"k{n}") for n in range(20_000)],
            )
            await conn.execute("ANALYZE outbox")
            indexes = [
                r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'outbox'")
            ]
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)"
                    " SELECT seq FROM outbox WHERE sent_at IS NULL AND lane = ANY($1::int[])"
                    " AND seq <> ALL($3::bigint[]) AND seq <> ALL($4::bigint[]) ORDER BY seq LIMIT $2",
                    list(range(0, outbox.LANES, 2)),
                    500,
                    [],
                    [],
                )
            )
        finally:
            await conn.close()
        assert "outbox_unsent_seq" not in indexes  # its entries duplicated the primary key's (migration 0007)
        assert "Index Scan using outbox_pkey" in plan and "Sort" not in plan, plan
        # it stopped after the batch: 500 rows of the lanes asked for, about as many of the others passed over
        assert float(re.search(r"Index Scan.*actual rows=([\d.]+)", plan)[1]) == 500, plan  # type: ignore[index]
        assert int(re.search(r"Rows Removed by Filter: (\d+)", plan)[1]) < 1000, plan  # type: ignore[index]
