"""`python -m bench.probe RATE [RATE ...]`: what the pipeline costs at fixed rates, process by process.

`make bench` says how fast the pipeline goes; this says where its CPU goes. On the bench's own stack it places and
ships orders open-loop at each rate in turn (`http_pairs.pipeline_step`: each order until its invoice's journal
entry) and prints, for each step, whether it kept up, its p50/p99, the cores each process kept busy, PostgreSQL's
split by database (its backends) and by background process, and the CPU per order. With `--statements DB` it also
loads `pg_stat_statements` and prints the statements of that database that took the most time in each step
(`--nested` counts those run inside functions too). With `--stages` it follows each order through the services
(`timelines`) and prints how long each stage took, in the first and the last third of the step: a stage that
cannot keep up is the one whose time grows. With `--perf DB` it samples that database's backends with `perf` through
each step and prints the server functions they spent their time in (`pgperf`). With `--wal` it prints what each
order wrote to PostgreSQL's write-ahead log, by record type (`pg_walinspect`): how many rows, index entries, row
locks and inbox checks an order costs, all databases together.

The rates are not judged against anything: the point is comparing the steps of one run, such as how much of the
cost is paid per order and how much per cycle of the relays.

The steps run on databases that look used, as the bench's do: `--preload S` first places orders closed-loop for S
seconds, as the bench's `http_place_order` runs do before its pipeline, and every service database is analysed once
the warm-up is over. Without that the planner still sees the tables as they were at start (autovacuum first
analyses them up to a minute later), and the statements that look orders up by a list of ids ran as sequential
scans of the growing `orders` table: 2384 of them, 18.8 million rows read, in the 40 s of a warm-up and two 10 s
steps at 700/s. (The ship group's check of each order kept such a plan even after the analysis, 120-250 us per
order shipped, until migration 0011 of orders made it look each order up by its key.)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import psutil
import uvloop

from bench import http_pairs, pgperf
from bench.loadgen import percentile
from bench.stack import SERVICES, Stack
from devstack.config import RUN_DIR

# A backend's title: `postgres: <user> <database> <client> <activity>`, the client `[local]` or `host(port)`.
_BACKEND = re.compile(r"^postgres: \S+ (?P<database>\S+) (?:\[local\]|\S+\(\d+\))")


def role_of(cmdline: str) -> str:
    """Who a PostgreSQL process works for, from its title: `db <name>` for a backend, else the background process
    (`walwriter`, `autovacuum worker`, `io worker`, ...)."""
    backend = _BACKEND.match(cmdline)
    if backend:
        return f"db {backend['database']}"
    name = cmdline.removeprefix("postgres: ").strip()
    if name.startswith("autovacuum worker"):
        return "autovacuum worker"
    return re.sub(r"\s+\d+$", "", name) or "postmaster"


def pg_cpu_by_role(postmaster: int) -> dict[tuple[str, int], float]:
    """CPU seconds so far of the postmaster and each of its children, by (role, pid)."""
    out: dict[tuple[str, int], float] = {}
    try:
        root = psutil.Process(postmaster)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for proc in procs:
        try:
            title = " ".join(proc.cmdline()) if proc.pid != postmaster else "postmaster"
            times = proc.cpu_times()
        except psutil.Error:
            continue
        out[(role_of(title), proc.pid)] = times.user + times.system
    return out


def cores_by_role(
    before: Mapping[tuple[str, int], float], after: Mapping[tuple[str, int], float], seconds: float
) -> dict[str, float]:
    """Cores each role kept busy between two `pg_cpu_by_role` samples; a process that ended meanwhile is not
    counted, one that started is counted from zero."""
    used: dict[str, float] = {}
    for (role, pid), spent in after.items():
        used[role] = used.get(role, 0.0) + max(spent - before.get((role, pid), 0.0), 0.0)
    return {role: round(cpu / seconds, 3) for role, cpu in sorted(used.items(), key=lambda kv: -kv[1])}


def describe(step: http_pairs.Step, pg_roles: Mapping[str, float]) -> list[str]:
    """A step's lines: its outcome, then each process's cores over the load and how long each waited for a CPU while
    runnable (`Step.waiting`, those from 0.01), then PostgreSQL's cores by role (those from 0.005) over the load and
    the wait for its last entries (the same span unless the step fell behind)."""
    outcome = "kept up" if step.sustained else f"fell behind ({step.why})"
    per_order = 1000 * step.busy_cores / step.rate if step.rate else float("nan")
    lines = [
        f"{step.rate:.0f}/s {outcome}: p50 {step.p(50):.0f} ms, p99 {step.p(99):.0f} ms,"
        f" {step.busy_cores:.2f} cores busy, {per_order:.2f} ms of CPU per order"
    ]
    ranked = sorted(((n, c) for n, c in step.cpu.items() if n != "steal" and c), key=lambda kv: -kv[1])
    lines.append("  cores: " + ", ".join(f"{name} {cores:.2f}" for name, cores in ranked))
    if step.cpu.get("steal"):
        lines[-1] += f" (stolen by the hypervisor: {step.cpu['steal']:.2f})"
    if step.waiting:
        queued = sorted(((n, c) for n, c in step.waiting.items() if c >= 0.01), key=lambda kv: -kv[1])
        lines.append(
            "  waiting for a CPU while runnable, in cores: "
            + (", ".join(f"{name} {cores:.2f}" for name, cores in queued) or "none")
        )
    shown = [f"{role} {cores:.3f}" for role, cores in pg_roles.items() if cores >= 0.005]
    lines.append("  postgres, over the step and its drain: " + (", ".join(shown) or "idle"))
    return lines


# An order's way through the services, as its rows date it: the stage from one time to the next. The consumers'
# times are their inbox rows' `received_at`, the start of the transaction that applied the event: a consumer's own
# work falls in the stage after it.
STAGES = (
    "place to ship",  # the order's write and answer, the client's turn, the shipment's read (orders.placed_at on)
    "ship to billing",  # the shipment's group write, orders' relay, Kafka, billing's fetch (shipments.shipped_at on)
    "billing to ledger",  # billing's invoice, its relay, Kafka, the ledger's fetch (billing's inbox row on)
    "ledger's post",  # the journal entry (the ledger's inbox row on, to the entry's posted_at)
)


def stage_lines(timelines: list[tuple[float, ...]]) -> list[str]:
    """p50/p99 of each stage (`STAGES`) in the first and the last third of the orders, by when they were placed.
    Each timeline is one order's times (epoch s): placed, shipped, billing's inbox, the ledger's inbox, posted."""
    if len(timelines) < 3:
        return ["  stages: too few orders followed through"]
    ordered = sorted(timelines)
    third = len(ordered) // 3
    parts = (ordered[:third], ordered[-third:])
    lines = [f"  stages of {len(ordered)} orders, ms p50/p99, first third -> last third:"]
    for i, name in enumerate(STAGES):
        cells = []
        for part in parts:
            took = [1000 * (times[i + 1] - times[i]) for times in part]
            cells.append(f"{percentile(took, 50):6.1f}/{percentile(took, 99):6.1f}")
        lines.append(f"    {name:<18} {cells[0]} -> {cells[1]}")
    return lines


