"""Small helpers for the messaging tests."""

from __future__ import annotations

import struct
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import asyncpg

from backoffice import outbox
from backoffice.db import SHARED_MIGRATIONS, load_migrations, migrate_dsn
from backoffice.envelope import header_map
from backoffice.events import OrderConfirmed


async def messaging_db(dsn: str) -> str:
    await migrate_dsn(dsn, load_migrations(SHARED_MIGRATIONS, namespace="shared"))
    return dsn


def numbered(key: str, n: int) -> OrderConfirmed:
    """An event whose `customer_id` carries its sequence number within its key."""
    return OrderConfirmed(order_id=key, customer_id=str(n), confirmed_at=datetime.now(UTC))


async def append_numbered(dsn: str, *, keys: list[str], per_key: int, start: int = 0) -> list[str]:
    conn = await asyncpg.connect(dsn)
    ids = []
    try:
        for n in range(start, start + per_key):
            async with conn.transaction():
                envs = await outbox.append_many(conn, [numbered(k, n) for k in keys])
                ids += [e.id for e in envs]
    finally:
        await conn.close()
    return ids


def by_key(records: list[Any]) -> dict[str, list[int]]:
    """Sequence numbers per key in topic order, keeping the first delivery of each event id."""
    seen: set[str] = set()
    out: dict[str, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        ce_id = header_map(record.headers)["ce_id"]
        if ce_id in seen:
            continue
        seen.add(ce_id)
        import orjson

        out[record.key.decode()].append(int(orjson.loads(record.value)["customer_id"]))
    return out


def ce_ids(records: list[Any]) -> list[str]:
    return [header_map(r.headers)["ce_id"] for r in records]


def fatal_admin_shutdown() -> bytes:
    """The ErrorResponse message PostgreSQL sends on a connection it ends (SQLSTATE 57P01): fed to an asyncpg
    connection's protocol, it puts it where a restart of the server puts an idle connection."""
    fields = (b"SFATAL", b"VFATAL", b"C57P01", b"Mterminating connection due to administrator command")
    body = b"".join(field + b"\0" for field in fields) + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body
