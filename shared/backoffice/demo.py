"""`backoffice demo`: seed a catalogue and run a realistic business day through the four services' HTTP APIs.

Everything goes through the public APIs (no database, no Kafka): products and stock, customers with payment terms,
orders (two backordered, then confirmed by a stock receipt), whole and partial shipments, a cancellation, payments
(one over-paid, one partial), a return with restock, an overdue invoice pushed through dunning and disputed, a
customer's question answered, vendor bills paid in parts. Then it waits (bounded) for the events to settle and
returns a `Summary`: orders by status, AR aging, the trial balance and the reconciliation. Every run uses fresh ids
and sends an Idempotency-Key on every POST, so it is safe to run again against the same platform.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from backoffice.demo_api import SERVICES, Api, DemoError, Urls, staff_token
from backoffice.demo_day import CURRENCY, ROLES, Day

__all__ = ["DemoError", "Summary", "Urls", "run_demo"]


@dataclass
class Summary:
    """What the demo did and how the books look afterwards (this run's customers; the ledger is platform-wide)."""

    run: str
    currency: str
    customers: list[str]
    vendors: list[str]
    orders_created: int
    orders_by_status: dict[str, int]
    backorders_filled: int
    shipments: int
    invoices_issued: int
    invoiced_minor: int
    payments: int
    collected_minor: int
    credit_notes: int
    overdue_invoice: dict[str, Any]
    bills: int
    bill_payments: int
    ar_aging: dict[str, Any]
    trial_balance: dict[str, Any]
    reconciliation: dict[str, Any]
    elapsed_s: float

    @property
    def balanced(self) -> bool:
        totals = self.trial_balance["totals"]
        return bool(totals["debit_minor"] == totals["credit_minor"])

    @property
    def reconciliation_clean(self) -> bool:
        return not self.reconciliation["differences"]


async def summarise(day: Day, started: float) -> Summary:
    """The day's figures, read back from the services."""
    statuses: Counter[str] = Counter()
    for c in day.customers:
        statuses.update(o["status"] for o in await day.orders.items("/orders", customer_id=c.id))
    invoices = await day.our_invoices()
    notes = await day.billing.items("/credit-notes", customer_id=day.role("over-payer").id)
    as_of = (day.aging_as_of or datetime.now().astimezone()).isoformat()
    aging = await day.billing.get("/reports/ar-aging", as_of=as_of, currency=CURRENCY)
    ours = {c.id for c in day.customers}
    aging["rows"] = [r for r in aging["rows"] if r["customer_id"] in ours]
    return Summary(
        run=day.run,
        currency=CURRENCY,
        customers=[c.id for c in day.customers],
        vendors=day.vendors,
        orders_created=sum(len(c.orders) for c in day.customers),
        orders_by_status=dict(sorted(statuses.items())),
        backorders_filled=day.filled,
        shipments=day.shipments,
        invoices_issued=len(invoices),
        invoiced_minor=sum(i["total_minor"] for i in invoices),
        payments=day.payments,
        collected_minor=day.collected,
        credit_notes=len(notes),
        overdue_invoice={
            k: day.late[k]
            for k in (
                "id",
                "number",
                "customer_id",
                "balance_minor",
                "due_at",
                "status",
                "dunning_level",
                "disputed",
            )
        },
        bills=day.bills,
        bill_payments=day.bill_payments,
        ar_aging=aging,
        trial_balance=await day.ledger.get("/reports/trial-balance", currency=CURRENCY),
        reconciliation=day.recon,
        elapsed_s=round(time.monotonic() - started, 1),
    )


async def run_demo(
    urls: Urls | None = None,
    *,
    customers: int = 5,
    seed: int | None = None,
    token: str | None = None,
    console: Console | None = None,
    timeout: float = 60.0,
) -> Summary:
    """Run one business day against the platform at `urls`; raise DemoError with a clear message when it cannot."""
    if customers < len(ROLES):
        raise DemoError(f"the demo needs at least {len(ROLES)} customers ({', '.join(ROLES)})")
    urls = urls or Urls()
    run = uuid.uuid4().hex[:8]
    bearer = token or staff_token()
    apis = {s: Api(s, urls.of(s), bearer, run=run) for s in SERVICES}
    started = time.monotonic()
    try:
        down = []
        for api in apis.values():
            try:
                await api.ready()
            except DemoError as exc:
                down.append(str(exc))
        if down:
            raise DemoError("\n".join(down))
        day = Day(apis, run=run, rng=random.Random(seed), customers=customers, timeout=timeout)
        steps = [
            ("Seeding the catalogue", day.catalogue),
            ("Setting customers' payment terms", day.terms),
            ("Taking orders", day.place_orders),
            ("Receiving stock for backorders", day.receive_stock),
            ("Shipping, in parts where stock is picked", day.ship),
            ("Cancelling an order", day.cancel),
            ("Waiting for billing to invoice the shipments", day.wait_invoices),
            ("Receiving payments", day.receive_payments),
            ("Taking back a damaged item", day.customer_return),
            ("Running dunning on an unpaid invoice", day.dunning),
            ("Disputing the overdue invoice", day.dispute),
            ("Answering a customer's question", day.question),
            ("Booking and paying vendor bills", day.payables),
            ("Waiting for the events to settle", day.settle),
        ]
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description:<46}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"business day {run}", total=len(steps) + 1)
            for description, step in steps:
                progress.update(task, description=description)
                await step()
                progress.advance(task)
            progress.update(task, description="Summing up")
            summary = await summarise(day, started)
            progress.update(task, description=f"Done: business day {run}", advance=1)
        return summary
    finally:
        for api in apis.values():
            await api.aclose()
