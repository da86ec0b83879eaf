"""The migration runner: applies in order once, refuses an edited file, and two runners never race."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from backoffice.db import MigrationError, load_migrations, migrate, migrate_dsn


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)


class TestMigrations:
    async def test_applies_each_file_once_in_order(
        self, tmp_path: Path, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await make_database("mig_once")
        _write(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);", "0002_b.sql": "INSERT INTO a VALUES (1);"})
        first = await migrate_dsn(dsn, load_migrations(tmp_path, namespace="svc"))
        second = await migrate_dsn(dsn, load_migrations(tmp_path, namespace="svc"))
        assert first == ["svc/0001_a.sql", "svc/0002_b.sql"]
        assert second == []
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT count(*) FROM a") == 1
        await conn.close()

    async def test_refuses_an_applied_file_that_was_edited(
        self, tmp_path: Path, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await make_database("mig_edit")
        _write(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int);"})
        await migrate_dsn(dsn, load_migrations(tmp_path, namespace="svc"))
        _write(tmp_path, {"0001_a.sql": "CREATE TABLE a (id bigint);"})
        with pytest.raises(MigrationError, match="edited"):
            await migrate_dsn(dsn, load_migrations(tmp_path, namespace="svc"))

    async def test_a_failing_file_leaves_nothing_half_applied(
        self, tmp_path: Path, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await make_database("mig_fail")
        _write(tmp_path, {"0001_a.sql": "CREATE TABLE a (id int); SELECT no_such_function();"})
        with pytest.raises(asyncpg.PostgresError):
            await migrate_dsn(dsn, load_migrations(tmp_path, namespace="svc"))
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT to_regclass('a')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
        await conn.close()

    async def test_two_runners_at_once_apply_each_file_once(
        self, tmp_path: Path, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await make_database("mig_race")
        _write(
            tmp_path,
            {"0001_a.sql": "CREATE TABLE a (id int); SELECT pg_sleep(0.3);", "0002_b.sql": "INSERT INTO a VALUES (1);"},
        )
        conns = [await asyncpg.connect(dsn) for _ in range(2)]
        results = await asyncio.gather(*(migrate(c, load_migrations(tmp_path, namespace="svc")) for c in conns))
        assert sorted(len(r) for r in results) == [0, 2]
        assert await conns[0].fetchval("SELECT count(*) FROM a") == 1
        for conn in conns:
            await conn.close()

    def test_badly_named_files_are_refused(self, tmp_path: Path) -> None:
        _write(tmp_path, {"1_a.sql": "SELECT 1;"})
        with pytest.raises(MigrationError, match="NNNN"):
            load_migrations(tmp_path, namespace="svc")

    def test_two_files_with_one_number_are_refused(self, tmp_path: Path) -> None:
        _write(tmp_path, {"0001_a.sql": "SELECT 1;", "0002_b.sql": "SELECT 2;", "0002_c.sql": "SELECT 3;"})
        with pytest.raises(MigrationError, match=r"0002_b\.sql and 0002_c\.sql"):
            load_migrations(tmp_path, namespace="svc")
