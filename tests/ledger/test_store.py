"""The database itself keeps the books honest, whoever connects: tried here with plain asyncpg connections."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import orjson
import pytest

from backoffice.events import now
from ledger import domain, store
from tests.ledger.conftest import T0, bill_received, deliver, envelope, invoice_issued, uid


async def _raw_entry(
    conn: asyncpg.Connection,
    lines: list[tuple[str, int, int]],
    *,
    currency: str = "EUR",
    line_count: int | None = None,
    total: int | None = None,
    line_currency: str | None = None,
) -> uuid.UUID:
    """Insert an entry and its lines with plain SQL (no domain checks)."""
    entry_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO journal_entries (id, currency, source_type, effective_at, line_count, total_minor)"
        " VALUES ($1, $2, 'manual', $3, $4, $5)",
        entry_id,
        currency,
        T0,
        line_count if line_count is not None else len(lines),
        total if total is not None else sum(d for _, d, _ in lines),
    )
    for n, (account, debit, credit) in enumerate(lines, start=1):
        await conn.execute(
            "INSERT INTO journal_lines (entry_id, line_no, account, currency, effective_at, debit_minor, credit_minor)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            entry_id,
            n,
            account,
            line_currency or currency,
            T0,
            debit,
            credit,
        )
    return entry_id


async def _committed_entry(conn: asyncpg.Connection) -> uuid.UUID:
    async with conn.transaction():
        return await _raw_entry(conn, [("1000", 500, 0), ("4000", 0, 500)])


class TestImmutability:
    async def test_update_of_a_posted_line_fails(self, conn: asyncpg.Connection) -> None:
        entry_id = await _committed_entry(conn)
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="immutable"):
            await conn.execute("UPDATE journal_lines SET debit_minor = 1 WHERE entry_id = $1", entry_id)

    async def test_delete_of_a_posted_line_fails(self, conn: asyncpg.Connection) -> None:
        entry_id = await _committed_entry(conn)
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="immutable"):
            await conn.execute("DELETE FROM journal_lines WHERE entry_id = $1", entry_id)

    async def test_update_and_delete_of_a_posted_entry_fail(self, conn: asyncpg.Connection) -> None:
        entry_id = await _committed_entry(conn)
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
            await conn.execute("UPDATE journal_entries SET memo = 'changed' WHERE id = $1", entry_id)
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
            await conn.execute("DELETE FROM journal_entries WHERE id = $1", entry_id)
        assert await conn.fetchval("SELECT count(*) FROM journal_lines WHERE entry_id = $1", entry_id) == 2

    async def test_truncate_fails(self, conn: asyncpg.Connection) -> None:
        await _committed_entry(conn)
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError):
            await conn.execute("TRUNCATE journal_lines")
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("TRUNCATE journal_entries CASCADE")
        assert await conn.fetchval("SELECT count(*) FROM journal_lines") > 0


class TestBalanceAtCommit:
    async def test_an_unbalanced_entry_cannot_commit(self, conn: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            async with conn.transaction():
                entry_id = await _raw_entry(conn, [("1000", 500, 0), ("4000", 0, 400)], total=500)
        assert await conn.fetchval("SELECT count(*) FROM journal_entries WHERE id = $1", entry_id) == 0

    async def test_an_unbalanced_entry_cannot_commit_in_autocommit_either(self, conn: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO journal_entries (id, currency, source_type, effective_at, line_count, total_minor)"
                " VALUES ($1, 'EUR', 'manual', now(), 2, 100)",
                uuid.uuid4(),
            )

    async def test_a_balanced_entry_commits_although_it_is_unbalanced_between_statements(
        self, conn: asyncpg.Connection
    ) -> None:
        async with conn.transaction():
            entry_id = await _raw_entry(conn, [("1000", 300, 0), ("4000", 0, 200), ("2100", 0, 100)])
        assert await conn.fetchval("SELECT line_count FROM journal_entries WHERE id = $1", entry_id) == 3

    async def test_a_line_added_to_a_committed_entry_cannot_commit(self, conn: asyncpg.Connection) -> None:
        entry_id = await _committed_entry(conn)
        with pytest.raises(asyncpg.CheckViolationError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO journal_lines (entry_id, line_no, account, currency, effective_at, debit_minor,"
                    " credit_minor) VALUES ($1, 3, '1000', 'EUR', $2, 50, 0), ($1, 4, '4000', 'EUR', $2, 0, 50)",
                    entry_id,
                    T0,
                )

    async def test_a_committed_entrys_line_numbers_are_all_taken(self, conn: asyncpg.Connection) -> None:
        entry_id = await _committed_entry(conn)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO journal_lines (entry_id, line_no, account, currency, effective_at, debit_minor)"
                " VALUES ($1, 1, '1000', 'EUR', $2, 50)",
                entry_id,
                T0,
            )

    async def test_an_entry_of_one_line_cannot_commit(self, conn: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.CheckViolationError):
            async with conn.transaction():
                await _raw_entry(conn, [("1000", 0, 0)], line_count=2, total=1)


class TestLineRules:
    @pytest.mark.parametrize(
        ("debit", "credit"), [(0, 0), (100, 100), (-100, 0), (0, -5)], ids=["neither", "both", "negative", "neg-credit"]
    )
    async def test_a_line_is_exactly_one_positive_debit_or_credit(
        self, conn: asyncpg.Connection, debit: int, credit: int
    ) -> None:
        with pytest.raises(asyncpg.CheckViolationError):
            async with conn.transaction():
                await _raw_entry(conn, [("1000", debit, credit), ("4000", 0, 100)], total=100)

    async def test_a_line_in_another_currency_than_its_entry_fails(self, conn: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            async with conn.transaction():
                await _raw_entry(conn, [("1000", 100, 0), ("4000", 0, 100)], line_currency="USD")

    async def test_a_line_on_an_unknown_account_fails(self, conn: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            async with conn.transaction():
                await _raw_entry(conn, [("9999", 100, 0), ("4000", 0, 100)])

    async def test_an_event_id_posts_one_entry_even_with_raw_sql(self, conn: asyncpg.Connection) -> None:
        env = envelope(invoice_issued(customer=uid("c-"), subtotal=100))
        await deliver(conn, env)
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO journal_entries (id, currency, source_type, source_event_id, effective_at,"
                    " line_count, total_minor) VALUES ($1, 'EUR', 'InvoiceIssued', $2, now(), 2, 100)",
                    uuid.uuid4(),
                    uuid.UUID(env.id),
                )

    async def test_an_entry_is_reversed_at_most_once(self, conn: asyncpg.Connection) -> None:
        original = await _committed_entry(conn)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO journal_entries (id, currency, source_type, reverses_entry_id, effective_at, line_count,"
                " total_minor) VALUES ($1, 'EUR', 'reversal', $3, $4, 2, 500), ($2, 'EUR', 'reversal', $3, $4, 2, 500)",
                uuid.uuid4(),
                uuid.uuid4(),
                original,
                T0,
            )


class TestStore:
    async def test_post_entry_reports_a_duplicate_source_event_and_announces_only_the_first(
        self, conn: asyncpg.Connection
    ) -> None:
        source = uuid.uuid4()
        draft = domain.posting_for(invoice_issued(customer=uid("c-"), subtotal=100), occurred_at=T0)
        assert draft is not None
        async with conn.transaction():
            first = domain.post(draft, entry_id=uuid.uuid4(), posted_at=now(), source_event_id=source)
            assert await store.post_entry(conn, entry=first)
            second = domain.post(draft, entry_id=uuid.uuid4(), posted_at=now(), source_event_id=source)
            assert not await store.post_entry(conn, entry=second)
        assert await conn.fetchval("SELECT count(*) FROM journal_entries WHERE source_event_id = $1", source) == 1
        for entry, expected in ((first, 1), (second, 0)):  # announced by the entry that was posted only
            announced = await conn.fetch("SELECT payload FROM outbox WHERE key = $1", str(entry.id))
            assert [orjson.loads(r["payload"])["source_event_id"] for r in announced] == [str(source)] * expected

    async def test_post_entry_fails_at_once_for_an_unbalanced_entry(self, conn: asyncpg.Connection) -> None:
        bad = domain.Entry(
            id=uuid.uuid4(),
            currency="EUR",
            lines=(domain.Line("1000", debit_minor=10), domain.Line("4000", credit_minor=9)),
            effective_at=T0,
            posted_at=now(),
            source_type="manual",
        )
        async with conn.transaction():
            with pytest.raises(asyncpg.CheckViolationError):
                async with conn.transaction():  # a savepoint, as the consumer uses per record
                    await store.post_entry(conn, entry=bad)
            assert await conn.fetchval("SELECT count(*) FROM journal_entries WHERE id = $1", bad.id) == 0
            assert await conn.fetchval("SELECT count(*) FROM outbox WHERE key = $1", str(bad.id)) == 0

    async def test_post_entries_posts_a_run_in_order_and_skips_sources_posted_before_or_earlier_in_the_run(
        self, conn: asyncpg.Connection
    ) -> None:
        """One call for the run, the same outcome as one call per entry: each entry with its lines (numbered from
        1 in the order given) and its announcement, the announcements in run order; an entry whose source was
        posted before, or earlier in the run, writes nothing."""
        before, first_source, later_source = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

        def entry(source: uuid.UUID, amount: int, party: str) -> domain.Entry:
            return domain.Entry(
                id=uuid.uuid4(),
                currency="EUR",
                lines=(
                    domain.Line("1100", debit_minor=amount, party=party),
                    domain.Line("4000", credit_minor=amount - 1),
                    domain.Line("2100", credit_minor=1),
                ),
                effective_at=T0,
                posted_at=now(),
                source_type="InvoiceIssued",
                source_event_id=source,
            )

        party = uid("c-")
        async with conn.transaction():
            assert await store.post_entries(conn, entries=[entry(before, 10, party)]) == [True]
        run = [entry(first_source, 100, party), entry(before, 20, party), entry(first_source, 30, party)]
        run.append(entry(later_source, 40, party))
        async with conn.transaction():
            assert await store.post_entries(conn, entries=run) == [True, False, False, True]
        posted = [run[0], run[3]]
        for e, amount in zip(posted, (100, 40), strict=True):
            lines = await conn.fetch(
                "SELECT line_no, account, debit_minor, credit_minor, party FROM journal_lines WHERE entry_id = $1"
                " ORDER BY line_no",
                e.id,
            )
            assert [tuple(r) for r in lines] == [
                (1, "1100", amount, 0, party),
                (2, "4000", 0, amount - 1, None),
                (3, "2100", 0, 1, None),
            ]
        for skipped in (run[1], run[2]):
            assert await conn.fetchval("SELECT count(*) FROM journal_entries WHERE id = $1", skipped.id) == 0
        announced = await conn.fetch(
            "SELECT key, payload FROM outbox WHERE key = ANY($1::text[]) ORDER BY seq", [str(e.id) for e in run]
        )
        assert [r["key"] for r in announced] == [str(e.id) for e in posted]
        assert [orjson.loads(r["payload"])["source_event_id"] for r in announced] == [
            str(first_source),
            str(later_source),
        ]

    async def test_post_entries_fails_as_a_whole_when_one_entry_of_the_run_does_not_balance(
        self, conn: asyncpg.Connection
    ) -> None:
        """The balance checks run on the call: a run with a broken entry fails there (the consumer then redoes the
        run one event at a time and dead-letters that one), and the savepoint keeps nothing of the run."""

        def entry(debit: int, credit: int) -> domain.Entry:
            return domain.Entry(
                id=uuid.uuid4(),
                currency="EUR",
                lines=(domain.Line("1000", debit_minor=debit), domain.Line("4000", credit_minor=credit)),
                effective_at=T0,
                posted_at=now(),
                source_type="manual",
            )

        good, bad = entry(10, 10), entry(10, 9)
        async with conn.transaction():
            with pytest.raises(asyncpg.CheckViolationError):
                async with conn.transaction():
                    await store.post_entries(conn, entries=[good, bad])
            ids = [good.id, bad.id]
            assert await conn.fetchval("SELECT count(*) FROM journal_entries WHERE id = ANY($1::uuid[])", ids) == 0
            assert (
                await conn.fetchval("SELECT count(*) FROM outbox WHERE key = ANY($1::text[])", [str(i) for i in ids])
                == 0
            )

    async def test_balance_as_of_uses_effective_time(self, conn: asyncpg.Connection) -> None:
        account = uid("A")
        await store.insert_account(conn, account=domain.Account(account, "test", "asset"))
        for days, amount in ((0, 100), (10, 20), (20, 3)):
            async with conn.transaction():
                await store.post_entry(
                    conn,
                    entry=domain.Entry(
                        id=uuid.uuid4(),
                        currency="EUR",
                        lines=(domain.Line(account, debit_minor=amount), domain.Line("4000", credit_minor=amount)),
                        effective_at=T0 + timedelta(days=days),
                        posted_at=now(),
                        source_type="manual",
                    ),
                )
        at = T0 + timedelta(days=10)
        assert await store.account_totals(conn, account=account, currency="EUR", as_of=at) == (120, 0)
        assert await store.account_totals(conn, account=account, currency="EUR", as_of=at - timedelta(seconds=1)) == (
            100,
            0,
        )
        assert await store.account_totals(conn, account=account, currency="USD", as_of=at) == (0, 0)
        assert await store.currencies(conn, account=account) == ["EUR"]

    async def test_a_bill_to_an_unknown_expense_account_opens_it(self, conn: asyncpg.Connection) -> None:
        code = f"6{uuid.uuid4().int % 10**6:06d}"
        env = envelope(bill_received(vendor=uid("v-"), subtotal=900, tax=100, account=code))
        await deliver(conn, env)
        opened = await store.get_account(conn, code=code)
        assert opened is not None and opened.type == "expense"
        assert await store.account_totals(conn, account=code, currency="EUR", as_of=now()) == (900, 0)
