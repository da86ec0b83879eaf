"""The parts are real: the Kafka broker and PostgreSQL started by the stack, and each service on them."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from backoffice.envelope import header_map
from backoffice.topics import ensure_topics
from devstack.config import local_dsn
from devstack.kafka import KafkaBroker, new_cluster_id, wait_ready
from devstack.postgres import PostgresServer
from devstack.procs import free_port, free_ports, port_free
from tests.conftest import BOOTSTRAP, create_topics, eventually, produce, read_topic, running

SERVICES = ("orders", "billing", "support", "ledger")


def _app(service: str, **overrides: object):  # type: ignore[no-untyped-def]
    module = importlib.import_module(f"{service}.app")
    settings_cls = importlib.import_module(f"{service}.settings").Settings
    return module.create_app(settings_cls(**overrides))


def test_a_new_cluster_id_is_base64url_of_16_bytes_and_never_reads_as_an_option() -> None:
    ids = [new_cluster_id() for _ in range(2000)]  # before the fix, about 31 of these began with "-"
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert all(set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for i in ids)
    assert len(set(ids)) == len(ids)


def test_free_ports_are_distinct_bindable_never_reused_and_below_the_ephemeral_range() -> None:
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    names = [f"p{i}" for i in range(40)]
    first = free_ports(*names)
    second = [free_port() for _ in range(40)]
    ports = [*first.values(), *second]
    assert list(first) == names
    assert len(set(ports)) == len(ports) == 80
    assert all(1024 <= port < floor for port in ports)
    assert all(port_free(port) for port in ports)


class TestBroker:
    async def test_a_record_produced_is_consumed_back_with_its_headers(self, topics: str) -> None:
        topic = f"{topics}platform-roundtrip"
        await create_topics(topic)
        marker = str(uuid.uuid4()).encode()
        await produce(topic, [(b"key-1", marker, [("ce_id", marker), ("x-custom", b"\x00\x01")])])
        records = await read_topic(topic, until=lambda rs: any(r.value == marker for r in rs))
        record = next(r for r in records if r.value == marker)
        assert record.key == b"key-1"
        assert dict(record.headers) == {"ce_id": marker, "x-custom": b"\x00\x01"}

    async def test_topics_are_created_with_the_set_partition_count(self, topics: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            assert f"{topics}billing.dlq" in await admin.list_topics()
            described = await admin.describe_topics([f"{topics}orders.events"])
            assert len(described[0]["partitions"]) == 3
        finally:
            await admin.close()


class TestServices:
    @pytest.mark.parametrize("service", SERVICES)
    async def test_each_service_migrates_its_own_database_and_is_ready(
        self, service: str, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await make_database(f"platform_{service}")
        app = _app(service, database_url=dsn, kafka_bootstrap_servers=BOOTSTRAP, topic_prefix=topics)
        async with running(app) as client:
            assert (await client.get("/livez")).status_code == 200
            await eventually(lambda: _ready(client))
        conn = await asyncpg.connect(dsn)
        try:
            names = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            assert f"{service}/0001_init.sql" in names and "shared/0001_messaging.sql" in names
            marker = str(uuid.uuid4())
            await conn.execute("INSERT INTO inbox (consumer, event_id, event_type) VALUES ('rt', $1, 't')", marker)
            assert str(await conn.fetchval("SELECT event_id FROM inbox WHERE consumer = 'rt'")) == marker
            await _assert_no_statistics_on_payloads(conn, service)
        finally:
            await conn.close()


# Columns no statement filters, joins, groups or sorts on: ANALYZE gathers nothing for them (shared/0006 and the
# services' migrations after it say why). The shared tables' in every database, then each service's own.
_SHARED_UNANALYSED: dict[str, tuple[str, ...]] = {"outbox": ("headers", "payload"), "idempotency_keys": ("body",)}
_UNANALYSED: dict[str, dict[str, tuple[str, ...]]] = {
    "orders": {
        "order_events": ("data",),
        "shipments": ("lines",),
        "returns": ("lines",),
        "orders": ("shipping_address",),
    },
    "billing": {"invoices": ("lines",), "credit_notes": ("lines",), "bills": ("lines",)},
    "support": {"timeline_items": ("subject", "summary")},
    "ledger": {},
}


async def _assert_no_statistics_on_payloads(conn: asyncpg.Connection, service: str) -> None:
    tables = {**_SHARED_UNANALYSED, **_UNANALYSED[service]}
    for table, columns in tables.items():
        targets = {
            r["attname"]: r["attstattarget"]
            for r in await conn.fetch(
                "SELECT attname, attstattarget FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0",
                table,
            )
        }
        assert {c: targets[c] for c in columns} == dict.fromkeys(columns, 0), table
    await conn.execute(
        "INSERT INTO outbox (event_id, lane, topic, key, headers, payload)"
        " VALUES ($1, 0, 't', 'k', '[[\"ce_type\", \"T\"]]', '\\x7b7d')",
        uuid.uuid4(),
    )
    await conn.execute("ANALYZE outbox")
    gathered = {r["attname"] for r in await conn.fetch("SELECT attname FROM pg_stats WHERE tablename = 'outbox'")}
    assert "topic" in gathered and "key" in gathered
    assert not gathered & {"headers", "payload"}


async def _ready(client) -> bool:  # type: ignore[no-untyped-def]
    return bool((await client.get("/readyz")).status_code == 200)


async def _unready(client) -> bool:  # type: ignore[no-untyped-def]
    return bool((await client.get("/readyz")).status_code == 503)


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of the test's own, started but not yet waited for."""
    broker = KafkaBroker(tmp_path, port=free_port(), controller_port=free_port(), partitions=1)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
