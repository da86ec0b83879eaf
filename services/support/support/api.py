"""Ticket routes: open, list, read, messages, assignment, status and disputes."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from backoffice import events, idempotency, outbox, problems
from backoffice.auth import Principal, require
from backoffice.db import Conn
from backoffice.errors import Forbidden, NotFound, Unprocessable
from backoffice.ids import new_id
from backoffice.pagination import Cursor, Limit, Page, decode_cursor, encode_cursor
from support import domain, schemas, store
from support.settings import Settings

router = APIRouter(tags=["tickets"])

Reader = Annotated[Principal, Depends(require("support:read"))]
Writer = Annotated[Principal, Depends(require("support:write"))]
AgentWriter = Annotated[Principal, Depends(require("support:write", staff_only=True))]
TicketId = uuid.UUID


def int_cursor(cursor: str | None) -> int | None:
    """The single integer keyset of a cursor (422 naming `cursor` for anything else)."""
    values = decode_cursor(cursor)
    if values is None:
        return None
    if len(values) != 1 or not isinstance(values[0], int) or isinstance(values[0], bool):
        raise Unprocessable("cursor is not valid", field="query.cursor")
    return values[0]


async def load(conn: Conn, ticket_id: uuid.UUID, principal: Principal, *, lock: bool = False) -> domain.Ticket:
    """The ticket, locked if asked; 404 when absent or another customer's."""
    ticket = await store.get_ticket(conn, ticket_id=str(ticket_id), lock=lock)
    if ticket is None:
        raise NotFound("ticket not found")
    principal.ensure_visible(ticket.customer_id, what="ticket")
    return ticket


async def detail(conn: Conn, ticket: domain.Ticket, principal: Principal) -> schemas.Ticket:
    messages = await store.list_messages(
        conn, ticket_id=ticket.id, public_only=principal.is_customer, limit=domain.MESSAGES_SHOWN
    )
    disputes = await store.list_disputes(conn, ticket_id=ticket.id)
    return schemas.Ticket.of(
        ticket,
        for_customer=principal.is_customer,
        as_of=events.now(),
        messages=[m for _, m in messages],
        disputes=disputes,
    )


async def _check_owner(conn: Conn, *, kind: str, ref_id: str | None, customer_id: str) -> None:
    """An order or invoice known from the topics to be another customer's cannot be linked."""
    if ref_id is None:
        return
    owner = await store.ref_owner(conn, kind=kind, ref_id=ref_id)
    if owner is not None and owner != customer_id:
        raise Unprocessable(f"{kind} {ref_id} is not one of customer {customer_id}'s", field=f"body.{kind}_id")


@router.post(
    "/tickets",
    status_code=201,
    responses=problems.responses(404, 409),
    response_model=schemas.Ticket,
    summary="Open a ticket",
)
async def open_ticket(body: schemas.OpenTicket, request: Request, principal: Writer) -> Response:
    principal.ensure_visible(body.customer_id, what="customer")
    settings: Settings = request.app.state.settings
    order_id = str(body.order_id) if body.order_id else None
    invoice_id = str(body.invoice_id) if body.invoice_id else None
    draft = domain.Draft(
        customer_id=body.customer_id,
        subject=body.subject,
        description=body.description,
        priority=body.priority,
        category=body.category,
        order_id=order_id,
        invoice_id=invoice_id,
        source="customer" if principal.is_customer else "agent",
    )

    async def operation(conn: Conn) -> tuple[int, Any]:
        await _check_owner(conn, kind="order", ref_id=order_id, customer_id=body.customer_id)
        await _check_owner(conn, kind="invoice", ref_id=invoice_id, customer_id=body.customer_id)
        opened = domain.open_ticket(draft, ticket_id=new_id(), policy=settings.sla_policy, at=events.now())
        await store.insert_ticket(conn, ticket=opened.ticket)
        await outbox.append_many(conn, opened.events)
        return 201, await detail(conn, opened.ticket, principal)

    return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)


@router.get("/tickets", summary="List tickets, newest first")
async def list_tickets(
    request: Request,
    principal: Reader,
    status: schemas.Status | None = None,
    priority: schemas.Priority | None = None,
    breached: bool | None = None,
    customer_id: Annotated[str | None, Query(max_length=100)] = None,
    assignee: Annotated[str | None, Query(max_length=100)] = None,
    order_id: uuid.UUID | None = None,
    invoice_id: uuid.UUID | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.Ticket]:
    if principal.is_customer and breached is not None:
        raise Forbidden("the breached filter is for agents")
    rows = await store.list_tickets(
        request.app.state.pool,
        limit=limit + 1,
        before_seq=int_cursor(cursor),
        status=status,
        priority=priority,
        breached=breached,
        customer_id=principal.scope_customer(customer_id),
        assignee=assignee,
        order_id=str(order_id) if order_id else None,
        invoice_id=str(invoice_id) if invoice_id else None,
    )
    now = events.now()
    items = [schemas.Ticket.of(t, for_customer=principal.is_customer, as_of=now) for _, t in rows[:limit]]
    more = len(rows) > limit
    return Page[schemas.Ticket](items=items, next_cursor=encode_cursor([rows[limit - 1][0]]) if more else None)


