"""The service pool: a released connection comes back clean, with no transaction left open (asyncpg rolls it back
before our release hook, which no longer sends the default reset query)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from backoffice.db import create_pool
from backoffice.settings import ServiceSettings


class TestRelease:
    async def test_a_transaction_left_open_is_rolled_back_and_the_connection_starts_fresh_ones(
        self, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        dsn = await make_database("pool_release")
        pool = await create_pool(ServiceSettings(database_url=dsn, db_pool_min=1, db_pool_max=1))
        try:
            await pool.execute("CREATE TABLE IF NOT EXISTS notes (n int)")
            async with pool.acquire() as conn:  # a request cancelled mid-transaction leaves it like this
                left_open = conn.transaction()
                await left_open.start()
                await conn.execute("INSERT INTO notes VALUES (1)")
            async with pool.acquire() as conn:  # the one connection of the pool, again
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SELECT count(*) FROM notes") == 0
                async with conn.transaction():  # a top-level transaction, not a savepoint of the old one
                    await conn.execute("INSERT INTO notes VALUES (2)")
            assert await pool.fetchval("SELECT array_agg(n) FROM notes") == [2]
        finally:
            await pool.close()
