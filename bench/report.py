"""One result per pair and durability mode; the table `make bench` prints and `.run/reports/bench.json`."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# A process's (or the hypervisor's steal's) CPU figure, in cores, is printed from this much: below it, it is noise.
CORES_SHOWN = 0.05


def shown(cores: dict[str, float]) -> str:
    """The CPU figures worth printing, by name: `orders=0.58,postgres=0.60,...`, or `-`."""
    return ",".join(f"{k}={v:.2f}" for k, v in sorted(cores.items()) if v >= CORES_SHOWN) or "-"


@dataclass
class Figures:
    """One pair measured in one mode (PostgreSQL synchronous_commit on or off)."""

    ours: float
    baseline: float | None
    ratio: float | None
    met: bool
    p50_ms: float | None = None
    p99_ms: float | None = None
    baseline_p50_ms: float | None = None
    baseline_p99_ms: float | None = None
    cpu_cores: dict[str, float] = field(default_factory=dict)
    baseline_cpu_cores: dict[str, float] = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)
    baseline_runs: list[float] = field(default_factory=list)
    # Paired repeats (ours, then its baseline right after): each repeat's ratio, and the ratio of the two medians,
    # which is what `ratio` would be without the pairing.
    paired_ratios: list[float] = field(default_factory=list)
    ratio_of_medians: float | None = None
    note: str = ""


@dataclass
class Pair:
    name: str
    unit: str
    target: str  # ">= 0.75" (on the ratio) or "<= 250" (on ours)
    modes: dict[str, Figures] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The JSON object: the synchronous_commit=on figures at the top, the off ones beside them."""
        main = self.modes.get("sync_on") or next(iter(self.modes.values()))
        out: dict[str, Any] = {"name": self.name, "unit": self.unit, "target": self.target, **asdict(main)}
        off = self.modes.get("sync_off")
        if off is not None and off is not main:
            out["synchronous_commit_off"] = asdict(off)
        return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def judge(target: str, *, ours: float, ratio: float | None) -> bool:
    op, _, bound = target.partition(" ")
    value = ratio if ratio is not None else ours
    if value is None or math.isnan(value):
        return False
    return value >= float(bound) if op == ">=" else value <= float(bound)


def figures(
    target: str,
    ours: list[float],
    baseline: list[float] | None,
    *,
    kind: Literal["ratio", "value"] = "ratio",
    paired: bool = False,
    **extra: Any,
) -> Figures:
    """Medians of the repeats, their ratio and whether the target is met.

    `paired`: the i-th run of ours and the i-th of the baseline ran one after the other, and the ratio is the median
    of the repeats' ratios rather than the ratio of the medians. The host's speed drifts over a pair's minutes (on
    2026-12-01 the five baseline runs of `consumer_apply` rose from 2598 to 5285 events/s, while ours' went from 2732
    to 4199, each just before its baseline): medians taken side by side then compare a run made on a slow minute
    with one made on a fast minute (0.56 that day), where each repeat compares two neighbours (their median 0.74).
    """
    mine = median(ours)
    base = median(baseline) if baseline else None
    of_medians = mine / base if kind == "ratio" and base else None
    pairs: list[float] = []
    if paired and baseline and kind == "ratio":
        if len(baseline) != len(ours):
            raise ValueError(f"paired runs must match: {len(ours)} of ours, {len(baseline)} of the baseline")
        pairs = [o / b for o, b in zip(ours, baseline, strict=True) if b]
    ratio = median(pairs) if pairs else of_medians
    return Figures(
        ours=round(mine, 2),
        baseline=round(base, 2) if base is not None else None,
        ratio=round(ratio, 3) if ratio is not None else None,
        met=judge(target, ours=mine, ratio=ratio),
        runs=[round(v, 2) for v in ours],
        baseline_runs=[round(v, 2) for v in baseline or []],
        paired_ratios=[round(r, 3) for r in pairs],
        ratio_of_medians=round(of_medians, 3) if pairs and of_medians is not None else None,
        **extra,
    )


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _cell(f: Figures | None) -> tuple[str, ...]:
    if f is None:
        return ("-",) * 6
    latency = f"{_fmt(f.p50_ms)}/{_fmt(f.p99_ms)}" if f.p50_ms is not None else "-"
    return (
        _fmt(f.ours),
        _fmt(f.baseline),
        _fmt(f.ratio, 2),
        "yes" if f.met else "NO",
        latency,
        shown(f.cpu_cores),
    )


def table(pairs: list[Pair]) -> str:
    head = ("name", "unit", "target", "ours", "baseline", "ratio", "met", "p50/p99 ms")
    off = ("ours", "baseline", "ratio", "met", "p50/p99 ms")
    rows: list[tuple[str, ...]] = [(*head, "| sync_commit=off:", *off)]
    cpu_lines = []
    for pair in pairs:
        on, off_f = pair.modes.get("sync_on"), pair.modes.get("sync_off")
        a, b = _cell(on), _cell(off_f)
        rows.append((pair.name, pair.unit, pair.target, *a[:5], "|", *b[:5]))
        cpu_lines.append(f"  {pair.name}: {a[5]}   (baseline: {_cpu(on)})")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if any(f.paired_ratios for pair in pairs for f in pair.modes.values()):
        lines.append(
            "ours and baseline are the medians of their runs; where the two took turns, the ratio is the median of"
            " each turn's ratio (bench.json: paired_ratios, ratio_of_medians)"
        )
    return "\n".join([*lines, "", "CPU per process during ours (cores, synchronous_commit=on):", *cpu_lines])


def _cpu(f: Figures | None) -> str:
    if f is None or not f.baseline_cpu_cores:
        return "-"
    return shown(f.baseline_cpu_cores)


def write(pairs: list[Pair], path: Path, *, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([p.row() for p in pairs], indent=2))
    path.with_name(path.stem + ".meta.json").write_text(json.dumps(meta, indent=2))
