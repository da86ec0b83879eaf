"""Every SQL statement of the support service for tickets, messages and disputes. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from backoffice.db import Conn
from backoffice.errors import Conflict
from support.domain import Dispute, Message, Ticket
from support.sla import Clock
from support.timeline import Item

_TICKET_COLUMNS = (
    "seq, id, customer_id, subject, description, priority, category, status, assignee, order_id, invoice_id, source,"
    " created_at, updated_at, first_response_at, resolved_at, closed_at,"
    " fr_target, fr_elapsed, fr_running_since, fr_due_at, fr_breached_at,"
    " res_target, res_elapsed, res_running_since, res_due_at, res_breached_at"
)


def _clock(row: asyncpg.Record, prefix: str) -> Clock:
    return Clock(
        target=row[f"{prefix}_target"],
        elapsed=row[f"{prefix}_elapsed"],
        running_since=row[f"{prefix}_running_since"],
        due_at=row[f"{prefix}_due_at"],
        breached_at=row[f"{prefix}_breached_at"],
    )


def _ticket(row: asyncpg.Record) -> Ticket:
    return Ticket(
        id=str(row["id"]),
        customer_id=row["customer_id"],
        subject=row["subject"],
        description=row["description"],
        priority=row["priority"],
        category=row["category"],
        status=row["status"],
        assignee=row["assignee"],
        order_id=row["order_id"],
        invoice_id=row["invoice_id"],
        source=row["source"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        first_response=_clock(row, "fr"),
        resolution=_clock(row, "res"),
        first_response_at=row["first_response_at"],
        resolved_at=row["resolved_at"],
        closed_at=row["closed_at"],
    )


def _clock_values(clock: Clock) -> list[Any]:
    return [clock.target, clock.elapsed, clock.running_since, clock.due_at, clock.breached_at]


def _ticket_values(t: Ticket) -> list[Any]:
    return [
        t.id,
        t.customer_id,
        t.subject,
        t.description,
        t.priority,
        t.category,
        t.status,
        t.assignee,
        t.order_id,
        t.invoice_id,
        t.source,
        t.created_at,
        t.updated_at,
        t.first_response_at,
        t.resolved_at,
        t.closed_at,
        *_clock_values(t.first_response),
        *_clock_values(t.resolution),
    ]


async def insert_ticket(conn: Conn, *, ticket: Ticket) -> int:
    """Insert a new ticket; return its sequence number."""
    columns = _TICKET_COLUMNS.removeprefix("seq, ")
    placeholders = ", ".join(f"${i}" for i in range(1, 27))
    return int(
        await conn.fetchval(
            f"INSERT INTO tickets ({columns}) VALUES ({placeholders}) RETURNING seq", *_ticket_values(ticket)
        )
    )


async def save_ticket(conn: Conn, *, ticket: Ticket) -> None:
    """Write back a ticket the caller holds locked."""
    await conn.execute(
        "UPDATE tickets SET customer_id = $2, subject = $3, description = $4, priority = $5, category = $6,"
        " status = $7, assignee = $8, order_id = $9, invoice_id = $10, source = $11, created_at = $12,"
        " updated_at = $13, first_response_at = $14, resolved_at = $15, closed_at = $16,"
        " fr_target = $17, fr_elapsed = $18, fr_running_since = $19, fr_due_at = $20, fr_breached_at = $21,"
        " res_target = $22, res_elapsed = $23, res_running_since = $24, res_due_at = $25, res_breached_at = $26"
        " WHERE id = $1",
        *_ticket_values(ticket),
    )


async def get_ticket(conn: Conn, *, ticket_id: str, lock: bool = False) -> Ticket | None:
    """The ticket, or None; `lock` holds its row until the transaction ends."""
    row = await conn.fetchrow(
        f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE id = $1{' FOR UPDATE' if lock else ''}", ticket_id
    )
    return _ticket(row) if row else None


async def list_tickets(
    conn: Conn,
    *,
    limit: int,
    before_seq: int | None = None,
    status: str | None = None,
    priority: str | None = None,
    breached: bool | None = None,
    customer_id: str | None = None,
    assignee: str | None = None,
    order_id: str | None = None,
    invoice_id: str | None = None,
) -> list[tuple[int, Ticket]]:
    """Tickets newest first, filtered; up to `limit` rows after the keyset `before_seq`."""
    rows = await conn.fetch(
        f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE ($1::bigint IS NULL OR seq < $1)"
        " AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR priority = $3)"
        " AND ($4::boolean IS NULL OR (fr_breached_at IS NOT NULL OR res_breached_at IS NOT NULL) = $4)"
        " AND ($5::text IS NULL OR customer_id = $5) AND ($6::text IS NULL OR assignee = $6)"
        " AND ($7::text IS NULL OR order_id = $7) AND ($8::text IS NULL OR invoice_id = $8)"
        " ORDER BY seq DESC LIMIT $9",
        before_seq,
        status,
        priority,
        breached,
        customer_id,
        assignee,
        order_id,
        invoice_id,
        limit,
    )
    return [(int(r["seq"]), _ticket(r)) for r in rows]


async def lock_link(conn: Conn, *, link: str, link_id: str) -> None:
    """Serialize, until the transaction ends, everyone opening or updating a ticket for this order or invoice."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7310))", f"{link}:{link_id}")


