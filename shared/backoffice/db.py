"""The asyncpg pool and the migration runner for plain numbered `.sql` files."""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

import asyncpg
import orjson

from backoffice.settings import ServiceSettings

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 7_310_001
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy
else:
    Conn = asyncpg.Connection


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


# Connections that wrote outbox rows, and what to call once such a connection is back in the pool: its transaction
# has ended by then, so a relay woken now finds the rows (no NOTIFY in the writer's transaction; see `outbox`).
_outbox_writers: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()
_on_outbox_released: list[Callable[[], None]] = []


def wrote_outbox(conn: Conn) -> None:
    """Note that `conn` wrote outbox rows in its current transaction."""
    raw = getattr(conn, "_con", conn)  # a pool hands out a proxy around the connection
    _outbox_writers.add(cast(asyncpg.Connection, raw))


def on_outbox_released(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` each time a pool connection that wrote outbox rows is released; returns the unsubscriber."""
    _on_outbox_released.append(callback)
    return lambda: _on_outbox_released.remove(callback) if callback in _on_outbox_released else None


def placeholders(first: int, count: int) -> list[str]:
    """`$first` .. `$(first + count - 1)`: the parameters of a statement fragment that starts at `$first` (to put it
    after others in one statement, e.g. a CTE)."""
    return [f"${n}" for n in range(first, first + count)]


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Run by the pool on release, after asyncpg has rolled back any transaction left open: wake the relay for the
    outbox rows the connection wrote.

    Given a `reset` hook, asyncpg no longer sends its default reset query (`pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`), which cost a round trip and a statement on every release. Pool connections here never
    carry session state: settings are `SET LOCAL`, advisory locks are transaction-scoped (the migration lock is
    released in a `finally`), and LISTEN runs on the relay's own connections.
    """
    if conn in _outbox_writers:
        _outbox_writers.discard(conn)
        for callback in tuple(_on_outbox_released):
            callback()


async def create_pool(settings: ServiceSettings) -> asyncpg.Pool:
    """A pool whose connections encode and decode json/jsonb with orjson and wake the outbox relay after writes."""
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        init=_init_connection,
        reset=_reset_connection,
        timeout=10,
        command_timeout=30,
    )
    assert pool is not None
    return pool


class MigrationError(RuntimeError):
    """A migration cannot be applied safely."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path, *, namespace: str) -> list[Migration]:
    """Numbered files of one directory, in order, named `<namespace>/<file>`."""
    found = []
    numbers: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        named = _NAME.match(path.name)
        if not named:
            raise MigrationError(f"migration file {path} must be named NNNN_snake_case.sql")
        number = named.group(1)
        if number in numbers:
            raise MigrationError(
                f"migrations {numbers[number]} and {path.name} in {directory} share a number: renumber one"
            )
        numbers[number] = path.name
        found.append(Migration(f"{namespace}/{path.name}", path.read_text()))
    return found


async def migrate(conn: Conn, migrations: Sequence[Migration]) -> list[str]:
    """Apply what is missing, one transaction per file, under an advisory lock; return the names applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        done = []
        for migration in migrations:
            known = applied.get(migration.name)
            if known is not None:
                if known != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was edited after it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", migration.name, migration.checksum
                )
            done.append(migration.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


def service_migrations(service_dir: Path, *, service: str) -> list[Migration]:
    """The shared tables (outbox, inbox, idempotency keys) first, then the service's own files."""
    return load_migrations(SHARED_MIGRATIONS, namespace="shared") + load_migrations(service_dir, namespace=service)


async def migrate_dsn(dsn: str, migrations: Sequence[Migration]) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, migrations)
    finally:
        await conn.close()
