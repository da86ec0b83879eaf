"""Support test helpers: one running app per test module, tokens, and reading support.events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from backoffice.envelope import header_map
from support.app import create_app
from support.settings import Settings
from tests.conftest import BOOTSTRAP, auth, read_topic, running, topics_fixture

AGENT = auth("support:read support:write", sub="agent-ann")
ADMIN = auth("support:read support:write support:admin", sub="admin-ada")
READER = auth("support:read", sub="viewer")


def customer(customer_id: str) -> dict[str, str]:
    return auth("support:read support:write", customer_id=customer_id)


@asynccontextmanager
async def support_app(
    make_database: Callable[[str], Awaitable[str]], topics: str, name: str, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=await make_database(name),
        kafka_bootstrap_servers=BOOTSTRAP,
        topic_prefix=topics,
        outbox_poll_interval_s=0.2,
        **overrides,
    )
    async with running(create_app(settings)) as client:
        yield client


async def support_events(topics: str, *, ticket_ids: set[str], until: Callable[[list[Any]], bool]) -> list[Any]:
    """Records of support.events about the given tickets, read until `until(those records)` holds."""

    def mine(records: list[Any]) -> list[Any]:
        return [r for r in records if r.key and r.key.decode() in ticket_ids]

    records = await read_topic(f"{topics}support.events", until=lambda rs: until(mine(rs)), timeout=30)
    return mine(records)


def ce_type(record: Any) -> str:
    return header_map(record.headers)["ce_type"].split(".")[2]


def data(record: Any) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(record.value)
    return value


def new_ticket(customer_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "subject": "Parcel arrived damaged",
        "description": "The box was crushed.",
        "priority": "normal",
        **fields,
    }


topics = topics_fixture("support")