async def find_unresolved_for(conn: Conn, *, link: str, link_id: str) -> Ticket | None:
    """The oldest new, open or pending ticket linked to the order or invoice, locked."""
    column = {"order": "order_id", "invoice": "invoice_id"}[link]
    row = await conn.fetchrow(
        f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE {column} = $1 AND status IN ('new', 'open', 'pending')"
        " ORDER BY created_at, seq LIMIT 1 FOR UPDATE",
        link_id,
    )
    return _ticket(row) if row else None


async def signal_seen(conn: Conn, *, ref: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM trouble_signals WHERE ref = $1)", ref))


async def record_signal(conn: Conn, *, ref: str, ticket_id: str, event_id: str) -> None:
    await conn.execute(
        "INSERT INTO trouble_signals (ref, ticket_id, event_id) VALUES ($1, $2, $3)", ref, ticket_id, event_id
    )


# --- messages ----------------------------------------------------------------------------------


async def insert_message(conn: Conn, *, message: Message) -> int:
    return int(
        await conn.fetchval(
            "INSERT INTO ticket_messages (id, ticket_id, author, author_kind, visibility, body, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
            message.id,
            message.ticket_id,
            message.author,
            message.author_kind,
            message.visibility,
            message.body,
            message.created_at,
        )
    )


def _message(row: asyncpg.Record) -> Message:
    return Message(
        id=str(row["id"]),
        ticket_id=str(row["ticket_id"]),
        author=row["author"],
        author_kind=row["author_kind"],
        visibility=row["visibility"],
        body=row["body"],
        created_at=row["created_at"],
    )


async def list_messages(
    conn: Conn, *, ticket_id: str, public_only: bool, limit: int, after_seq: int | None = None
) -> list[tuple[int, Message]]:
    """A ticket's messages oldest first; `public_only` leaves internal notes out."""
    rows = await conn.fetch(
        "SELECT seq, id, ticket_id, author, author_kind, visibility, body, created_at FROM ticket_messages"
        " WHERE ticket_id = $1 AND ($2::bigint IS NULL OR seq > $2) AND (NOT $3 OR visibility = 'public')"
        " ORDER BY seq LIMIT $4",
        ticket_id,
        after_seq,
        public_only,
        limit,
    )
    return [(int(r["seq"]), _message(r)) for r in rows]


# --- disputes ----------------------------------------------------------------------------------


def _dispute(row: asyncpg.Record) -> Dispute:
    return Dispute(
        id=str(row["id"]),
        ticket_id=str(row["ticket_id"]),
        customer_id=row["customer_id"],
        invoice_id=row["invoice_id"],
        reason=row["reason"],
        opened_at=row["opened_at"],
        status=row["status"],
        outcome=row["outcome"],
        resolved_at=row["resolved_at"],
    )


async def list_disputes(conn: Conn, *, ticket_id: str, only_open: bool = False) -> list[Dispute]:
    rows = await conn.fetch(
        "SELECT * FROM disputes WHERE ticket_id = $1 AND (NOT $2 OR status = 'open') ORDER BY opened_at, id",
        ticket_id,
        only_open,
    )
    return [_dispute(r) for r in rows]


async def insert_dispute(conn: Conn, *, dispute: Dispute) -> None:
    """Insert an open dispute; 409 when its invoice is already under an open dispute."""
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO disputes (id, ticket_id, customer_id, invoice_id, reason, status, opened_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                dispute.id,
                dispute.ticket_id,
                dispute.customer_id,
                dispute.invoice_id,
                dispute.reason,
                dispute.status,
                dispute.opened_at,
            )
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(f"invoice {dispute.invoice_id} is already under an open dispute") from exc


