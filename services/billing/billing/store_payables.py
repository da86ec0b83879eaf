"""Every SQL statement of payables: vendors, bills, bill payments; never commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from backoffice.db import Conn
from billing.payables import Bill, BillLine

_BILL = (
    "seq, id, vendor_id, bill_number, currency, lines, expense_account, subtotal_minor, tax_minor, total_minor,"
    " paid_minor, status, received_at, due_at, paid_at"
)


def _bill(row: asyncpg.Record) -> Bill:
    return Bill(
        id=str(row["id"]),
        vendor_id=str(row["vendor_id"]),
        bill_number=row["bill_number"],
        currency=row["currency"],
        lines=tuple(BillLine(**line) for line in row["lines"]),
        expense_account=row["expense_account"],
        subtotal_minor=row["subtotal_minor"],
        tax_minor=row["tax_minor"],
        total_minor=row["total_minor"],
        paid_minor=row["paid_minor"],
        status=row["status"],
        received_at=row["received_at"],
        due_at=row["due_at"],
        paid_at=row["paid_at"],
    )


async def insert_vendor(conn: Conn, *, vendor_id: str, name: str, payment_terms_days: int) -> dict[str, Any]:
    row = await conn.fetchrow(
        "INSERT INTO vendors (id, name, payment_terms_days) VALUES ($1, $2, $3)"
        " RETURNING id, name, payment_terms_days, created_at",
        vendor_id,
        name,
        payment_terms_days,
    )
    assert row is not None
    return dict(row)


async def get_vendor(conn: Conn, *, vendor_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT id, name, payment_terms_days, created_at FROM vendors WHERE id = $1", vendor_id)
    return dict(row) if row else None


async def list_vendors(conn: Conn, *, after: int | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT seq, id, name, payment_terms_days, created_at FROM vendors WHERE ($1::bigint IS NULL OR seq > $1)"
        " ORDER BY seq LIMIT $2",
        after,
        limit,
    )
    return [dict(r) for r in rows]


async def insert_bill(conn: Conn, *, bill: Bill) -> bool:
    """Insert a bill; False when the vendor already has a bill with that number."""
    inserted = await conn.fetchval(
        "INSERT INTO bills (id, vendor_id, bill_number, currency, lines, expense_account, subtotal_minor, tax_minor,"
        " total_minor, paid_minor, balance_minor, status, received_at, due_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        " ON CONFLICT (vendor_id, bill_number) DO NOTHING RETURNING true",
        bill.id,
        bill.vendor_id,
        bill.bill_number,
        bill.currency,
        [{"description": x.description, "amount_minor": x.amount_minor, "tax_minor": x.tax_minor} for x in bill.lines],
        bill.expense_account,
        bill.subtotal_minor,
        bill.tax_minor,
        bill.total_minor,
        bill.paid_minor,
        bill.balance_minor,
        bill.status,
        bill.received_at,
        bill.due_at,
    )
    return bool(inserted)


async def get_bill(conn: Conn, *, bill_id: str) -> Bill | None:
    row = await conn.fetchrow(f"SELECT {_BILL} FROM bills WHERE id = $1", bill_id)
    return _bill(row) if row else None


async def lock_bill(conn: Conn, *, bill_id: str) -> Bill | None:
    row = await conn.fetchrow(f"SELECT {_BILL} FROM bills WHERE id = $1 FOR UPDATE", bill_id)
    return _bill(row) if row else None


async def update_bill(conn: Conn, *, bill: Bill) -> None:
    await conn.execute(
        "UPDATE bills SET paid_minor = $2, balance_minor = $3, status = $4, paid_at = $5 WHERE id = $1",
        bill.id,
        bill.paid_minor,
        bill.balance_minor,
        bill.status,
        bill.paid_at,
    )


async def list_bills(
    conn: Conn, *, vendor_id: str | None, status: str | None, after: int | None, limit: int
) -> list[tuple[int, Bill]]:
    rows = await conn.fetch(
        f"SELECT {_BILL} FROM bills WHERE ($1::uuid IS NULL OR vendor_id = $1) AND ($2::text IS NULL OR status = $2)"
        " AND ($3::bigint IS NULL OR seq > $3) ORDER BY seq LIMIT $4",
        vendor_id,
        status,
        after,
        limit,
    )
    return [(r["seq"], _bill(r)) for r in rows]


async def insert_bill_payment(
    conn: Conn, *, payment_id: str, bill_id: str, amount_minor: int, reference: str, paid_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO bill_payments (id, bill_id, amount_minor, reference, paid_at) VALUES ($1, $2, $3, $4, $5)",
        payment_id,
        bill_id,
        amount_minor,
        reference,
        paid_at,
    )


async def bill_payments(conn: Conn, *, bill_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, amount_minor, reference, paid_at FROM bill_payments WHERE bill_id = $1 ORDER BY seq", bill_id
    )
    return [dict(r) for r in rows]


async def open_bill_items(conn: Conn, *, as_of: datetime, currency: str | None) -> list[tuple[str, str, datetime, int]]:
    """`(vendor_id, currency, due_at, balance as of)` of every bill received and not fully paid by `as_of`."""
    rows = await conn.fetch(
        "SELECT b.vendor_id, b.currency, b.due_at, b.total_minor - COALESCE((SELECT sum(p.amount_minor)"
        " FROM bill_payments p WHERE p.bill_id = b.id AND p.paid_at <= $1), 0) AS balance FROM bills b"
        " WHERE b.received_at <= $1 AND (b.paid_at IS NULL OR b.paid_at > $1)"
        " AND ($2::text IS NULL OR b.currency = $2)",
        as_of,
        currency,
    )
    return [(str(r["vendor_id"]), r["currency"], r["due_at"], int(r["balance"])) for r in rows]


async def payable_balances(conn: Conn) -> list[dict[str, Any]]:
    """Unpaid bill balances per vendor and currency."""
    rows = await conn.fetch(
        "SELECT vendor_id::text AS vendor_id, currency, sum(balance_minor)::bigint AS balance_minor FROM bills"
        " WHERE balance_minor > 0 GROUP BY vendor_id, currency ORDER BY vendor_id, currency"
    )
    return [dict(r) for r in rows]
