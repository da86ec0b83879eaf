"""`http_place_order`, `pipeline_max_rate` and `order_to_ledger_p99`: the services as processes, driven over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import orjson

from backoffice.auth import issue_token
from backoffice.settings import DEV_JWT_SECRET
from bench.loadgen import Client, Run, closed_loop, open_loop, percentile
from bench.report import CORES_SHOWN
from bench.stack import CpuMeter, RunQueueMeter, Stack

SKUS = [f"BENCH-{n:03d}" for n in range(200)]
TOKEN = issue_token(
    DEV_JWT_SECRET,
    sub="bench",
    ttl=6 * 3600,
    scopes="orders:read orders:write inventory:write billing:read ledger:read",
)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The keep-alive clients of the throughput runs: each side is measured at each count, and its throughput is that of
# the count where its median peaked (`peak`). One fixed count measures a server at its capacity only if that count
# keeps it busy: the bare app peaks at 16 (its event loop full, 0.95-0.98 of a core) and serves less with more
# clients, while ours, whose group commit writes the orders arriving while the previous group is written, has groups
# of half the clients at 16 (8 orders, with synchronous_commit off) and serves more with more. In the full bench of
# 2026-11-30 (sync on) ours served 3354, 3408 and 3776/s at 16, 32 and 64, the baseline 4832, 4635 and 4313/s. More
# clients do not help ours: at 64 its groups are already at their cap (23.7 of 24 orders on average), and in a probe
# with synchronous_commit off 128 clients served 3722/s where 64 served 3661/s.
CLIENTS = (16, 32, 64)


def _draw_lines(n: int) -> list[dict[str, object]]:
    """One or two of the products, 1-3 of each, the same for the same `n`."""
    rng = random.Random(n)
    skus = rng.sample(SKUS, rng.choice((1, 2)))
    return [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus]


# The lines of the orders, made once: seeding a generator for each order cost the load generator, which shares the
# two cores with the stack, some 10 us an order. The pattern repeats every LINE_SETS orders.
LINE_SETS = 1009
_LINES = [_draw_lines(n) for n in range(LINE_SETS)]


def order_lines(n: int) -> list[dict[str, object]]:
    """The lines of order `n` (placed, then shipped in full)."""
    return _LINES[n % LINE_SETS]


def order_body(n: int, *, customer: str) -> dict[str, object]:
    return {
        "customer_id": customer,
        "currency": "EUR",
        "shipping_address": "1 Bench Road",
        "lines": order_lines(n),
    }


@dataclass
class Http:
    stack: Stack
    orders: Client = field(init=False)
    baseline: Client = field(init=False)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    # Every request its own Idempotency-Key, across runs too: each run numbers its requests from 0, and a key sent
    # again is answered from the stored response, a replay that writes nothing.
    _keys: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        assert self.stack.fleet is not None and self.stack.baseline is not None
        self.orders = Client(self.stack.fleet.services["orders"].port)
        self.baseline = Client(self.stack.baseline.port)

    async def seed(self) -> None:
        for n, sku in enumerate(SKUS):
            body = {"sku": sku, "name": f"Item {n}", "unit_price_minor": 500 + n, "currency": "EUR", "on_hand": 10**9}
            status, text = await self.orders.request(
                "POST", "/products", body=body, headers={**AUTH, "Idempotency-Key": f"seed-{sku}"}
            )
            if status not in (200, 201):
                raise RuntimeError(f"seeding {sku}: {status} {text[:200]!r}")

    async def place(self, client: Client, n: int, customer: str) -> tuple[int, bytes]:
        headers = {**AUTH, "Idempotency-Key": f"{self.tag}-{next(self._keys)}"}
        return await client.request("POST", "/orders", body=order_body(n, customer=customer), headers=headers)

    async def placed(self) -> int:
        """How many orders the throughput runs have placed so far (their customer is `h{tag}`)."""
        rows = await self.stack.fetch("orders", "SELECT count(*) FROM orders WHERE customer_id = $1", f"h{self.tag}")
        return int(rows[0][0])

    async def place_ours(self, n: int) -> bool:
        status, _ = await self.place(self.orders, n, f"h{self.tag}")
        return status == 201

    async def place_baseline(self, n: int) -> bool:
        status, _ = await self.place(self.baseline, n, f"h{self.tag}")
        return status == 201


# --- http_place_order -----------------------------------------------------------------------------------------


@dataclass
class Throughput:
    rate: float
    cpu: dict[str, float]
    errors: int
    first_error: str


async def throughput(http: Http, *, ours: bool, seconds: float, clients: int = CLIENTS[0]) -> Throughput:
    op = http.place_ours if ours else http.place_baseline
    before = await http.placed() if ours else 0
    meter = CpuMeter(http.stack.processes())
    run = await closed_loop(op, workers=clients, seconds=seconds)
    cpu = meter.cores()
    if ours and (placed := await http.placed() - before) != run.done:
        raise RuntimeError(f"{run.done} orders answered 201 but {placed} were placed: a 201 must be a new order")
    return Throughput(run.rate, cpu, run.errors, run.first_error)


def peak(rates: dict[int, list[float]]) -> int:
    """The client count whose runs have the highest median throughput (the lowest count of equal ones)."""
    return max(sorted(rates), key=lambda clients: statistics.median(rates[clients]))


async def latency(http: Http, *, ours: bool, rate: float, seconds: float) -> Run:
    return await open_loop(http.place_ours if ours else http.place_baseline, rate=rate, seconds=seconds)


# --- the pipeline: POST /orders, POST shipments, ... the journal entry of its invoice ----------------------------


@dataclass
class Step:
    rate: float
    sent: int
    errors: int
    posted: int
    latencies_ms: list[float]
    sustained: bool
    cpu: dict[str, float]
    why: str = ""
    growth_ms: float = math.nan  # the latency's rise over the step (`latency_growth_ms`), when all were posted
    tag: str = ""  # its orders' customers are `p{tag}-{n}`
    waiting: dict[str, float] = field(default_factory=dict)  # cores' worth of waiting for a CPU (`RunQueueMeter`)

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    @property
    def busy_cores(self) -> float:
        """The cores the stack's processes (the load generator included) kept busy over the step; what the
        hypervisor stole is not ours."""
        return sum(cores for name, cores in self.cpu.items() if name != "steal")

    @property
    def stolen(self) -> str:
        """What the hypervisor took for other guests over the step, for the report: `0.41 stolen`, or empty below
        `CORES_SHOWN`. A step that fell behind on a host stealing cores says less about our code than one that did
        not, and the reader of a search should see which steps those were."""
        steal = self.cpu.get("steal", 0.0)
        return f"{steal:.2f} stolen" if steal >= CORES_SHOWN else ""

    def describe(self) -> str:
        """One step for the report: its rate, whether it kept up (and why not), its p99, how busy the machine was
        (at half the highest rate kept up, the stack already keeps the machine nearly full: what makes the tail) and
        what the hypervisor stole meanwhile."""
        outcome = f"kept up (trend {self.growth_ms:+.0f} ms)" if self.sustained else "fell behind: " + self.why
        described = f"{self.rate:.1f}/s {outcome} p99 {self.p(99):.0f} ms, {self.busy_cores:.2f} cores busy"
        return f"{described}, {stolen}" if (stolen := self.stolen) else described


async def pipeline_step(http: Http, *, rate: float, seconds: float, drain_s: float = 15.0) -> Step:
    """Orders shipped in full at `rate` for `seconds`; each one's latency runs to its invoice's journal entry."""
    run_tag = uuid.uuid4().hex[:8]
    started: dict[str, float] = {}

    async def order_and_ship(n: int) -> bool:
        customer = f"p{run_tag}-{n}"
        started[customer] = time.time()
        status, body = await http.place(http.orders, n, customer)
        if status != 201:
            return False
        order_id = orjson.loads(body)["id"]
        status, _ = await http.orders.request(
            "POST",
            f"/orders/{order_id}/shipments",
            body={"lines": order_lines(n), "carrier": "bench"},
            headers={**AUTH, "Idempotency-Key": f"ship-{customer}"},
        )
        return status == 201

    processes = http.stack.processes()
    meter, queue = CpuMeter(processes), RunQueueMeter(processes)
    run = await open_loop(order_and_ship, rate=rate, seconds=seconds)
    cpu, waiting = meter.cores(), queue.cores()
    posted = await _posted(http.stack, run_tag, expected=run.done, timeout=drain_s)
    if len(posted) < run.done:  # fell behind: let the backlog drain before anything else is measured
        await _posted(http.stack, run_tag, expected=run.done, timeout=180)
    latencies = sorted(
        ((started[c], (t - started[c]) * 1000) for c, t in posted.items() if c in started), key=lambda x: x[0]
    )
    values = [ms for _, ms in latencies]
    why, grew = "", math.nan
    if run.errors:
        why = f"{run.errors} failed requests ({run.first_error})"
    elif len(posted) < run.done:
        why = f"only {len(posted)} of {run.done} entries posted {drain_s:.0f}s after the load"
    else:
        grew = latency_growth_ms(latencies)
        if grew > GROWTH_LIMIT_MS:
            why = f"latency grew {grew:.0f} ms over the step (trend), more than {GROWTH_LIMIT_MS:.0f} ms"
    sent = run.done + run.errors
    return Step(rate, sent, run.errors, len(posted), values, not why, cpu, why, grew, run_tag, waiting)


async def order_to_ledger(
    http: Http,
    *,
    rate: float,
    seconds: float,
    repeats: int,
    warm_up_s: float,
    step: Callable[..., Awaitable[Step]] = pipeline_step,
) -> list[Step]:
    """`repeats` steps at `rate` whose orders are pooled for `order_to_ledger_p99`, after a warm-up step at the same
    rate that is not counted. It follows the max-rate search, whose last steps may have fallen behind and left the
    databases vacuuming what their backlog wrote: the first counted step after it had a p99 of 816 ms where the next
    two had 348 and 296. The p99 asked for is that of the pipeline running steadily at half its ceiling."""
    await step(http, rate=rate, seconds=warm_up_s)
    return [await step(http, rate=rate, seconds=seconds) for _ in range(repeats)]


def pooled_note(steps: list[Step], *, rate: float, seconds: float) -> str:
    """The note of `order_to_ledger_p99`: its rate, each step's p99 (with what the hypervisor stole in it), the
    entries posted, the errors, and the cores the stack kept busy, on average over the steps."""
    each = ", ".join(f"{st.p(99):.0f} ms" + (f" ({stolen})" if (stolen := st.stolen) else "") for st in steps)
    return (
        f"open-loop at {rate:.1f} orders/s, {len(steps)} steps of {seconds:.0f} s pooled (each step's p99: {each});"
        f" {sum(st.posted for st in steps)}/{sum(st.sent for st in steps)} entries posted,"
        f" {sum(st.errors for st in steps)} errors; {statistics.fmean(st.busy_cores for st in steps):.2f} of"
        f" {os.cpu_count()} cores busy"
    )


# A step keeps up while its latency's trend rises by less than this over the step. Over an 8 s step that is an
# arrival rate about 3 % above what the pipeline serves; steps that kept up have measured -170 to +180 ms.
GROWTH_LIMIT_MS = 250.0


def latency_growth_ms(latencies: list[tuple[float, float]]) -> float:
    """How much the latency rose from the first order of a step to its last: the least-squares line through
    (start, ms), over the step's span.

    A pipeline that cannot keep up queues a little more with every order, so its latency climbs all through the
    step; one that keeps up has a flat trend, whatever its spikes. A step keeps up while its trend rises by less
    than GROWTH_LIMIT_MS. The line weighs every order alike; the test it replaced, the slowest order of the last
    fifth, was one sample, and the likelier to be extreme the more orders a step has, that is the higher its rate.
    """
    if len(latencies) < 3:
        return 0.0
    starts = [start for start, _ in latencies]
    if max(starts) == min(starts):
        return 0.0
    slope, _ = statistics.linear_regression(starts, [ms for _, ms in latencies])
    return slope * (max(starts) - min(starts))


async def _posted(stack: Stack, run_tag: str, *, expected: int, timeout: float) -> dict[str, float]:
    """customer -> posted_at (epoch s) of the invoices' journal entries of this run, once all are in or at timeout."""
    conn = await asyncpg.connect(stack.dsn("ledger"))
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch(
                "SELECT l.party, e.posted_at FROM journal_entries e JOIN journal_lines l ON l.entry_id = e.id"
                " WHERE e.source_type = 'InvoiceIssued' AND l.account = '1100' AND l.party LIKE $1",
                f"p{run_tag}-%",
            )
            if len(rows) >= expected or time.monotonic() > deadline:
                return {r["party"]: r["posted_at"].timestamp() for r in rows}
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def warm_up(http: Http, *, rate: float) -> None:
    """Steps not counted before the measured ones: a trickle, until every consumer has joined its group, then 3 s
    at `rate`. The services other than orders have just been (re)started (`Stack.alone`), with pools at their
    minimum and new PostgreSQL backends whose caches are empty: without the second step the max-rate search's first
    step had a p99 of 802 ms, its latency falling all through it (trend -252 ms), and that step's p50/p99 are the
    ones the report gives."""
    await pipeline_step(http, rate=2.0, seconds=3.0)
    await pipeline_step(http, rate=rate, seconds=3.0)


