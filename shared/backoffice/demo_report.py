"""Prints the demo's summary: what the day did, orders by status, AR aging, the trial balance, the reconciliation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from backoffice.demo import Summary
from backoffice.demo_api import money


def _day(s: Summary) -> Table:
    table = Table(title=f"Business day {s.run}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    late = s.overdue_invoice
    rows = [
        ("customers", str(len(s.customers))),
        ("orders placed", str(s.orders_created)),
        ("backorders filled by a stock receipt", str(s.backorders_filled)),
        ("shipments", str(s.shipments)),
        ("invoices issued", f"{s.invoices_issued}  ({money(s.invoiced_minor, s.currency)})"),
        ("payments received", f"{s.payments}  ({money(s.collected_minor, s.currency)})"),
        ("credit notes (returns)", str(s.credit_notes)),
        (
            "overdue invoice",
            f"{late['number']}  {late['status']}, dunning level {late['dunning_level']}"
            + (", disputed" if late["disputed"] else ""),
        ),
        ("vendor bills / bill payments", f"{s.bills} / {s.bill_payments}"),
        ("elapsed", f"{s.elapsed_s:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _statuses(s: Summary) -> Table:
    table = Table(title="Orders by status (this run)", title_justify="left")
    table.add_column("status")
    table.add_column("orders", justify="right")
    for status, count in s.orders_by_status.items():
        table.add_row(status, str(count))
    return table


def _aging(s: Summary) -> Table:
    report: dict[str, Any] = s.ar_aging
    buckets: list[str] = report["bucket_names"]
    table = Table(title=f"AR aging as of {report['as_of'][:10]} ({s.currency})", title_justify="left")
    table.add_column("customer")
    for name in buckets:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right", style="bold")
    for row in report["rows"]:
        table.add_row(row["customer_id"], *(money(row["buckets"][b]) for b in buckets), money(row["total_minor"]))
    for total in report["totals"]:
        if total["currency"] == s.currency:
            table.add_section()
            table.add_row(
                "all customers",
                *(money(total["buckets"][b]) for b in buckets),
                money(total["total_minor"]),
                style="bold",
            )
    return table


def _trial(s: Summary) -> Table:
    trial = s.trial_balance
    verdict = "balanced" if s.balanced else "NOT BALANCED"
    table = Table(title=f"Trial balance ({trial['currency']}, whole ledger): {verdict}", title_justify="left")
    table.add_column("account")
    table.add_column("name")
    table.add_column("debit", justify="right")
    table.add_column("credit", justify="right")
    for row in trial["rows"]:
        if row["debit_minor"] or row["credit_minor"]:
            debit, credit = row["debit_minor"], row["credit_minor"]
            table.add_row(row["account"], row["name"], money(debit) if debit else "", money(credit) if credit else "")
    table.add_section()
    totals = trial["totals"]
    table.add_row("", "totals", money(totals["debit_minor"]), money(totals["credit_minor"]), style="bold")
    return table


def _reconciliation(s: Summary) -> str:
    recon = s.reconciliation
    if s.reconciliation_clean:
        return f"[green]Reconciliation clean[/]: {recon['checked']} balances agree between the ledger and billing."
    lines = [f"[red]Reconciliation: {len(recon['differences'])} difference(s)[/] of {recon['checked']} balances:"]
    for d in recon["differences"][:20]:
        lines.append(
            f"  {d['kind']} {d.get('party')} {d['currency']}: ledger {money(d['ledger_minor'])}, "
            f"billing {money(d['billing_minor'])}"
        )
    return "\n".join(lines)


def render(summary: Summary, console: Console | None = None) -> None:
    console = console or Console()
    for table in (_day(summary), _statuses(summary), _aging(summary), _trial(summary)):
        console.print(table)
        console.print()
    console.print(_reconciliation(summary))