async def own_broker(fresh_broker: KafkaBroker) -> KafkaBroker:
    await wait_ready(fresh_broker.bootstrap, broker=fresh_broker)
    await ensure_topics(fresh_broker.bootstrap, partitions=1)
    return fresh_broker


async def test_a_fresh_broker_is_ready_only_once_it_can_coordinate_consumer_groups(fresh_broker: KafkaBroker) -> None:
    """Services start consuming as soon as the stack says Kafka is up; on a fresh broker each of them logged
    GroupCoordinatorNotAvailableError at error level until the offsets topic existed."""
    await wait_ready(fresh_broker.bootstrap, broker=fresh_broker)
    admin = AIOKafkaAdminClient(bootstrap_servers=fresh_broker.bootstrap)
    await admin.start()
    try:
        coordinators = {await admin.find_coordinator(f"group-{i}") for i in range(5)}  # each asked once
    finally:
        await admin.close()
    assert coordinators == {1}


class TestReadiness:
    async def test_readyz_turns_503_when_the_broker_stops_and_200_when_it_is_back(
        self, own_broker: KafkaBroker, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        app = _app(
            "orders", database_url=await make_database("ready_kafka"), kafka_bootstrap_servers=own_broker.bootstrap
        )
        async with running(app) as client:
            await eventually(lambda: _ready(client))
            own_broker.stop()
            await eventually(lambda: _unready(client), timeout=30)
            body = (await client.get("/readyz")).json()
            assert body["checks"]["database"] == "ok"
            assert body["checks"]["kafka"] != "ok"
            own_broker.start()
            await eventually(lambda: _ready(client), timeout=60)

    async def test_readyz_turns_503_when_the_database_stops(self, tmp_path: Path) -> None:
        server = PostgresServer(tmp_path, port=free_port(), fast_durability=True)
        server.start()
        try:
            dsn = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
            app = _app("billing", database_url=dsn, kafka_bootstrap_servers=BOOTSTRAP)
            async with running(app) as client:
                await eventually(lambda: _ready(client))
                server.stop()
                await eventually(lambda: _unready(client), timeout=20)
                assert (await client.get("/readyz")).json()["checks"]["database"] != "ok"
                server.start()
                await eventually(lambda: _ready(client), timeout=30)
        finally:
            server.stop()


class TestEnvelopeOnTheWire:
    async def test_an_event_appended_by_a_service_reaches_its_topic(
        self, topics: str, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        from datetime import UTC, datetime

        from backoffice import outbox
        from backoffice.events import OrderConfirmed

        dsn = await make_database("platform_wire")
        app = _app("orders", database_url=dsn, kafka_bootstrap_servers=BOOTSTRAP, topic_prefix=topics)
        async with running(app):
            async with app.state.pool.acquire() as conn, conn.transaction():
                env = await outbox.append(
                    conn,
                    OrderConfirmed(order_id="wire-1", customer_id="c", confirmed_at=datetime.now(UTC)),
                )
            records = await read_topic(
                f"{topics}orders.events", until=lambda rs: any(header_map(r.headers).get("ce_id") == env.id for r in rs)
            )
        assert any(header_map(r.headers).get("ce_id") == env.id for r in records)
        await asyncio.sleep(0)


class TestLocalPostgres:
    async def test_services_reach_the_local_server_through_its_unix_socket_and_tools_through_tcp(
        self, tmp_path: Path
    ) -> None:
        server = PostgresServer(tmp_path, port=free_port(), fast_durability=True)
        server.start()
        try:
            dsn = local_dsn(tmp_path, server.port, "postgres")
            assert "127.0.0.1" not in dsn
            conn = await asyncpg.connect(dsn)
            try:  # no server address: a Unix-domain connection
                assert await conn.fetchval("SELECT inet_server_addr()") is None
            finally:
                await conn.close()
            conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{server.port}/postgres")
            try:
                assert str(await conn.fetchval("SELECT inet_server_addr()")) == "127.0.0.1"
            finally:
                await conn.close()
        finally:
            server.stop()

    async def test_a_state_directory_too_deep_for_a_socket_path_gives_a_tcp_dsn(self, tmp_path: Path) -> None:
        deep = tmp_path / ("d" * 120)
        server = PostgresServer(deep, port=free_port(), fast_durability=True)
        server.start()
        try:
            dsn = local_dsn(deep, server.port, "postgres")
            assert dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
            conn = await asyncpg.connect(dsn)
            await conn.close()
        finally:
            server.stop()
