"""SLA clock arithmetic (pure): a clock runs while the ticket is worked on and keeps its elapsed time when paused."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

ClockName = Literal["first_response", "resolution"]
CLOCKS: tuple[ClockName, ...] = ("first_response", "resolution")
_ZERO = timedelta(0)


@dataclass(frozen=True)
class Clock:
    """Elapsed running time up to `running_since` (None while paused or stopped) against a target."""

    target: timedelta
    elapsed: timedelta = _ZERO
    running_since: datetime | None = None
    due_at: datetime | None = None
    breached_at: datetime | None = None

    @property
    def running(self) -> bool:
        return self.running_since is not None

    def elapsed_at(self, as_of: datetime) -> timedelta:
        """Running time at `as_of` (a moment before the clock last started adds nothing)."""
        if self.running_since is None or as_of <= self.running_since:
            return self.elapsed
        return self.elapsed + (as_of - self.running_since)

    def started(self, at: datetime) -> Clock:
        if self.running:
            return self
        return replace(self, running_since=at, due_at=at + (self.target - self.elapsed))

    def paused(self, at: datetime) -> Clock:
        if self.running_since is None:
            return self
        return replace(self, elapsed=self.elapsed_at(at), running_since=None)

    def run_if(self, running: bool, at: datetime) -> Clock:
        return self.started(at) if running else self.paused(at)

    def is_breached(self, as_of: datetime) -> bool:
        """Past its target at `as_of` and not yet reported."""
        return self.breached_at is None and self.elapsed_at(as_of) > self.target


def new_clock(target: timedelta, *, at: datetime) -> Clock:
    return Clock(target=target).started(at)


@dataclass(frozen=True)
class PriorityStats:
    priority: str
    tickets: int
    first_response_breached: int
    resolution_breached: int
    breached: int

    @property
    def breach_rate_bp(self) -> int:
        """Share of tickets with any breach, in basis points (rounded half up)."""
        if self.tickets == 0:
            return 0
        return (self.breached * 10_000 * 2 + self.tickets) // (self.tickets * 2)


def complete_stats(rows: Iterable[PriorityStats], priorities: Iterable[str]) -> list[PriorityStats]:
    """One row per priority, in the given order, zeros where no ticket had it."""
    found: Mapping[str, PriorityStats] = {r.priority: r for r in rows}
    return [found.get(p) or PriorityStats(p, 0, 0, 0, 0) for p in priorities]


def totals(rows: Iterable[PriorityStats]) -> PriorityStats:
    rows = list(rows)
    return PriorityStats(
        "all",
        sum(r.tickets for r in rows),
        sum(r.first_response_breached for r in rows),
        sum(r.resolution_breached for r in rows),
        sum(r.breached for r in rows),
    )
