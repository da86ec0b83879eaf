"""Every SQL statement of disputes and dunning: which invoices are disputed, which notices were sent."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from backoffice.db import Conn


async def open_dispute(conn: Conn, *, ticket_id: str, invoice_id: str, customer_id: str, reason: str) -> None:
    await conn.execute(
        "INSERT INTO disputes (ticket_id, invoice_id, customer_id, reason) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (ticket_id, invoice_id) DO UPDATE SET resolved_at = NULL, reason = EXCLUDED.reason",
        ticket_id,
        invoice_id,
        customer_id,
        reason,
    )


async def resolve_dispute(conn: Conn, *, ticket_id: str, invoice_id: str, customer_id: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO disputes (ticket_id, invoice_id, customer_id, resolved_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (ticket_id, invoice_id) DO UPDATE SET resolved_at = EXCLUDED.resolved_at",
        ticket_id,
        invoice_id,
        customer_id,
        at,
    )


async def dunning_candidates(conn: Conn, *, as_of: datetime) -> list[str]:
    """Ids of invoices past due on `as_of` that still owe something and have a dunning level to reach."""
    rows = await conn.fetch(
        "SELECT id FROM invoices WHERE balance_minor > 0 AND due_at < $1"
        " AND (dunning_level < 3 OR status <> 'overdue') ORDER BY id",
        as_of,
    )
    return [str(r["id"]) for r in rows]


async def dunning_levels(conn: Conn, *, invoice_id: str) -> frozenset[int]:
    rows = await conn.fetch("SELECT level FROM dunning_notices WHERE invoice_id = $1", invoice_id)
    return frozenset(int(r["level"]) for r in rows)


async def record_notices(
    conn: Conn, *, invoice_id: str, levels: Sequence[int], days: int, as_of: datetime
) -> list[int]:
    """Record dunning notices; return the levels that were not recorded before (only those may be announced)."""
    recorded = []
    for level in levels:
        inserted = await conn.fetchval(
            "INSERT INTO dunning_notices (invoice_id, level, days_overdue, as_of) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING RETURNING level",
            invoice_id,
            level,
            days,
            as_of,
        )
        if inserted is not None:
            recorded.append(int(inserted))
    return recorded
