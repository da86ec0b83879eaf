"""Fixtures shared by every test: a namespace per session so runs never see each other's data.

Each session gets its own databases (`<ns>_<name>`) on the test PostgreSQL and its own topics (`<ns>.orders.events`,
...) on the test Kafka broker, both started by `make test` (or `devstack up --profile test`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI

from backoffice import ops, outbox
from backoffice.auth import issue_token
from backoffice.settings import DEV_JWT_SECRET
from backoffice.topics import delete_topics, ensure_topics

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
ADMIN_DSN = os.environ.get("BACKOFFICE_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:55433/postgres")


def dsn_for(database: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="session")
def namespace() -> str:
    return f"t{secrets.token_hex(4)}"


def topics_fixture(folder: str) -> Any:
    """A package-scoped `topics` fixture for one test folder: put `topics = topics_fixture("orders")` in its
    conftest.py. A package-scoped fixture belongs to the package whose conftest defines it, so each folder needs
    its own line for its events and consumer groups never to meet another folder's."""

    @pytest.fixture(scope="package", name="topics")
    async def _topics(namespace: str) -> AsyncIterator[str]:
        prefix = f"{namespace}.{folder}."
        await ensure_topics(BOOTSTRAP, prefix=prefix, partitions=3)
        yield prefix
        await delete_topics(BOOTSTRAP, prefix=prefix)

    return _topics


topics = topics_fixture("root")


@pytest.fixture(scope="session")
async def make_database(namespace: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """`await make_database("orders")` creates `<ns>_orders` once per session and returns its DSN."""
    created: list[str] = []

    async def make(name: str) -> str:
        database = f"{namespace}_{name}"
        if database not in created:
            conn = await asyncpg.connect(ADMIN_DSN)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                await conn.execute(f'CREATE DATABASE "{database}"')
            finally:
                await conn.close()
            created.append(database)
        return dsn_for(database)

    yield make
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        for database in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def token(scopes: str, *, customer_id: str | None = None, sub: str | None = None, ttl: int = 3600) -> str:
    secret = os.environ.get("BACKOFFICE_JWT_SECRET", DEV_JWT_SECRET)
    return issue_token(secret, scopes=scopes, customer_id=customer_id, sub=sub, ttl=ttl)


def auth(scopes: str, *, customer_id: str | None = None, sub: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(scopes, customer_id=customer_id, sub=sub)}"}


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (pool, migrations, relay, consumer) and give an HTTP client for it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield client


async def read_topic(
    topic: str, *, until: Callable[[list[Any]], bool], timeout: float = 30.0, bootstrap: str = BOOTSTRAP
) -> list[Any]:
    """Read `topic` from the beginning until `until(records)` holds or `timeout` passes."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while not until(records):
                batch = await consumer.getmany(timeout_ms=200)
                for part in batch.values():
                    records.extend(part)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return records


async def produce(
    topic: str, records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]], *, bootstrap: str = BOOTSTRAP
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, interval: float = 0.2) -> None:
    """Wait until `check()` is true; fail with a clear message after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(interval)


async def published(dsn: str, topic: str, key: str, *, timeout: float = 30.0) -> list[ops.Record]:
    """The records keyed `key` on `topic`, in the order published, once the outbox of `dsn` holds no row with that
    key any more (its relay deletes each row once Kafka has acknowledged it): every event committed with that key."""

    async def all_sent() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE key = $1)", key)
        finally:
            await conn.close()

    await eventually(all_sent, timeout=timeout)
    return [r for r in await ops.read_topic(BOOTSTRAP, topic) if r.key == key.encode()]


@asynccontextmanager
async def relay_held_off(dsn: str) -> AsyncIterator[None]:
    """Every outbox lane of `dsn`'s database held, as a relay in another process would hold them: a service
    running meanwhile publishes nothing and so deletes nothing, and a test reads the rows its writes committed."""
    conn = await asyncpg.connect(dsn)
    try:
        for lane in range(outbox.LANES):
            await conn.execute("SELECT pg_advisory_lock($1, $2)", outbox.LANE_LOCK_CLASS, lane)
        yield
    finally:
        await conn.close()


async def create_topics(*names: str, partitions: int = 3, bootstrap: str = BOOTSTRAP) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if wanted:
            await admin.create_topics(wanted)
    finally:
        await admin.close()


async def seq_scans(conn: Any, table: str) -> int:
    """The sequential scans of `table` this connection has counted and not yet reported. PostgreSQL reports a
    backend's counts at most once a second, so they may include earlier transactions of a pooled connection: take
    the difference around the statement measured."""
    return int(await conn.fetchval("SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = $1", table) or 0)