async def save_disputes(conn: Conn, *, disputes: Sequence[Dispute]) -> None:
    await conn.executemany(
        "UPDATE disputes SET status = $2, outcome = $3, resolved_at = $4 WHERE id = $1",
        [(d.id, d.status, d.outcome, d.resolved_at) for d in disputes],
    )


# --- SLA ---------------------------------------------------------------------------------------


async def sla_candidates(conn: Conn, *, as_of: datetime, limit: int) -> list[Ticket]:
    """Tickets with a clock past its target at `as_of` not yet reported, locked (rows busy elsewhere skipped)."""
    rows = await conn.fetch(
        f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE"
        " (fr_breached_at IS NULL AND fr_elapsed + CASE WHEN fr_running_since < $1"
        "   THEN $1 - fr_running_since ELSE interval '0' END > fr_target)"
        " OR (res_breached_at IS NULL AND res_elapsed + CASE WHEN res_running_since < $1"
        "   THEN $1 - res_running_since ELSE interval '0' END > res_target)"
        " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        as_of,
        limit,
    )
    return [_ticket(r) for r in rows]


async def sla_counts(
    conn: Conn, *, created_from: datetime | None, created_to: datetime | None
) -> list[tuple[str, int, int, int, int]]:
    """(priority, tickets, first-response breaches, resolution breaches, tickets with any breach)."""
    rows = await conn.fetch(
        "SELECT priority, count(*) AS tickets,"
        " count(*) FILTER (WHERE fr_breached_at IS NOT NULL) AS fr,"
        " count(*) FILTER (WHERE res_breached_at IS NOT NULL) AS res,"
        " count(*) FILTER (WHERE fr_breached_at IS NOT NULL OR res_breached_at IS NOT NULL) AS any"
        " FROM tickets WHERE ($1::timestamptz IS NULL OR created_at >= $1)"
        " AND ($2::timestamptz IS NULL OR created_at < $2) GROUP BY priority",
        created_from,
        created_to,
    )
    return [(r["priority"], r["tickets"], r["fr"], r["res"], r["any"]) for r in rows]


# --- what the topics told us: owners of orders and invoices, the timeline ---------------------


async def remember_refs(conn: Conn, *, refs: Sequence[tuple[str, str, str]], items: Sequence[Item] = ()) -> None:
    """Record (kind, id, customer_id) owners, the first owner heard staying (the first of `refs` among equals), and
    add `items` to their timelines (an event already there is skipped): one statement for all of them (each poll of
    consumed events does this once)."""
    if not refs and not items:
        return
    kinds, ids, customers = (list(column) for column in zip(*refs, strict=True)) if refs else ([], [], [])
    columns = [list(column) for column in zip(*map(_item_values, items), strict=True)] if items else [[]] * 6
    await conn.execute(
        "WITH refs AS (INSERT INTO customer_refs (kind, ref_id, customer_id)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING)"
        " INSERT INTO timeline_items (event_id, customer_id, type, occurred_at, subject, summary)"
        " SELECT * FROM unnest($4::uuid[], $5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::text[])"
        " ON CONFLICT (event_id) DO NOTHING",
        kinds,
        ids,
        customers,
        *columns,
    )


async def ref_owner(conn: Conn, *, kind: str, ref_id: str) -> str | None:
    owner = await conn.fetchval("SELECT customer_id FROM customer_refs WHERE kind = $1 AND ref_id = $2", kind, ref_id)
    return str(owner) if owner is not None else None


def _item_values(item: Item) -> tuple[Any, ...]:
    return (item.event_id, item.customer_id, item.type, item.occurred_at, item.subject, item.summary)


async def list_timeline(
    conn: Conn, *, customer_id: str, limit: int, before: tuple[datetime, int] | None = None
) -> list[tuple[int, Item]]:
    """A customer's items newest first, after the keyset `before` = (occurred_at, seq)."""
    rows = await conn.fetch(
        "SELECT seq, event_id, customer_id, type, occurred_at, subject, summary FROM timeline_items"
        " WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR (occurred_at, seq) < ($2, $3::bigint))"
        " ORDER BY occurred_at DESC, seq DESC LIMIT $4",
        customer_id,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [
        (
            int(r["seq"]),
            Item(
                event_id=str(r["event_id"]),
                customer_id=r["customer_id"],
                type=r["type"],
                occurred_at=r["occurred_at"],
                subject=r["subject"],
                summary=r["summary"],
            ),
        )
        for r in rows
    ]
