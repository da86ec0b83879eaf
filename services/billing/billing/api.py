"""Receivables routes: invoices, credit notes, payments (cash application), customers' terms and statement,
and the dunning job."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from backoffice import events, idempotency, outbox, problems
from backoffice.db import Conn
from backoffice.errors import NotFound
from backoffice.ids import new_id
from backoffice.pagination import Cursor, Limit, Page, page
from billing import domain, jobs, schemas, store, store_reports
from billing.deps import Admin, AsOf, CustomerPath, CustomerQuery, Read, Write, after_seq, settings_of

router = APIRouter(tags=["receivables"])

STATEMENT_LIMIT = 1000


# --- invoices and credit notes -----------------------------------------------------------------


@router.get("/invoices", response_model=Page[schemas.InvoiceOut], summary="Invoices, oldest first")
async def list_invoices(
    request: Request,
    principal: Read,
    customer_id: CustomerQuery = None,
    status: schemas.InvoiceStatus | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.InvoiceOut]:
    rows = await store.list_invoices(
        request.app.state.pool,
        customer_id=principal.scope_customer(customer_id),
        status=status,
        after=after_seq(cursor),
        limit=limit + 1,
    )
    found = page(rows, limit=limit, key=lambda r: [r[0]])
    return Page[schemas.InvoiceOut](
        items=[schemas.InvoiceOut.of(i) for _, i in found.items], next_cursor=found.next_cursor
    )


@router.get("/invoices/{invoice_id}", response_model=schemas.InvoiceOut)
async def get_invoice(invoice_id: uuid.UUID, request: Request, principal: Read) -> schemas.InvoiceOut:
    invoice = await store.get_invoice(request.app.state.pool, invoice_id=str(invoice_id))
    if invoice is None:
        raise NotFound("invoice not found")
    principal.ensure_visible(invoice.customer_id, what="invoice")
    return schemas.InvoiceOut.of(invoice)


@router.get("/credit-notes", response_model=Page[schemas.CreditNoteOut])
async def list_credit_notes(
    request: Request,
    principal: Read,
    customer_id: CustomerQuery = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.CreditNoteOut]:
    rows = await store.list_credit_notes(
        request.app.state.pool,
        customer_id=principal.scope_customer(customer_id),
        after=after_seq(cursor),
        limit=limit + 1,
    )
    found = page(rows, limit=limit, key=lambda r: [r["seq"]])
    return Page[schemas.CreditNoteOut](
        items=[schemas.CreditNoteOut.of_row(r) for r in found.items], next_cursor=found.next_cursor
    )


@router.get("/credit-notes/{credit_note_id}", response_model=schemas.CreditNoteOut)
async def get_credit_note(credit_note_id: uuid.UUID, request: Request, principal: Read) -> schemas.CreditNoteOut:
    row = await store.get_credit_note(request.app.state.pool, credit_note_id=str(credit_note_id))
    if row is None:
        raise NotFound("credit note not found")
    principal.ensure_visible(row["customer_id"], what="credit note")
    return schemas.CreditNoteOut.of_row(row)


# --- payments ----------------------------------------------------------------------------------


def _payment_in(body: schemas.PaymentIn) -> domain.PaymentIn:
    allocations = None
    if body.allocations is not None:
        allocations = tuple(
            events.Allocation(invoice_id=str(a.invoice_id), amount_minor=a.amount_minor) for a in body.allocations
        )
    return domain.PaymentIn(
        id=new_id(),
        customer_id=body.customer_id,
        currency=body.currency,
        amount_minor=body.amount_minor,
        method=body.method,
        reference=body.reference,
        received_at=body.received_at or datetime.now(UTC),
        allocations=allocations,
    )


async def _apply_payment(conn: Conn, payment: domain.PaymentIn) -> schemas.PaymentOut:
    """Lock the customer and the invoices concerned, apply the payment, keep the rest as customer credit."""
    await store.lock_customer(conn, customer_id=payment.customer_id)
    if payment.allocations is not None:
        ids = [a.invoice_id for a in payment.allocations]
        invoices = await store.lock_invoices(conn, customer_id=payment.customer_id, invoice_ids=ids)
    else:
        invoices = await store.lock_open_invoices(conn, customer_id=payment.customer_id, currency=payment.currency)
    outcome = domain.apply_payment(payment, invoices)
    await store.insert_payment(conn, payment=payment, unapplied_minor=outcome.unapplied_minor)
    for invoice in outcome.invoices:
        await store.update_invoice(conn, invoice=invoice)
    at = payment.received_at
    await store.add_settlements(
        conn, rows=[(a.invoice_id, "payment", payment.id, a.amount_minor, at) for a in outcome.applied]
    )
    if outcome.unapplied_minor:
        await store.lock_credit(conn, customer_id=payment.customer_id, currency=payment.currency)
        await store.add_credit(
            conn, customer_id=payment.customer_id, currency=payment.currency, delta_minor=outcome.unapplied_minor
        )
    await outbox.append_many(conn, outcome.events)
    return schemas.PaymentOut(
        id=payment.id,
        customer_id=payment.customer_id,
        currency=payment.currency,
        amount_minor=payment.amount_minor,
        applied=[schemas.Applied(invoice_id=a.invoice_id, amount_minor=a.amount_minor) for a in outcome.applied],
        unapplied_minor=outcome.unapplied_minor,
        method=payment.method,
        reference=payment.reference,
        received_at=at,
    )


@router.post(
    "/payments",
    status_code=201,
    responses=problems.CONFLICT,
    response_model=schemas.PaymentOut,
    summary="Receive a payment: to the listed invoices, else oldest open invoice first; the rest is credit",
)
async def receive_payment(body: schemas.PaymentIn, request: Request, principal: Write) -> Response:

    async def operation(conn: Conn) -> tuple[int, Any]:
        return 201, await _apply_payment(conn, _payment_in(body))

    return await idempotency.run(
        request, pool=request.app.state.pool, principal=principal, operation=operation, required=True
    )


@router.get("/payments", response_model=Page[schemas.PaymentOut])
async def list_payments(
    request: Request,
    principal: Read,
    customer_id: CustomerQuery = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.PaymentOut]:
    rows = await store.list_payments(
        request.app.state.pool,
        customer_id=principal.scope_customer(customer_id),
        after=after_seq(cursor),
        limit=limit + 1,
    )
    found = page(rows, limit=limit, key=lambda r: [r["seq"]])
    return Page[schemas.PaymentOut](
        items=[schemas.PaymentOut.of_row(r) for r in found.items], next_cursor=found.next_cursor
    )


@router.get("/payments/{payment_id}", response_model=schemas.PaymentOut)
async def get_payment(payment_id: uuid.UUID, request: Request, principal: Read) -> schemas.PaymentOut:
    row = await store.get_payment(request.app.state.pool, payment_id=str(payment_id))
    if row is None:
        raise NotFound("payment not found")
    principal.ensure_visible(row["customer_id"], what="payment")
    return schemas.PaymentOut.of_row(row)


# --- customers ---------------------------------------------------------------------------------


@router.put("/customers/{customer_id}/terms", response_model=schemas.TermsOut)
async def set_terms(
    customer_id: CustomerPath, body: schemas.Terms, request: Request, principal: Write
) -> schemas.TermsOut:
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        await store.set_terms(conn, customer_id=customer_id, days=body.payment_terms_days)
    return schemas.TermsOut(customer_id=customer_id, payment_terms_days=body.payment_terms_days, is_default=False)


@router.get("/customers/{customer_id}/terms", response_model=schemas.TermsOut)
async def get_terms(customer_id: CustomerPath, request: Request, principal: Read) -> schemas.TermsOut:
    principal.ensure_visible(customer_id, what="customer")
    terms = await store.get_terms(request.app.state.pool, customer_id=customer_id)
    default = settings_of(request).default_payment_terms_days
    return schemas.TermsOut(
        customer_id=customer_id, payment_terms_days=default if terms is None else terms, is_default=terms is None
    )


@router.get("/customers/{customer_id}/statement", response_model=schemas.Statement)
async def statement(customer_id: CustomerPath, request: Request, principal: Read) -> schemas.Statement:
    """Every invoice, credit note and payment of the customer, their unapplied credit and what they owe."""
    principal.ensure_visible(customer_id, what="customer")
    pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        terms = await store.get_terms(conn, customer_id=customer_id)
        invoices = await store.list_invoices(
            conn, customer_id=customer_id, status=None, after=None, limit=STATEMENT_LIMIT
        )
        notes = await store.list_credit_notes(conn, customer_id=customer_id, after=None, limit=STATEMENT_LIMIT)
        payments = await store.list_payments(conn, customer_id=customer_id, after=None, limit=STATEMENT_LIMIT)
        credit = await store.credit_balances(conn, customer_id=customer_id)
        owed = await store_reports.receivable_balances(conn, customer_id=customer_id)
    credit_by = {r["currency"]: r["balance_minor"] for r in credit}
    owed_by = {r["currency"]: r["balance_minor"] for r in owed}
    balance = [
        schemas.StatementBalance(
            currency=c,
            open_invoices_minor=owed_by.get(c, 0),
            credit_minor=credit_by.get(c, 0),
            balance_minor=owed_by.get(c, 0) - credit_by.get(c, 0),
        )
        for c in sorted(credit_by.keys() | owed_by.keys())
    ]
    return schemas.Statement(
        customer_id=customer_id,
        as_of=datetime.now(UTC),
        payment_terms_days=settings_of(request).default_payment_terms_days if terms is None else terms,
        invoices=[schemas.InvoiceOut.of(i) for _, i in invoices],
        credit_notes=[schemas.CreditNoteOut.of_row(r) for r in notes],
        payments=[schemas.PaymentOut.of_row(r) for r in payments],
        credit=[schemas.CurrencyAmount(currency=c, balance_minor=v) for c, v in sorted(credit_by.items())],
        balance=balance,
    )


# --- jobs --------------------------------------------------------------------------------------


@router.post("/jobs/dunning", response_model=schemas.DunningRun, tags=["jobs"])
async def dunning(request: Request, principal: Admin, as_of: AsOf = None) -> schemas.DunningRun:
    """Mark past-due invoices overdue and announce dunning levels 1, 2, 3 (at 1, 15, 30 days) once each."""
    return await jobs.run_dunning(request.app.state.pool, as_of=as_of or datetime.now(UTC))