@router.get("/tickets/{ticket_id}", response_model=schemas.Ticket, summary="A ticket with its messages")
async def get_ticket(ticket_id: TicketId, request: Request, principal: Reader) -> schemas.Ticket:
    async with request.app.state.pool.acquire() as conn:
        ticket = await load(conn, ticket_id, principal)
        return await detail(conn, ticket, principal)


@router.post(
    "/tickets/{ticket_id}/messages",
    status_code=201,
    responses=problems.CONFLICT,
    response_model=schemas.Message,
    summary="Reply or add a note",
)
async def post_message(ticket_id: TicketId, body: schemas.PostMessage, request: Request, principal: Writer) -> Response:
    async def operation(conn: Conn) -> tuple[int, Any]:
        ticket = await load(conn, ticket_id, principal, lock=True)
        message, outcome = domain.add_message(
            ticket,
            author=principal.sub,
            kind="customer" if principal.is_customer else "agent",
            visibility=body.visibility,
            body=body.body,
            message_id=new_id(),
            at=events.now(),
        )
        await store.insert_message(conn, message=message)
        await store.save_ticket(conn, ticket=outcome.ticket)
        await outbox.append_many(conn, outcome.events)
        return 201, schemas.Message.of(message)

    return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)


@router.get("/tickets/{ticket_id}/messages", summary="A ticket's messages, oldest first")
async def list_messages(
    ticket_id: TicketId, request: Request, principal: Reader, limit: Limit = 50, cursor: Cursor = None
) -> Page[schemas.Message]:
    async with request.app.state.pool.acquire() as conn:
        ticket = await load(conn, ticket_id, principal)
        rows = await store.list_messages(
            conn,
            ticket_id=ticket.id,
            public_only=principal.is_customer,
            limit=limit + 1,
            after_seq=int_cursor(cursor),
        )
    items = [schemas.Message.of(m) for _, m in rows[:limit]]
    more = len(rows) > limit
    return Page[schemas.Message](items=items, next_cursor=encode_cursor([rows[limit - 1][0]]) if more else None)


@router.post(
    "/tickets/{ticket_id}/assign",
    responses=problems.CONFLICT,
    response_model=schemas.Ticket,
    summary="Assign to an agent",
)
async def assign(ticket_id: TicketId, body: schemas.Assign, request: Request, principal: AgentWriter) -> Response:

    async def operation(conn: Conn) -> tuple[int, Any]:
        ticket = await load(conn, ticket_id, principal, lock=True)
        assigned = domain.assign(ticket, agent=body.agent, at=events.now())
        await store.save_ticket(conn, ticket=assigned)
        return 200, await detail(conn, assigned, principal)

    return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)


@router.post(
    "/tickets/{ticket_id}/status",
    responses=problems.CONFLICT,
    response_model=schemas.Ticket,
    summary="Move a ticket's status",
)
async def change_status(
    ticket_id: TicketId, body: schemas.ChangeStatus, request: Request, principal: AgentWriter
) -> Response:

    async def operation(conn: Conn) -> tuple[int, Any]:
        at = events.now()
        ticket = await load(conn, ticket_id, principal, lock=True)
        disputes = await store.list_disputes(conn, ticket_id=ticket.id, only_open=True)
        outcome = domain.change_status(ticket, body.status, at=at, open_disputes=disputes, outcome=body.outcome)
        if body.note:
            note, _ = domain.add_message(
                ticket,
                author=principal.sub,
                kind="agent",
                visibility="internal",
                body=body.note,
                message_id=new_id(),
                at=at,
            )
            await store.insert_message(conn, message=note)
        await store.save_ticket(conn, ticket=outcome.ticket)
        await store.save_disputes(conn, disputes=outcome.disputes)
        await outbox.append_many(conn, outcome.events)
        return 200, await detail(conn, outcome.ticket, principal)

    return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)


@router.post(
    "/tickets/{ticket_id}/dispute",
    status_code=201,
    responses=problems.CONFLICT,
    response_model=schemas.Dispute,
    summary="Dispute an invoice",
)
async def open_dispute(ticket_id: TicketId, body: schemas.OpenDispute, request: Request, principal: Writer) -> Response:
    async def operation(conn: Conn) -> tuple[int, Any]:
        ticket = await load(conn, ticket_id, principal, lock=True)
        invoice_id = str(body.invoice_id)
        await _check_owner(conn, kind="invoice", ref_id=invoice_id, customer_id=ticket.customer_id)
        dispute, outcome = domain.open_dispute(
            ticket,
            invoice_id=invoice_id,
            reason=body.reason,
            dispute_id=new_id(),
            at=events.now(),
            open_disputes=await store.list_disputes(conn, ticket_id=ticket.id, only_open=True),
        )
        await store.insert_dispute(conn, dispute=dispute)
        await store.save_ticket(conn, ticket=outcome.ticket)
        await outbox.append_many(conn, outcome.events)
        return 201, schemas.Dispute.of(dispute)

    return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)
