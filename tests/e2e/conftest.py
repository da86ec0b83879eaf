"""The four services as separate processes on the test PostgreSQL and Kafka, with databases and topics of their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from devstack.fleet import Fleet
from devstack.procs import free_port
from tests.conftest import BOOTSTRAP, topics_fixture

SERVICES = ("orders", "support", "billing", "ledger")


@pytest.fixture(scope="package")
async def fleet(
    topics: str, make_database: Callable[[str], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "BACKOFFICE_TOPIC_PREFIX": topics}
    for service in SERVICES:
        env[f"{service.upper()}_DATABASE_URL"] = await make_database(f"e2e_{service}")
        env[f"{service.upper()}_JOB_INTERVAL_S"] = "3600"
        env[f"{service.upper()}_OUTBOX_POLL_INTERVAL_S"] = "0.5"
    fleet = Fleet(env=env, ports={s: free_port() for s in SERVICES}, logs=tmp_path_factory.mktemp("e2e-logs"))
    try:
        await asyncio.to_thread(fleet.start)
        yield fleet
    finally:
        await asyncio.to_thread(fleet.stop)


@pytest.fixture(scope="package")
async def http(fleet: Fleet) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    clients = {s: httpx.AsyncClient(base_url=fleet.url(s), timeout=30) for s in SERVICES}
    yield clients
    for client in clients.values():
        await client.aclose()


topics = topics_fixture("e2e")
