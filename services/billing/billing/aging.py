"""Pure aging rules: open amounts bucketed by whole days past due, per party and currency."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from billing.domain import days_overdue

AGING_BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")


def aging_bucket(due_at: datetime, as_of: datetime) -> str:
    """The aging bucket of an amount due at `due_at`, seen on `as_of` (whole days past due)."""
    days = days_overdue(due_at, as_of)
    if days == 0:
        return "current"
    if days <= 30:
        return "1-30"
    if days <= 60:
        return "31-60"
    if days <= 90:
        return "61-90"
    return "90+"


@dataclass(frozen=True)
class AgingRow:
    party_id: str
    currency: str
    buckets: dict[str, int]

    @property
    def total_minor(self) -> int:
        return sum(self.buckets.values())


def age(items: Sequence[tuple[str, str, datetime, int]], *, as_of: datetime) -> list[AgingRow]:
    """Open amounts `(party, currency, due_at, balance)` summed per party and currency into aging buckets."""
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for party, currency, due_at, balance in items:
        if balance <= 0:
            continue
        buckets = rows.setdefault((party, currency), dict.fromkeys(AGING_BUCKETS, 0))
        buckets[aging_bucket(due_at, as_of)] += balance
    return [AgingRow(party, currency, buckets) for (party, currency), buckets in sorted(rows.items())]