async def timelines(stack: Stack, tag: str) -> list[tuple[float, ...]]:
    """The times (`stage_lines`) of each order of a pipeline step (customers `p{tag}-...`) that reached the ledger,
    read from the services' databases."""

    like = f"p{tag}-%"
    shipped = await stack.fetch(
        "orders",
        "SELECT o.customer_id, o.placed_at, s.shipped_at, e.event_id"
        " FROM orders o JOIN shipments s ON s.order_id = o.id"
        " JOIN order_events e ON e.order_id = o.id AND e.type = 'OrderShipped' WHERE o.customer_id LIKE $1",
        like,
    )
    billed = {
        r["event_id"]: r["received_at"]
        for r in await stack.fetch(
            "billing",
            "SELECT event_id, received_at FROM inbox WHERE event_id = ANY($1::uuid[])",
            [r["event_id"] for r in shipped],
        )
    }
    posted = {
        r["party"]: r
        for r in await stack.fetch(
            "ledger",
            "SELECT l.party, i.received_at, e.posted_at FROM journal_entries e"
            " JOIN journal_lines l ON l.entry_id = e.id AND l.account = '1100'"
            " JOIN inbox i ON i.event_id = e.source_event_id"
            " WHERE e.source_type = 'InvoiceIssued' AND l.party LIKE $1",
            like,
        )
    }
    out = []
    for r in shipped:
        entry = posted.get(r["customer_id"])
        if entry is None or r["event_id"] not in billed:
            continue
        times = (r["placed_at"], r["shipped_at"], billed[r["event_id"]], entry["received_at"])
        out.append(tuple(t.timestamp() for t in (*times, entry["posted_at"])))
    return out


