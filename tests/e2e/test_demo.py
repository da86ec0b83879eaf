"""`backoffice demo` against the e2e fleet: a whole business day through the APIs, twice, and the books agree."""

from __future__ import annotations

import io
import socket

import pytest
from rich.console import Console

from backoffice import cli
from backoffice.demo import DemoError, Summary, Urls, run_demo
from backoffice.demo_report import render
from devstack.fleet import Fleet


def _urls(fleet: Fleet) -> Urls:
    return Urls(
        orders=fleet.url("orders"),
        billing=fleet.url("billing"),
        support=fleet.url("support"),
        ledger=fleet.url("ledger"),
    )


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=140)


def _check(summary: Summary, customers: int) -> None:
    assert len(summary.customers) == customers
    assert summary.orders_created >= customers + 2  # one each, two backorders, maybe more
    assert sum(summary.orders_by_status.values()) == summary.orders_created
    assert summary.orders_by_status.get("backordered", 0) == 0  # the stock receipt filled both
    assert summary.backorders_filled == 2
    assert {"shipped", "partially_shipped", "cancelled"} <= set(summary.orders_by_status)
    assert summary.shipments >= customers + 2
    assert summary.invoices_issued == summary.shipments  # one invoice per shipment
    assert summary.invoiced_minor > 0
    assert summary.payments >= 2
    assert summary.credit_notes == 1
    late = summary.overdue_invoice
    assert late["status"] == "overdue"
    assert late["dunning_level"] == 2
    assert late["disputed"] is True
    assert (summary.bills, summary.bill_payments) == (2, 3)
    aging = {row["customer_id"]: row for row in summary.ar_aging["rows"]}
    assert aging[late["customer_id"]]["buckets"]["1-30"] == late["balance_minor"] > 0
    assert set(aging) <= set(summary.customers)
    assert summary.balanced
    assert summary.trial_balance["totals"]["debit_minor"] > 0
    assert summary.reconciliation_clean, summary.reconciliation
    assert summary.reconciliation["checked"] > 0


class TestDemo:
    async def test_a_business_day_runs_twice_and_the_books_agree(self, fleet: Fleet) -> None:
        first = await run_demo(_urls(fleet), customers=5, seed=7, console=_quiet())
        _check(first, 5)
        second = await run_demo(_urls(fleet), customers=4, seed=7, console=_quiet())
        _check(second, 4)
        assert second.run != first.run
        assert not set(second.customers) & set(first.customers)
        assert second.trial_balance["totals"]["debit_minor"] > first.trial_balance["totals"]["debit_minor"]

        out = _quiet()
        render(second, out)
        text = out.file.getvalue()  # type: ignore[attr-defined]
        for heading in ("Orders by status", "AR aging", "Trial balance", "Reconciliation clean"):
            assert heading in text

    async def test_an_unreachable_service_is_a_clear_error(self, fleet: Fleet) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound but never listening: refused
            urls = Urls(
                orders=fleet.url("orders"),
                billing=f"http://127.0.0.1:{port}",
                support=fleet.url("support"),
                ledger=fleet.url("ledger"),
            )
            with pytest.raises(DemoError, match=r"billing is not reachable at http://127\.0\.0\.1:\d+"):
                await run_demo(urls, console=_quiet())

    def test_the_command_exits_non_zero_when_nothing_answers(self, capsys: pytest.CaptureFixture[str]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            down = f"http://127.0.0.1:{sock.getsockname()[1]}"
            code = cli.main(
                ["demo", "--orders-url", down, "--billing-url", down, "--support-url", down, "--ledger-url", down]
            )
        assert code == 1
        err = capsys.readouterr().err
        assert "demo failed" in err
        assert "orders is not reachable" in err
        assert "ledger is not reachable" in err
