"""Every SQL statement of the ledger. Functions take a connection and never commit: the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import asyncpg
import orjson

from backoffice import db, outbox
from backoffice.db import Conn
from backoffice.envelope import Envelope
from ledger import domain
from ledger.domain import Account, AccountType, Entry, Line

_ENTRY_COLUMNS = (
    "e.id, e.seq, e.currency, e.memo, e.source_type, e.source_event_id, e.reverses_entry_id, e.effective_at,"
    " e.posted_at, r.id AS reversed_by"
)


@dataclass(frozen=True)
class StoredEntry:
    seq: int
    entry: Entry
    reversed_by: uuid.UUID | None


@dataclass(frozen=True)
class LedgerLine:
    """One line of an account's general ledger, with the entry it belongs to."""

    id: int
    entry_id: uuid.UUID
    currency: str
    effective_at: datetime
    posted_at: datetime
    source_type: str
    memo: str | None
    debit_minor: int
    credit_minor: int
    party: str | None


# --- accounts -------------------------------------------------------------------------------------------------


def _account(row: asyncpg.Record) -> Account:
    return Account(code=row["code"], name=row["name"], type=cast(AccountType, row["type"]))


async def list_accounts(conn: Conn, *, after: str | None, limit: int) -> list[Account]:
    rows = await conn.fetch(
        "SELECT code, name, type FROM accounts WHERE ($1::text IS NULL OR code > $1) ORDER BY code LIMIT $2",
        after,
        limit,
    )
    return [_account(r) for r in rows]


async def get_account(conn: Conn, *, code: str) -> Account | None:
    row = await conn.fetchrow("SELECT code, name, type FROM accounts WHERE code = $1", code)
    return _account(row) if row else None


async def known_accounts(conn: Conn, *, codes: Sequence[str]) -> set[str]:
    rows = await conn.fetch("SELECT code FROM accounts WHERE code = ANY($1::text[])", list(codes))
    return {r["code"] for r in rows}


async def insert_account(conn: Conn, *, account: Account) -> bool:
    """Add an account; False when the code is taken."""
    inserted = await conn.fetchval(
        "INSERT INTO accounts (code, name, type) VALUES ($1, $2, $3) ON CONFLICT (code) DO NOTHING RETURNING true",
        account.code,
        account.name,
        account.type,
    )
    return bool(inserted)


# --- entries --------------------------------------------------------------------------------------------------


async def post_entry(conn: Conn, *, entry: Entry) -> bool:
    """Write an entry, its lines and the `JournalEntryPosted` announcing it (`post_entries` of one); False, and
    nothing written, when its source event was posted already."""
    (posted,) = await post_entries(conn, entries=[entry])
    return posted


async def post_entries(conn: Conn, *, entries: Sequence[Entry]) -> list[bool]:
    """Write entries, their lines and the `JournalEntryPosted` announcing each, in order, in one round trip
    (`post_entries`, migration 0005): for each, whether it was posted (False, and nothing written, when its source
    event was posted already, before or earlier in `entries`).

    The deferred balance checks are fired on this call too, so a broken entry fails here, not at commit.
    """
    documents, payloads = [], []
    for entry in entries:
        event, payload = outbox.document_of(Envelope.wrap(domain.posted_event(entry)))
        documents.append(
            {
                "id": entry.id,
                "currency": entry.currency,
                "memo": entry.memo,
                "source_type": entry.source_type,
                "source_event_id": entry.source_event_id,
                "reverses_entry_id": entry.reverses_entry_id,
                "effective_at": entry.effective_at,
                "posted_at": entry.posted_at,
                "total_minor": entry.total_minor,
                "lines": [
                    {"account": li.account, "debit": li.debit_minor, "credit": li.credit_minor, "party": li.party}
                    for li in entry.lines
                ],
                "event": event,
            }
        )
        payloads.append(payload)
    # As text, whatever the connection's json codec: a connection of the service's pool and a bare one alike. An id
    # read from the database is asyncpg's UUID, which orjson leaves to `default`.
    posted = set(
        await conn.fetchval(
            "SELECT post_entries($1::text::jsonb, $2::bytea[])", orjson.dumps(documents, default=str).decode(), payloads
        )
    )
    if posted:
        db.wrote_outbox(conn)
    return [entry.id in posted for entry in entries]