async def _count_statements(dsn: str) -> None:
    """`pg_stat_statements` readable in this database, its counts from zero."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


async def _statements(dsn: str, *, limit: int, orders: int) -> list[str]:
    """The statements that took the most time since the last reset, with their calls, and their time and the blocks
    they touched (found in shared buffers or read) per order."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT calls, total_exec_time + total_plan_time AS ms, rows, shared_blks_hit + shared_blks_read AS blocks,"
            " query FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " ORDER BY ms DESC LIMIT $1",
            limit,
        )
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()
    return [
        f"  {r['ms']:8.0f} ms {1000 * r['ms'] / max(orders, 1):6.1f} us/order"
        f" {r['blocks'] / max(orders, 1):6.1f} blocks/order {r['calls']:7d} calls {r['rows']:8d} rows"
        f" | {' '.join(r['query'].split())[:160]}"
        for r in rows
    ]


async def backends(stack: Stack, database: str) -> list[int]:
    """The pids of the client backends connected to `database` (the service's pool, the relay's and consumer's)."""
    rows = await stack.fetch(
        database,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'"
        " AND pid <> pg_backend_pid()",
    )
    return [int(r["pid"]) for r in rows]


async def block_counts(stack: Stack) -> dict[str, tuple[int, int]]:
    """Each service database's blocks read so far (from the OS, not in shared buffers) and found in shared buffers."""
    rows = await stack.fetch(
        "orders", "SELECT datname, blks_read, blks_hit FROM pg_stat_database WHERE datname = ANY($1)", list(SERVICES)
    )
    return {r["datname"]: (int(r["blks_read"]), int(r["blks_hit"])) for r in rows}


def block_line(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]], orders: int) -> str:
    """Per order, the blocks each database read from the OS and found in shared buffers over a step: a database
    that outgrew shared buffers reads (and evicts) on most of its index inserts."""
    cells = []
    for name, (read, hit) in after.items():
        read0, hit0 = before.get(name, (0, 0))
        n = max(orders, 1)
        cells.append(f"{name} {(read - read0) / n:.1f} read/{(hit - hit0) / n:.0f} hit")
    return "  blocks per order: " + ", ".join(cells)


async def wal_position(stack: Stack) -> str:
    """Where PostgreSQL's write-ahead log ends now (all databases share it)."""
    rows = await stack.fetch("postgres", "SELECT pg_current_wal_lsn()::text")
    return str(rows[0][0])


async def wal_records(stack: Stack, since: str) -> list[tuple[str, int, int, int]]:
    """The WAL written since `since` (a `wal_position`), by record type: (type, records, bytes, full-page bytes).
    Needs `pg_walinspect` in the postgres database (`probe` creates it once, before its steps)."""
    rows = await stack.fetch(
        "postgres",
        'SELECT "resource_manager/record_type" AS kind, count, record_size, fpi_size'
        " FROM pg_get_wal_stats($1::text::pg_lsn, pg_current_wal_lsn(), true) WHERE count > 0",
        since,
    )
    return [(r["kind"], int(r["count"]), int(r["record_size"]), int(r["fpi_size"])) for r in rows]


def wal_lines(records: list[tuple[str, int, int, int]], orders: int, *, shown: int = 8) -> list[str]:
    """Per order, the WAL a step wrote (every database's: the log is the server's) and its most frequent record
    types. Every row inserted, index entry added, row locked and event applied is a record: what a pipeline order
    writes against what the bare baseline's insert does (one heap and one index record)."""
    n = max(orders, 1)
    count = sum(records_of_kind for _, records_of_kind, _, _ in records)
    full_pages = sum(full_page_bytes for _, _, _, full_page_bytes in records)
    size = sum(record_bytes for _, _, record_bytes, _ in records) + full_pages
    top = sorted(records, key=lambda r: -r[1])[:shown]
    return [
        f"  WAL per order: {count / n:.1f} records, {size / n / 1024:.1f} KiB ({full_pages / n / 1024:.1f} KiB of"
        " full pages)",
        "    " + ", ".join(f"{kind} {records_of_kind / n:.1f}" for kind, records_of_kind, _, _ in top),
    ]


