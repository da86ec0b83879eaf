"""The SQL behind the receivables reports: open items as of a date, balances, a customer's statement."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from backoffice.db import Conn


async def open_invoice_items(
    conn: Conn, *, as_of: datetime, currency: str | None, customer_id: str | None
) -> list[tuple[str, str, datetime, int]]:
    """`(customer_id, currency, due_at, balance as of)` of every invoice issued and not settled by `as_of`."""
    rows = await conn.fetch(
        "SELECT i.customer_id, i.currency, i.due_at, i.total_minor - COALESCE((SELECT sum(s.amount_minor)"
        " FROM invoice_settlements s WHERE s.invoice_id = i.id AND s.occurred_at <= $1), 0) AS balance"
        " FROM invoices i WHERE i.issued_at <= $1 AND (i.closed_at IS NULL OR i.closed_at > $1)"
        " AND ($2::text IS NULL OR i.currency = $2) AND ($3::text IS NULL OR i.customer_id = $3)",
        as_of,
        currency,
        customer_id,
    )
    return [(r["customer_id"], r["currency"], r["due_at"], int(r["balance"])) for r in rows]


async def receivable_balances(conn: Conn, *, customer_id: str | None) -> list[dict[str, Any]]:
    """Open invoice balances per customer and currency, now."""
    rows = await conn.fetch(
        "SELECT customer_id, currency, sum(balance_minor)::bigint AS balance_minor FROM invoices"
        " WHERE balance_minor > 0 AND ($1::text IS NULL OR customer_id = $1)"
        " GROUP BY customer_id, currency ORDER BY customer_id, currency",
        customer_id,
    )
    return [dict(r) for r in rows]