async def _with_lines(conn: Conn, rows: Sequence[asyncpg.Record]) -> list[StoredEntry]:
    if not rows:
        return []
    line_rows = await conn.fetch(
        "SELECT entry_id, account, debit_minor, credit_minor, party FROM journal_lines"
        " WHERE entry_id = ANY($1::uuid[]) ORDER BY entry_id, line_no",
        [r["id"] for r in rows],
    )
    lines: dict[uuid.UUID, list[Line]] = {}
    for lr in line_rows:
        lines.setdefault(lr["entry_id"], []).append(
            Line(
                account=lr["account"], debit_minor=lr["debit_minor"], credit_minor=lr["credit_minor"], party=lr["party"]
            )
        )
    return [
        StoredEntry(
            seq=r["seq"],
            reversed_by=r["reversed_by"],
            entry=Entry(
                id=r["id"],
                currency=r["currency"],
                lines=tuple(lines.get(r["id"], ())),
                effective_at=r["effective_at"],
                posted_at=r["posted_at"],
                source_type=r["source_type"],
                source_event_id=r["source_event_id"],
                memo=r["memo"],
                reverses_entry_id=r["reverses_entry_id"],
            ),
        )
        for r in rows
    ]


async def get_entry(conn: Conn, *, entry_id: uuid.UUID, lock: bool = False) -> StoredEntry | None:
    """One entry with its lines and the id of its reversal; `lock` holds it (FOR UPDATE) until commit."""
    if lock:
        await conn.execute("SELECT 1 FROM journal_entries WHERE id = $1 FOR UPDATE", entry_id)
    rows = await conn.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM journal_entries e LEFT JOIN journal_entries r ON r.reverses_entry_id = e.id"
        " WHERE e.id = $1",
        entry_id,
    )
    found = await _with_lines(conn, rows)
    return found[0] if found else None


class _Where:
    """A WHERE clause built from the filters that are set, so each query plans with its real bounds."""

    def __init__(self) -> None:
        self.terms: list[str] = []
        self.args: list[Any] = []

    def add(self, template: str, *values: Any) -> None:
        """`template` uses `{}` for each value, numbered in order of appearance."""
        start = len(self.args)
        self.args.extend(values)
        self.terms.append(template.format(*(f"${start + i + 1}" for i in range(len(values)))))

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.terms) if self.terms else ""

    def next(self) -> str:
        return f"${len(self.args) + 1}"


async def list_entries(
    conn: Conn,
    *,
    account: str | None,
    source_event_id: uuid.UUID | None,
    source_type: str | None,
    currency: str | None,
    after_seq: int | None,
    limit: int,
) -> list[StoredEntry]:
    """Entries in posting order, filtered; `limit` rows after `after_seq`."""
    where = _Where()
    if account is not None:
        where.add("e.id IN (SELECT l.entry_id FROM journal_lines l WHERE l.account = {})", account)
    if source_event_id is not None:
        where.add("e.source_event_id = {}", source_event_id)
    if source_type is not None:
        where.add("e.source_type = {}", source_type)
    if currency is not None:
        where.add("e.currency = {}", currency)
    if after_seq is not None:
        where.add("e.seq > {}", after_seq)
    rows = await conn.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM journal_entries e LEFT JOIN journal_entries r ON r.reverses_entry_id = e.id"
        f"{where.sql()} ORDER BY e.seq LIMIT {where.next()}",
        *where.args,
        limit,
    )
    return await _with_lines(conn, rows)


# --- balances and reports -------------------------------------------------------------------------------------


async def account_totals(conn: Conn, *, account: str, currency: str, as_of: datetime) -> tuple[int, int]:
    """Total debits and credits of one account and currency up to `as_of` (one index-only range scan)."""
    row = await conn.fetchrow(
        "SELECT coalesce(sum(debit_minor), 0)::bigint AS d, coalesce(sum(credit_minor), 0)::bigint AS c"
        " FROM journal_lines WHERE account = $1 AND currency = $2 AND effective_at <= $3",
        account,
        currency,
        as_of,
    )
    assert row is not None
    return int(row["d"]), int(row["c"])


