"""Report routes: AR and AP aging as of a date, and the balances the ledger reconciles against."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request

from billing import aging, schemas, store, store_payables, store_reports
from billing.deps import AsOf, CurrencyQuery, CustomerQuery, Read, StaffRead

router = APIRouter(prefix="/reports", tags=["reports"])


def _totals(rows: list[aging.AgingRow]) -> list[schemas.AgingOut]:
    by_currency: dict[str, dict[str, int]] = {}
    for row in rows:
        buckets = by_currency.setdefault(row.currency, dict.fromkeys(aging.AGING_BUCKETS, 0))
        for name, amount in row.buckets.items():
            buckets[name] += amount
    return [
        schemas.AgingOut(currency=c, buckets=b, total_minor=sum(b.values())) for c, b in sorted(by_currency.items())
    ]


@router.get("/ar-aging", response_model=schemas.AgingReport, summary="Receivables by days past due, per customer")
async def ar_aging(
    request: Request,
    principal: Read,
    as_of: AsOf = None,
    currency: CurrencyQuery = None,
    customer_id: CustomerQuery = None,
) -> schemas.AgingReport:
    when = as_of or datetime.now(UTC)
    items = await store_reports.open_invoice_items(
        request.app.state.pool, as_of=when, currency=currency, customer_id=principal.scope_customer(customer_id)
    )
    rows = aging.age(items, as_of=when)
    return schemas.AgingReport(
        as_of=when,
        currency=currency,
        rows=[schemas.AgingOut.of(r, party="customer_id") for r in rows],
        totals=_totals(rows),
    )


@router.get("/ap-aging", response_model=schemas.AgingReport, summary="Payables by days past due, per vendor")
async def ap_aging(
    request: Request, principal: StaffRead, as_of: AsOf = None, currency: CurrencyQuery = None
) -> schemas.AgingReport:
    when = as_of or datetime.now(UTC)
    items = await store_payables.open_bill_items(request.app.state.pool, as_of=when, currency=currency)
    rows = aging.age(items, as_of=when)
    return schemas.AgingReport(
        as_of=when,
        currency=currency,
        rows=[schemas.AgingOut.of(r, party="vendor_id") for r in rows],
        totals=_totals(rows),
    )


@router.get("/balances", response_model=schemas.Balances, summary="Open receivables, customer credit and payables")
async def balances(request: Request, principal: Read) -> schemas.Balances:
    """What the ledger's accounts 1100, 2300 and 2000 should hold per customer or vendor and currency."""
    customer = principal.scope_customer(None)
    async with request.app.state.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        as_of = datetime.now(UTC)
        receivables = await store_reports.receivable_balances(conn, customer_id=customer)
        credit = await store.credit_balances(conn, customer_id=customer)
        payables = [] if principal.is_customer else await store_payables.payable_balances(conn)
    return schemas.Balances(
        as_of=as_of,
        receivables=[schemas.CustomerBalance(**r) for r in receivables],
        customer_credit=[schemas.CustomerBalance(**r) for r in credit],
        payables=[schemas.VendorBalance(**r) for r in payables],
    )