async def max_rate(http: Http, *, start: float, ceiling: float, seconds: float) -> tuple[float, list[Step]]:
    """The highest rate the pipeline keeps up with (`highest_kept_up`, each probe a `pipeline_step`), and every step
    tried."""
    await warm_up(http, rate=start)
    steps: list[Step] = []

    async def probe(rate: float) -> bool:
        steps.append(await pipeline_step(http, rate=rate, seconds=seconds))
        return steps[-1].sustained

    return await highest_kept_up(probe, start=start, ceiling=ceiling), steps


# The search of `pipeline_max_rate` ends once the highest rate that kept up and the lowest that did not are within
# 6 % of each other. With 15 % (until 2026-11-29) the figure could only fall on a coarse grid: in the last full bench
# 178.4/s kept up and 203.4/s did not, so 178.4 was reported while the ceiling could be anywhere up to 14 % above
# it. Each further probe is one more 8 s step (two per mode, about 50 s).
SEARCH_RESOLUTION = 1.06


async def highest_kept_up(
    probe: Callable[[float], Awaitable[bool]],
    *,
    start: float,
    ceiling: float,
    max_steps: int = 10,
    resolution: float = SEARCH_RESOLUTION,
) -> float:
    """From `start`, up 30 % a step while `probe(rate)` keeps up (down by 1.6x while it does not); once one rate
    kept up and a higher one did not, halve the gap between them (geometrically) until they are within
    `resolution` of each other. The highest rate that kept up, 0 if none did."""
    kept, fell = 0.0, math.inf
    rate = max(start, 1.0)
    for _ in range(max_steps):
        if not 1.0 <= rate <= ceiling:
            break
        if await probe(rate):
            kept = rate
        else:
            fell = rate
        if fell <= kept * resolution:
            break
        if fell == math.inf:
            rate = kept * 1.3
        elif not kept:
            rate = fell / 1.6
        else:
            rate = math.sqrt(kept * fell)
    return kept