async def currencies(conn: Conn, *, account: str | None = None) -> list[str]:
    """The currencies with lines (on `account`, or anywhere), found by skipping through an index."""
    if account is None:
        sql = (
            "WITH RECURSIVE c AS ((SELECT currency FROM journal_entries ORDER BY currency LIMIT 1) UNION ALL"
            " SELECT (SELECT e.currency FROM journal_entries e WHERE e.currency > c.currency"
            " ORDER BY e.currency LIMIT 1) FROM c WHERE c.currency IS NOT NULL)"
            " SELECT currency FROM c WHERE currency IS NOT NULL"
        )
        rows = await conn.fetch(sql)
    else:
        sql = (
            "WITH RECURSIVE c AS ((SELECT currency FROM journal_lines WHERE account = $1 ORDER BY currency LIMIT 1)"
            " UNION ALL SELECT (SELECT l.currency FROM journal_lines l WHERE l.account = $1 AND l.currency > c.currency"
            " ORDER BY l.currency LIMIT 1) FROM c WHERE c.currency IS NOT NULL)"
            " SELECT currency FROM c WHERE currency IS NOT NULL"
        )
        rows = await conn.fetch(sql, account)
    return [r["currency"] for r in rows]


async def trial_balance(conn: Conn, *, currency: str, as_of: datetime) -> list[tuple[Account, int, int]]:
    """Per account with lines in `currency` up to `as_of`: (account, debits, credits); one range scan each."""
    rows = await conn.fetch(
        "SELECT a.code, a.name, a.type, t.d, t.c FROM accounts a CROSS JOIN LATERAL ("
        " SELECT count(*) AS n, coalesce(sum(l.debit_minor), 0)::bigint AS d,"
        " coalesce(sum(l.credit_minor), 0)::bigint AS c FROM journal_lines l"
        " WHERE l.account = a.code AND l.currency = $1 AND l.effective_at <= $2) t"
        " WHERE t.n > 0 ORDER BY a.code",
        currency,
        as_of,
    )
    return [(_account(r), int(r["d"]), int(r["c"])) for r in rows]


async def ledger_lines(
    conn: Conn,
    *,
    account: str,
    currency: str | None,
    start: datetime | None,
    end: datetime,
    after: tuple[str, datetime, int] | None,
    limit: int,
) -> list[LedgerLine]:
    """An account's lines ordered by (currency, effective_at, id), keyset after `after`."""
    where = _Where()
    where.add("l.account = {}", account)
    if currency is not None:
        where.add("l.currency = {}", currency)
    if start is not None:
        where.add("l.effective_at >= {}", start)
    where.add("l.effective_at <= {}", end)
    if after is not None and currency is not None:  # the keyset starts the index range scan only in this form
        where.add("(l.effective_at, l.id) > ({}, {})", *after[1:])
    elif after is not None:
        where.add("(l.currency, l.effective_at, l.id) > ({}, {}, {})", *after)
    rows = await conn.fetch(
        "SELECT l.id, l.entry_id, l.currency, l.effective_at, e.posted_at, e.source_type, e.memo, l.debit_minor,"
        f" l.credit_minor, l.party FROM journal_lines l JOIN journal_entries e ON e.id = l.entry_id{where.sql()}"
        f" ORDER BY l.currency, l.effective_at, l.id LIMIT {where.next()}",
        *where.args,
        limit,
    )
    return [LedgerLine(**dict(r)) for r in rows]


async def totals_before(
    conn: Conn, *, account: str, currency: str, effective_at: datetime, line_id: int
) -> tuple[int, int]:
    """Debits and credits of the account's lines in `currency` ordered before (effective_at, line_id)."""
    row = await conn.fetchrow(
        "SELECT coalesce(sum(debit_minor), 0)::bigint AS d, coalesce(sum(credit_minor), 0)::bigint AS c"
        " FROM journal_lines WHERE account = $1 AND currency = $2 AND (effective_at, id) < ($3, $4)",
        account,
        currency,
        effective_at,
        line_id,
    )
    assert row is not None
    return int(row["d"]), int(row["c"])


async def party_totals(conn: Conn, *, accounts: Sequence[str]) -> list[tuple[str, str | None, str, int, int]]:
    """(account, party, currency, debits, credits) of the party accounts."""
    rows: list[Any] = await conn.fetch(
        "SELECT account, party, currency, sum(debit_minor)::bigint AS d, sum(credit_minor)::bigint AS c"
        " FROM journal_lines WHERE account = ANY($1::text[]) GROUP BY account, party, currency",
        list(accounts),
    )
    return [(r["account"], r["party"], r["currency"], int(r["d"]), int(r["c"])) for r in rows]
