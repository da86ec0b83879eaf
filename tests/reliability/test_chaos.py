"""The small chaos run inside `make test`: kill -9 services and the broker under an order-to-cash load, then
check that nothing acknowledged was lost, nothing applied twice, and the books balance and reconcile."""

from __future__ import annotations

import json
import os
from pathlib import Path

from devstack import chaos


async def test_kill_anything_lose_nothing_double_count_nothing(tmp_path: Path) -> None:
    orders = int(os.environ.get("CHAOS_ORDERS", "150"))
    seed = int(os.environ.get("CHAOS_SEED", "20261128"))
    report = await chaos.run(
        orders=orders,
        seed=seed,
        kill_postgres=False,
        every=(2.0, 4.0),
        pause=(1.0, 2.0),
        min_kills=1,
        out=tmp_path / "chaos.json",
        deadline_s=600,
    )
    written = json.loads((tmp_path / "chaos.json").read_text())
    assert written["seed"] == seed
    assert report.problems == []
    assert report.acknowledged_orders == orders
    assert all(report.kills.get(t, 0) >= 1 for t in ("orders", "billing", "support", "ledger", "kafka"))
    assert report.lost == 0
    assert report.duplicated == 0
    assert report.unbalanced_entries == 0
    assert report.trial_balance_zero
    assert report.reconciliation_differences == 0
    assert report.valid_events_dead_lettered == 0
    assert report.consumers_stuck == []
