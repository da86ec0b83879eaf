"""Routes of the chart of accounts and the journal: accounts, manual entries, reversals, entry lists."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from backoffice import events, idempotency, problems
from backoffice.db import Conn
from backoffice.errors import Conflict, NotFound, Unprocessable
from backoffice.ids import new_uuid
from backoffice.pagination import Cursor, Limit, Page, decode_cursor, page
from ledger import domain, schemas, store
from ledger.access import Reader, Writer

router = APIRouter()
CodePath = Annotated[str, Path(pattern=domain.ACCOUNT_CODE.pattern, description="account code, e.g. `1100`")]


def _cursor_value(cursor: str | None, kind: type) -> Any:
    values = decode_cursor(cursor)
    if values is None:
        return None
    if len(values) != 1 or not isinstance(values[0], kind) or isinstance(values[0], bool):
        raise Unprocessable("cursor is not valid", field="query.cursor")
    return values[0]


# --- accounts -------------------------------------------------------------------------------------------------


@router.get("/accounts", response_model=Page[schemas.Account], tags=["accounts"], summary="The chart of accounts")
async def list_accounts(
    request: Request, principal: Reader, limit: Limit = 50, cursor: Cursor = None
) -> Page[schemas.Account]:
    after = _cursor_value(cursor, str)
    async with request.app.state.pool.acquire() as conn:
        accounts = await store.list_accounts(conn, after=after, limit=limit + 1)
    return page([schemas.Account.of(a) for a in accounts], limit=limit, key=lambda a: [a.code])


@router.post(
    "/accounts",
    status_code=201,
    responses=problems.CONFLICT,
    response_model=schemas.Account,
    tags=["accounts"],
    summary="Open an account",
)
async def create_account(body: schemas.NewAccount, request: Request, principal: Writer) -> Response:
    async def operation(conn: Conn) -> tuple[int, Any]:
        account = domain.Account(code=body.code, name=body.name, type=body.type)
        if not await store.insert_account(conn, account=account):
            raise Conflict(f"account {body.code} already exists")
        return 201, schemas.Account.of(account)

    return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)


@router.get("/accounts/{code}", response_model=schemas.Account, tags=["accounts"], summary="One account")
async def get_account(code: CodePath, request: Request, principal: Reader) -> schemas.Account:
    async with request.app.state.pool.acquire() as conn:
        account = await store.get_account(conn, code=code)
    if account is None:
        raise NotFound(f"account {code} not found")
    return schemas.Account.of(account)


# --- journal entries ------------------------------------------------------------------------------------------


@router.post(
    "/journal-entries",
    status_code=201,
    responses=problems.CONFLICT,
    response_model=schemas.Entry,
    tags=["journal"],
    summary="Post a manual entry (Idempotency-Key required)",
)
async def post_manual_entry(body: schemas.ManualEntry, request: Request, principal: Writer) -> Response:
    async def operation(conn: Conn) -> tuple[int, Any]:
        lines = tuple(line.line() for line in body.lines)
        known = await store.known_accounts(conn, codes=sorted({line.account for line in lines}))
        domain.check_lines(body.currency, lines, known=known, line_currencies=[line.currency for line in body.lines])
        now = events.now()
        draft = domain.Draft(
            currency=body.currency,
            lines=lines,
            effective_at=body.effective_at or now,
            source_type="manual",
            memo=body.memo,
        )
        entry = domain.post(draft, entry_id=new_uuid(), posted_at=now, source_event_id=None)
        await store.post_entry(conn, entry=entry)
        return 201, schemas.Entry.of(entry)

    return await idempotency.run(
        request, pool=request.app.state.pool, principal=principal, operation=operation, required=True
    )


@router.post(
    "/journal-entries/{entry_id}/reverse",
    status_code=201,
    responses=problems.CONFLICT,
    response_model=schemas.Entry,
    tags=["journal"],
    summary="Reverse an entry (once): its lines with debits and credits swapped",
)
async def reverse_entry(
    entry_id: uuid.UUID, request: Request, principal: Writer, body: schemas.Reversal | None = None
) -> Response:
    options = body or schemas.Reversal()

    async def operation(conn: Conn) -> tuple[int, Any]:
        found = await store.get_entry(conn, entry_id=entry_id, lock=True)
        if found is None:
            raise NotFound(f"journal entry {entry_id} not found")
        reversal = domain.reverse(
            found.entry,
            entry_id=new_uuid(),
            posted_at=events.now(),
            already_reversed=found.reversed_by is not None,
            effective_at=options.effective_at,
            memo=options.memo,
        )
        await store.post_entry(conn, entry=reversal)
        return 201, schemas.Entry.of(reversal)

    return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=operation)


@router.get("/journal-entries", response_model=Page[schemas.Entry], tags=["journal"], summary="Entries, filtered")
async def list_entries(
    request: Request,
    principal: Reader,
    account: Annotated[str | None, Query(pattern=domain.ACCOUNT_CODE.pattern)] = None,
    source_event_id: uuid.UUID | None = None,
    source_type: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.Entry]:
    after = _cursor_value(cursor, int)
    async with request.app.state.pool.acquire() as conn:
        found = await store.list_entries(
            conn,
            account=account,
            source_event_id=source_event_id,
            source_type=source_type,
            currency=currency,
            after_seq=after,
            limit=limit + 1,
        )
    seqs = {f.entry.id: f.seq for f in found}
    return page([schemas.Entry.stored(f) for f in found], limit=limit, key=lambda e: [seqs[e.id]])


@router.get("/journal-entries/{entry_id}", response_model=schemas.Entry, tags=["journal"], summary="One entry")
async def get_entry(entry_id: uuid.UUID, request: Request, principal: Reader) -> schemas.Entry:
    async with request.app.state.pool.acquire() as conn:
        found = await store.get_entry(conn, entry_id=entry_id)
    if found is None:
        raise NotFound(f"journal entry {entry_id} not found")
    return schemas.Entry.stored(found)
