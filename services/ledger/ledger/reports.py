"""Routes of balances and reports: account balance, general ledger, trial balance, reconciliation with billing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from backoffice import events
from backoffice.db import Conn
from backoffice.errors import NotFound, Unprocessable
from backoffice.pagination import Cursor, Limit, Page, decode_cursor, page
from ledger import billing_client, domain, schemas, store
from ledger.access import Reader

router = APIRouter(tags=["reports"])
CodePath = Annotated[str, Path(pattern=domain.ACCOUNT_CODE.pattern, description="account code, e.g. `1100`")]
CurrencyQuery = Annotated[
    str | None, Query(pattern=r"^[A-Z]{3}$", description="ISO 4217; may be left out when only one is in use")
]
AsOf = Annotated[events.Rfc3339 | None, Query(description="RFC 3339 with offset; default now")]


async def _account(conn: Conn, code: str) -> domain.Account:
    account = await store.get_account(conn, code=code)
    if account is None:
        raise NotFound(f"account {code} not found")
    return account


async def _currency(conn: Conn, requested: str | None, *, account: str | None = None) -> str:
    """The currency asked for, or the only one in use; 422 naming `currency` when that is ambiguous."""
    if requested is not None:
        return requested
    found = await store.currencies(conn, account=account)
    if len(found) == 1:
        return found[0]
    detail = f"in use: {', '.join(found)}" if found else "nothing has been posted to infer it from"
    raise Unprocessable(f"currency is required ({detail})", field="query.currency")


@router.get("/accounts/{code}/balance", response_model=schemas.Balance, summary="An account's balance as of a time")
async def account_balance(
    code: CodePath, request: Request, principal: Reader, as_of: AsOf = None, currency: CurrencyQuery = None
) -> schemas.Balance:
    when = (as_of or events.now()).astimezone(UTC)
    async with request.app.state.pool.acquire() as conn:
        account = await _account(conn, code)
        chosen = await _currency(conn, currency, account=code)
        debits, credits = await store.account_totals(conn, account=code, currency=chosen, as_of=when)
    return schemas.Balance(
        account=code,
        name=account.name,
        type=account.type,
        currency=chosen,
        as_of=when,
        debit_minor=debits,
        credit_minor=credits,
        balance_minor=domain.balance(account.type, debit_minor=debits, credit_minor=credits),
    )


def _ledger_cursor(cursor: str | None) -> tuple[str, datetime, int] | None:
    values = decode_cursor(cursor)
    if values is None:
        return None
    try:
        currency, when, line_id = values
        parsed = (str(currency), datetime.fromisoformat(when), int(line_id))
    except (TypeError, ValueError) as exc:
        raise Unprocessable("cursor is not valid", field="query.cursor") from exc
    if parsed[1].tzinfo is None:
        raise Unprocessable("cursor is not valid", field="query.cursor")
    return parsed


@router.get(
    "/accounts/{code}/entries",
    response_model=Page[schemas.LedgerLine],
    summary="General-ledger detail: the account's lines by currency and effective time, with running balance",
)
@router.get("/accounts/{code}/ledger", response_model=Page[schemas.LedgerLine], include_in_schema=False)
async def general_ledger(
    code: CodePath,
    request: Request,
    principal: Reader,
    currency: CurrencyQuery = None,
    start: Annotated[events.Rfc3339 | None, Query(alias="from", description="effective at or after")] = None,
    end: Annotated[events.Rfc3339 | None, Query(alias="to", description="effective at or before; default now")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[schemas.LedgerLine]:
    after = _ledger_cursor(cursor)
    pool = request.app.state.pool
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):  # one snapshot
        account = await _account(conn, code)
        lines = await store.ledger_lines(
            conn, account=code, currency=currency, start=start, end=end or events.now(), after=after, limit=limit + 1
        )
        openings: dict[str, tuple[int, int]] = {}
        for line in lines[:limit]:
            if line.currency not in openings:
                openings[line.currency] = await store.totals_before(
                    conn, account=code, currency=line.currency, effective_at=line.effective_at, line_id=line.id
                )
    balances = domain.running_balances(
        account.type, [(li.currency, li.debit_minor, li.credit_minor) for li in lines], openings=openings
    )
    items = [
        schemas.LedgerLine(
            line_id=line.id,
            entry_id=line.entry_id,
            currency=line.currency,
            effective_at=line.effective_at,
            posted_at=line.posted_at,
            source_type=line.source_type,
            memo=line.memo,
            debit_minor=line.debit_minor,
            credit_minor=line.credit_minor,
            party=line.party,
            balance_minor=running,
        )
        for line, running in zip(lines, balances, strict=True)
    ]
    return page(items, limit=limit, key=lambda i: [i.currency, i.effective_at.isoformat(), i.line_id])


@router.get("/reports/trial-balance", response_model=schemas.TrialBalance, summary="Trial balance as of a time")
async def trial_balance(
    request: Request, principal: Reader, as_of: AsOf = None, currency: CurrencyQuery = None
) -> schemas.TrialBalance:
    when = (as_of or events.now()).astimezone(UTC)
    async with request.app.state.pool.acquire() as conn:
        chosen = await _currency(conn, currency)
        found = await store.trial_balance(conn, currency=chosen, as_of=when)
    rows = []
    for account, debits, credits in found:
        debit, credit = domain.net_columns(debit_minor=debits, credit_minor=credits)
        rows.append(
            schemas.TrialBalanceRow(
                account=account.code, name=account.name, type=account.type, debit_minor=debit, credit_minor=credit
            )
        )
    totals = schemas.Totals(
        debit_minor=sum(r.debit_minor for r in rows), credit_minor=sum(r.credit_minor for r in rows)
    )
    return schemas.TrialBalance(
        as_of=when,
        currency=chosen,
        rows=rows,
        totals=totals,
        balanced=totals.debit_minor == totals.credit_minor,
    )


@router.get(
    "/reports/reconciliation",
    response_model=schemas.Reconciliation,
    summary="Receivables, customer credit and payables per party: the ledger against billing's own figures",
    responses={503: {"description": "billing could not be asked"}},
)
async def reconciliation(request: Request, principal: Reader) -> Any:
    billing = await billing_client.fetch_balances(request.app.state.settings)
    async with request.app.state.pool.acquire() as conn:
        rows = await store.party_totals(conn, accounts=sorted(domain.PARTY_ACCOUNTS))
    checked, differences = domain.reconcile(domain.party_balances(rows), billing.party_balances())
    return schemas.Reconciliation(
        as_of=billing.as_of, checked=checked, differences=[schemas.Difference.of(d) for d in differences]
    )
