"""Payables routes: vendors, bills and bill payments (staff only)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from backoffice import idempotency, outbox, problems
from backoffice.db import Conn
from backoffice.errors import Conflict, NotFound, Unprocessable
from backoffice.ids import new_id
from backoffice.pagination import Cursor, Limit, Page, page
from billing import payables, schemas, store_payables
from billing.deps import StaffRead, Write, after_seq

router = APIRouter(tags=["payables"])


@router.post("/vendors", status_code=201, responses=problems.CONFLICT, response_model=schemas.VendorOut)
async def create_vendor(body: schemas.VendorIn, request: Request, principal: Write) -> Response:

    async def operation(conn: Conn) -> tuple[int, Any]:
        row = await store_payables.insert_vendor(
            conn, vendor_id=new_id(), name=body.name, payment_terms_days=body.payment_terms_days
        )
        return 201, schemas.VendorOut.of_row(row)

    return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)


@router.get("/vendors", response_model=Page[schemas.VendorOut])
async def list_vendors(
    request: Request, principal: StaffRead, limit: Limit = 50, cursor: Cursor = None
) -> Page[schemas.VendorOut]:
    rows = await store_payables.list_vendors(request.app.state.pool, after=after_seq(cursor), limit=limit + 1)
    found = page(rows, limit=limit, key=lambda r: [r["seq"]])
    return Page[schemas.VendorOut](
        items=[schemas.VendorOut.of_row(r) for r in found.items], next_cursor=found.next_cursor
    )


@router.get("/vendors/{vendor_id}", response_model=schemas.VendorOut)
async def get_vendor(vendor_id: uuid.UUID, request: Request, principal: StaffRead) -> schemas.VendorOut:
    row = await store_payables.get_vendor(request.app.state.pool, vendor_id=str(vendor_id))
    if row is None:
        raise NotFound("vendor not found")
    return schemas.VendorOut.of_row(row)


async def _receive_bill(conn: Conn, body: schemas.BillIn) -> schemas.BillOut:
    vendor = await store_payables.get_vendor(conn, vendor_id=str(body.vendor_id))
    if vendor is None:
        raise Unprocessable("no such vendor", field="body.vendor_id")
    now = datetime.now(UTC)
    bill, caused = payables.receive_bill(
        bill_id=new_id(),
        vendor_id=str(body.vendor_id),
        bill_number=body.bill_number,
        currency=body.currency,
        lines=tuple(payables.BillLine(x.description, x.amount_minor, x.tax_minor) for x in body.lines),
        expense_account=body.expense_account,
        received_at=now,
        due_at=payables.bill_due_at(received_at=now, due_at=body.due_at, terms_days=vendor["payment_terms_days"]),
    )
    if not await store_payables.insert_bill(conn, bill=bill):
        raise Conflict(f"vendor already has a bill numbered {body.bill_number!r}")
    await outbox.append_many(conn, caused)
    return schemas.BillOut.of(bill, [])


@router.post("/bills", status_code=201, responses=problems.CONFLICT, response_model=schemas.BillOut)
async def receive_bill(body: schemas.BillIn, request: Request, principal: Write) -> Response:

    async def operation(conn: Conn) -> tuple[int, Any]:
        return 201, await _receive_bill(conn, body)

    return await idempotency.run(
        request, pool=request.app.state.pool, principal=principal, operation=operation, required=True
    )


@router.get("/bills", response_model=Page[schemas.BillOut])
async def list_bills(
    request: Request,
    principal: StaffRead,
    vendor_id: uuid.UUID | None = None,
    status: schemas.BillStatus | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.BillOut]:
    rows = await store_payables.list_bills(
        request.app.state.pool,
        vendor_id=str(vendor_id) if vendor_id else None,
        status=status,
        after=after_seq(cursor),
        limit=limit + 1,
    )
    found = page(rows, limit=limit, key=lambda r: [r[0]])
    return Page[schemas.BillOut](items=[schemas.BillOut.of(b) for _, b in found.items], next_cursor=found.next_cursor)


@router.get("/bills/{bill_id}", response_model=schemas.BillOut)
async def get_bill(bill_id: uuid.UUID, request: Request, principal: StaffRead) -> schemas.BillOut:
    async with request.app.state.pool.acquire() as conn:
        bill = await store_payables.get_bill(conn, bill_id=str(bill_id))
        if bill is None:
            raise NotFound("bill not found")
        return schemas.BillOut.of(bill, await store_payables.bill_payments(conn, bill_id=bill.id))


async def _pay_bill(conn: Conn, bill_id: str, body: schemas.BillPaymentIn) -> schemas.BillPaymentResult:
    bill = await store_payables.lock_bill(conn, bill_id=bill_id)
    if bill is None:
        raise NotFound("bill not found")
    payment_id = new_id()
    paid_at = body.paid_at or datetime.now(UTC)
    bill, caused = payables.pay_bill(bill, payment_id=payment_id, amount_minor=body.amount_minor, paid_at=paid_at)
    await store_payables.insert_bill_payment(
        conn,
        payment_id=payment_id,
        bill_id=bill.id,
        amount_minor=body.amount_minor,
        reference=body.reference,
        paid_at=paid_at,
    )
    await store_payables.update_bill(conn, bill=bill)
    await outbox.append_many(conn, caused)
    return schemas.BillPaymentResult(
        id=payment_id,
        bill_id=bill.id,
        amount_minor=body.amount_minor,
        reference=body.reference,
        paid_at=paid_at,
        bill=schemas.BillOut.of(bill, await store_payables.bill_payments(conn, bill_id=bill.id)),
    )


@router.post(
    "/bills/{bill_id}/payments", status_code=201, responses=problems.CONFLICT, response_model=schemas.BillPaymentResult
)
async def pay_bill(bill_id: uuid.UUID, body: schemas.BillPaymentIn, request: Request, principal: Write) -> Response:
    """Pay a bill, partly or in full; more than is owed is 422. Answers the payment and the bill."""

    async def operation(conn: Conn) -> tuple[int, Any]:
        return 201, await _pay_bill(conn, str(bill_id), body)

    return await idempotency.run(
        request, pool=request.app.state.pool, principal=principal, operation=operation, required=True
    )