async def analyse(stack: Stack) -> None:
    """`ANALYZE` every service database, as autovacuum does within a minute of the tables filling; the plans the
    services have cached are made again with what it finds."""
    for name in SERVICES:
        await stack.fetch(name, "ANALYZE")


async def probe(
    rates: list[float],
    *,
    seconds: float,
    preload: float,
    statements: str | None,
    nested: bool,
    stages: bool,
    state: Path,
    perf: str | None = None,
    wal: bool = False,
) -> None:
    if perf:
        pgperf.perf_binary()  # before anything starts: say now that it is missing
    stack = Stack(state)
    try:
        await stack.start()
        if statements:
            track = "all" if nested else "top"
            await stack.alter_system(
                {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": track}, restart=True
            )
        await stack.start_fleet()
        client = http_pairs.Http(stack)
        await client.seed()
        if preload > 0:
            async with stack.alone("orders"):
                placed = await http_pairs.throughput(client, ours=True, seconds=preload, clients=http_pairs.CLIENTS[-1])
            print(f"preloaded: {placed.rate * preload:.0f} orders at {placed.rate:.0f}/s", flush=True)
        await http_pairs.warm_up(client, rate=min(rates))
        await analyse(stack)
        if statements:
            await _count_statements(stack.dsn(statements))
        if wal:
            await stack.fetch("postgres", "CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        for rate in rates:
            pg = stack.pg.pid()
            before, started = pg_cpu_by_role(pg) if pg else {}, time.monotonic()
            blocks = await block_counts(stack)
            wal_start = await wal_position(stack) if wal else ""
            data = RUN_DIR / "reports" / f"perf-{perf}-{rate:g}.data"
            pids = await backends(stack, perf) if perf else []
            sampling = pgperf.record(pids, seconds=seconds, out=data) if pids else None
            step = await http_pairs.pipeline_step(client, rate=rate, seconds=seconds)
            roles = cores_by_role(before, pg_cpu_by_role(pg) if pg else {}, time.monotonic() - started)
            print("\n".join(describe(step, roles)), flush=True)
            print(block_line(blocks, await block_counts(stack), step.sent), flush=True)
            if wal:
                print("\n".join(wal_lines(await wal_records(stack, wal_start), step.sent)), flush=True)
            if stages:
                print("\n".join(stage_lines(await timelines(stack, step.tag))), flush=True)
            if statements:
                print("\n".join(await _statements(stack.dsn(statements), limit=25, orders=step.sent)), flush=True)
            if perf and sampling is None:
                print(f"  perf: no backend of {perf} was connected to sample", flush=True)
            if sampling is not None:
                sampling.wait()
                stacks = pgperf.samples(pgperf.script(data))
                data.with_suffix(".txt").write_text("\n".join(pgperf.collapsed(stacks)) + "\n")
                print("\n".join([*pgperf.summary(stacks), f"  stacks: {data.with_suffix('.txt')}"]), flush=True)
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.probe", description=__doc__)
    parser.add_argument("rates", nargs="+", type=float, help="orders/s of each step, in the order given")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    parser.add_argument(
        "--preload", type=float, default=0.0, metavar="S", help="place orders closed-loop for S seconds first"
    )
    parser.add_argument("--statements", metavar="DB", help="print the top statements of this database per step")
    parser.add_argument("--nested", action="store_true", help="with --statements: count statements in functions")
    parser.add_argument("--stages", action="store_true", help="print how long each stage of an order took")
    parser.add_argument("--perf", metavar="DB", help="sample this database's backends with perf during each step")
    parser.add_argument("--wal", action="store_true", help="print the WAL each order wrote, by record type")
    parser.add_argument("--state", type=Path, default=RUN_DIR / "probe")
    args = parser.parse_args(argv)
    uvloop.run(
        probe(
            args.rates,
            seconds=args.seconds,
            preload=args.preload,
            statements=args.statements,
            nested=args.nested,
            stages=args.stages,
            state=args.state,
            perf=args.perf,
            wal=args.wal,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
