"""Where a PostgreSQL database's backends spend their CPU, inside the server: `perf` samples with call stacks.

`pg_stat_statements` says which statements took the time, not what in them did: planning, starting the executor,
foreign-key checks, index inserts, the commit's WAL flush. The embedded PostgreSQL binaries keep their symbols, so
`perf record --call-graph dwarf` on a database's backends shows that. `bench.probe --perf orders` uses this for each
step: it prints the share of the samples in each of `CENTRES` (planning, index inserts, the commit, ...), then the
functions found in the most samples (a function's share counts the samples it was anywhere on the stack, so callers
include their callees), and keeps the stacks collapsed (`frame;frame;... count`, as py-spy's raw output and
flame-graph tools have them) in `.run/reports/perf-<db>-<rate>.txt`; the raw samples are deleted once read.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

# One frame of `perf script`'s default output: `<address> <symbol>+<offset> (<object>)`, indented.
_FRAME = re.compile(r"^\s+[0-9a-f]+ (?P<symbol>.+?)(?:\+0x[0-9a-f]+)? \((?P<object>[^)]*)\)\s*$")
# The compiler's clones of a function (`RI_FKey_check.isra.0`, `exec_stmt_execsql.constprop.0`) are that function.
_CLONE = re.compile(r"(?:\.(?:isra|constprop|part|cold)(?:\.\d+)?)+$")
# What a statement's time is made of, each by the server function that does it (a sample counts for each of these
# found on its stack, so they overlap where one calls another: the commit holds the WAL flush).
CENTRES = (
    ("planning", "standard_planner"),
    ("executor start", "standard_ExecutorStart"),
    ("index lookups", "_bt_first"),
    ("index inserts", "btinsert"),
    ("heap inserts", "heap_insert"),
    ("heap updates", "heap_update"),
    ("row locks", "heap_lock_tuple"),
    ("foreign-key checks", "RI_FKey_check"),
    ("sorts, with their input", "ExecSort"),
    ("JSON parsing", "pg_parse_json"),
    ("commit", "CommitTransaction"),
    ("WAL flush", "XLogFlush"),
    ("reading the client", "secure_read"),
)
# Functions on (nearly) every stack of a backend: they say nothing about where its time went.
_EVERYWHERE = 0.95


class PerfMissing(RuntimeError):
    pass


def perf_binary() -> str:
    perf = shutil.which("perf")
    if perf is None:
        raise PerfMissing("`perf` is not installed (Debian: the linux-perf package); --perf needs it")
    return perf


def record(pids: Iterable[int], *, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling `pids` (at 499 Hz, stacks unwound from DWARF) for `seconds`, into `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [perf_binary(), "record", "-p", ",".join(str(pid) for pid in pids), "-F", "499"]
    cmd += ["--call-graph", "dwarf,32768", "-o", str(out), "--", "sleep", f"{seconds:g}"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def script(data: Path) -> str:
    """The samples of a `record`, as `perf script` prints them; the record is deleted (tens of MB a step)."""
    result = subprocess.run([perf_binary(), "script", "-i", str(data)], capture_output=True, text=True, check=False)
    data.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"perf script failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def samples(text: str) -> list[list[str]]:
    """Each sample's stack, innermost function first, from `perf script` output. A frame perf could not name is
    `[unknown]` (its object's name is kept when there is one)."""
    out: list[list[str]] = []
    stack: list[str] = []
    for line in text.splitlines():
        frame = _FRAME.match(line)
        if frame:
            symbol = _CLONE.sub("", frame["symbol"])
            if symbol == "[unknown]" and frame["object"] not in ("", "[unknown]"):
                symbol = f"[{Path(frame['object']).name}]"
            stack.append(symbol)
        elif not line.strip() or not line[:1].isspace():  # a blank line or the next sample's header ends a stack
            if stack:
                out.append(stack)
            stack = []
    if stack:
        out.append(stack)
    return out


def collapsed(stacks: list[list[str]]) -> list[str]:
    """`outermost;...;innermost count` per distinct stack, the most frequent first."""
    counts = collections.Counter(";".join(reversed(stack)) for stack in stacks)
    return [f"{stack} {n}" for stack, n in counts.most_common()]


def inclusive(stacks: list[list[str]], *, top: int = 25) -> list[tuple[str, float]]:
    """The `top` functions by the share of samples whose stack holds them (each counted once per sample), leaving
    out those on nearly every stack (`main`, `PostgresMain`, ...)."""
    if not stacks:
        return []
    counts = collections.Counter(symbol for stack in stacks for symbol in set(stack))
    shares = ((symbol, n / len(stacks)) for symbol, n in counts.items())
    return sorted(((s, share) for s, share in shares if share < _EVERYWHERE), key=lambda kv: (-kv[1], kv[0]))[:top]


def centres(stacks: list[list[str]]) -> list[tuple[str, float]]:
    """The share of samples in each of `CENTRES`."""
    if not stacks:
        return []
    held = [set(stack) for stack in stacks]
    return [(name, sum(function in frames for frames in held) / len(stacks)) for name, function in CENTRES]


def summary(stacks: list[list[str]], *, top: int = 25) -> list[str]:
    """The lines the probe prints for one step: the share of samples in each of `CENTRES`, then the functions found
    on the most stacks."""
    if not stacks:
        return ["  perf: no samples (were the database's backends idle?)"]
    lines = [f"  perf: {len(stacks)} samples of the backends; share of the samples in:"]
    lines.append("    " + ", ".join(f"{name} {100 * share:.1f}%" for name, share in centres(stacks)))
    lines.append("  the functions on the most stacks:")
    lines += [f"    {100 * share:5.1f}% {symbol}" for symbol, share in inclusive(stacks, top=top)]
    return lines
