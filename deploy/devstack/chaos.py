"""Chaos: a seeded order-to-cash load while processes are killed with SIGKILL and restarted; then the invariants.

Runs on a private PostgreSQL and Kafka broker (under .run/chaos) so that killing them disturbs nothing else.
Every acknowledged request used an Idempotency-Key, and a client retries on any failure with the same key, as a
real client would; after the faults stop it waits for every outbox to drain and every consumer group to catch up.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from backoffice import ops
from backoffice.auth import issue_token
from backoffice.settings import DEV_JWT_SECRET
from backoffice.topics import ensure_topics, events_topic
from devstack import kafka, postgres
from devstack.config import RUN_DIR, tcp_dsn
from devstack.fleet import Fleet
from devstack.procs import free_ports

SERVICES = ("orders", "support", "billing", "ledger")
CURRENCY = "EUR"
TOKEN = issue_token(
    DEV_JWT_SECRET,
    sub="chaos",
    ttl=6 * 3600,
    scopes=" ".join(f"{s}:{a}" for s in SERVICES for a in ("read", "write", "admin")) + " inventory:write",
)
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
RETRYABLE = {409, 425, 429, 500, 502, 503, 504}


@dataclass
class Report:
    seed: int
    orders: int
    kills: dict[str, int] = field(default_factory=dict)
    schedule: list[str] = field(default_factory=list)
    acknowledged_orders: int = 0
    acknowledged_shipments: int = 0
    acknowledged_payments: int = 0
    lost: int = 0
    duplicated: int = 0
    unbalanced_entries: int = 0
    trial_balance_zero: bool = False
    reconciliation_differences: int = -1
    valid_events_dead_lettered: int = -1
    consumers_stuck: list[str] = field(default_factory=list)
    max_catch_up_s: float = 0.0
    load_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.lost == 0
            and self.duplicated == 0
            and self.unbalanced_entries == 0
            and self.trial_balance_zero
            and self.reconciliation_differences == 0
            and self.valid_events_dead_lettered == 0
            and not self.consumers_stuck
        )


class Stack:
    """A private PostgreSQL, Kafka broker and the four services, each of which can be killed and restarted."""

    def __init__(self, state: Path, ports: dict[str, int]) -> None:
        self.state = state
        self.pg = postgres.PostgresServer(state, port=ports["postgres"], fast_durability=False)
        self.broker = kafka.KafkaBroker(state, port=ports["kafka"], controller_port=ports["controller"], partitions=6)
        self.dsn = {s: tcp_dsn(self.pg.port, s) for s in SERVICES}
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap}
        for s in SERVICES:
            env[f"{s.upper()}_DATABASE_URL"] = self.dsn[s]
            env[f"{s.upper()}_JOB_INTERVAL_S"] = "3600"
            env[f"{s.upper()}_OUTBOX_POLL_INTERVAL_S"] = "0.5"
        self.fleet = Fleet(env=env, ports={s: ports[s] for s in SERVICES}, logs=state / "logs")

    async def start(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        self.pg.start()
        self.broker.start()
        admin = tcp_dsn(self.pg.port, "postgres")
        await postgres.wait_ready(admin)
        for s in SERVICES:
            await postgres.ensure_database(admin, s)
        await kafka.wait_ready(self.broker.bootstrap, broker=self.broker)
        await ensure_topics(self.broker.bootstrap, partitions=6)
        await asyncio.to_thread(self.fleet.start, timeout=120)

    def kill(self, target: str) -> None:
        if target == "postgres":
            self.pg.kill()
        elif target == "kafka":
            self.broker.kill()
        else:
            self.fleet.services[target].kill()

    def restart(self, target: str) -> None:
        if target == "postgres":
            self.pg.start()
        elif target == "kafka":
            self.broker.start()
        else:
            self.fleet.services[target].start()

    def stop(self) -> None:
        self.fleet.stop()
        self.broker.stop()
        self.pg.stop()


async def call(
    client: httpx.AsyncClient, method: str, url: str, *, key: str | None = None, json_body: Any = None, deadline: float
) -> httpx.Response:
    """Send until a definitive answer, retrying failures with the same Idempotency-Key."""
    headers = {**HEADERS, **({"Idempotency-Key": key} if key else {})}
    delay = 0.2
    while True:
        try:
            response = await client.request(method, url, json=json_body, headers=headers)
            if response.status_code not in RETRYABLE:
                return response
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{method} {url} got no definitive answer in time")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 2.0)


class Load:
    def __init__(self, stack: Stack, *, orders: int, seed: int, concurrency: int = 6) -> None:
        self.stack = stack
        self.count = orders
        self.rng = random.Random(seed)
        self.concurrency = concurrency
        self.skus = [f"SKU-{i}" for i in range(6)]
        self.customers = [f"chaos-cust-{i}" for i in range(max(3, orders // 25))]
        self.orders: list[str] = []
        self.shipments: list[str] = []
        self.payments: list[str] = []
        self.problems: list[str] = []

    def url(self, service: str) -> str:
        return self.stack.fleet.url(service)

    async def seed_catalogue(self, client: httpx.AsyncClient, deadline: float) -> None:
        for i, sku in enumerate(self.skus):
            r = await call(
                client,
                "POST",
                f"{self.url('orders')}/products",
                key=f"product-{sku}",
                deadline=deadline,
                json_body={
                    "sku": sku,
                    "name": f"Item {i}",
                    "unit_price_minor": 500 + 250 * i,
                    "currency": CURRENCY,
                    "on_hand": self.count * 10,
                },
            )
            if r.status_code not in (200, 201):
                self.problems.append(f"product {sku}: {r.status_code} {r.text[:200]}")

    async def one_order(self, client: httpx.AsyncClient, n: int, deadline: float) -> None:
        lines = [{"sku": sku, "quantity": self.rng.randint(1, 3)} for sku in self.rng.sample(self.skus, 2)]
        body = {
            "customer_id": self.rng.choice(self.customers),
            "currency": CURRENCY,
            "shipping_address": "1 Chaos Road",
            "lines": lines,
        }
        r = await call(
            client, "POST", f"{self.url('orders')}/orders", key=f"order-{n}", json_body=body, deadline=deadline
        )
        if r.status_code != 201:
            self.problems.append(f"order {n}: {r.status_code} {r.text[:200]}")
            return
        order_id = r.json()["id"]
        self.orders.append(order_id)
        parts = [lines] if n % 2 else [[lines[0]], [lines[1]]]
        for i, part in enumerate(parts):
            s = await call(
                client,
                "POST",
                f"{self.url('orders')}/orders/{order_id}/shipments",
                key=f"ship-{n}-{i}",
                json_body={"lines": part, "carrier": "chaos"},
                deadline=deadline,
            )
            if s.status_code != 201:
                self.problems.append(f"shipment {n}/{i}: {s.status_code} {s.text[:200]}")
                continue
            self.shipments.append(s.json()["shipments"][-1]["id"])

    async def pay_open_invoices(self, client: httpx.AsyncClient, deadline: float) -> None:
        for customer in self.customers:
            r = await call(
                client, "GET", f"{self.url('billing')}/invoices?customer_id={customer}&limit=200", deadline=deadline
            )
            if r.status_code != 200:
                self.problems.append(f"invoices of {customer}: {r.status_code}")
                continue
            for invoice in r.json()["items"]:
                if invoice["balance_minor"] <= 0:
                    continue
                body = {
                    "customer_id": customer,
                    "currency": CURRENCY,
                    "amount_minor": invoice["balance_minor"],
                    "method": "card",
                    "reference": f"chaos-{invoice['number']}",
                    "allocations": [{"invoice_id": invoice["id"], "amount_minor": invoice["balance_minor"]}],
                }
                p = await call(
                    client,
                    "POST",
                    f"{self.url('billing')}/payments",
                    key=f"pay-{invoice['id']}",
                    json_body=body,
                    deadline=deadline,
                )
                if p.status_code == 201:
                    self.payments.append(p.json()["id"])
                elif p.status_code != 422:  # paid meanwhile by an earlier round: its balance changed
                    self.problems.append(f"payment for {invoice['number']}: {p.status_code} {p.text[:200]}")

    async def run(self, deadline: float) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            await self.seed_catalogue(client, deadline)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for n in range(self.count):
                queue.put_nowait(n)

            async def worker() -> None:
                while not queue.empty():
                    await self.one_order(client, queue.get_nowait(), deadline)

            workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            while not all(w.done() for w in workers):
                await asyncio.sleep(2)
                await self.pay_open_invoices(client, deadline)
            await asyncio.gather(*workers)
            await self.pay_open_invoices(client, deadline)


async def inject_faults(
    stack: Stack,
    report: Report,
    *,
    rng: random.Random,
    targets: list[str],
    every: tuple[float, float],
    pause: tuple[float, float],
    load_done: asyncio.Event,
    min_kills: int,
) -> None:
    """Kill a component every few seconds, in shuffled rounds so each gets its share, until the load is done and
    every component was killed at least `min_kills` times."""
    started = time.monotonic()
    round_: list[str] = []
    while not (load_done.is_set() and min(report.kills.get(t, 0) for t in targets) >= min_kills):
        await asyncio.sleep(rng.uniform(*every))
        if not round_:
            round_ = rng.sample(targets, len(targets))
        target = round_.pop()
        down = rng.uniform(*pause)
        report.schedule.append(f"t={time.monotonic() - started:.1f}s kill -9 {target}, restart after {down:.1f}s")
        await asyncio.to_thread(stack.kill, target)
        report.kills[target] = report.kills.get(target, 0) + 1
        await asyncio.sleep(down)
        await restart(stack, target, report)


async def restart(stack: Stack, target: str, report: Report, *, attempts: int = 20) -> None:
    """Bring a killed component back, as a supervisor would: retry until it starts."""
    for attempt in range(attempts):
        try:
            await asyncio.to_thread(stack.restart, target)
            return
        except Exception as exc:
            if attempt == attempts - 1:
                report.problems.append(f"{target} would not restart: {exc}")
                raise
            await asyncio.sleep(1)


async def check(stack: Stack, load: Load, report: Report) -> None:
    billing = await asyncpg.connect(stack.dsn["billing"])
    ledger = await asyncpg.connect(stack.dsn["ledger"])
    orders = await asyncpg.connect(stack.dsn["orders"])
    try:
        known_orders = {str(r["id"]) for r in await orders.fetch("SELECT id FROM orders")}
        lost_orders = set(load.orders) - known_orders
        invoiced = {
            r["shipment_id"]: r["n"]
            for r in await billing.fetch("SELECT shipment_id, count(*) AS n FROM invoices GROUP BY shipment_id")
        }
        uninvoiced = [s for s in load.shipments if s not in invoiced]
        twice_invoiced = [s for s, n in invoiced.items() if n > 1]
        # What billing published (its relay deletes each outbox row once Kafka has it, and the outboxes were drained
        # before this check): every invoice and payment event must have been posted once.
        wanted = {
            r.info["ce_id"]: r.key
            for r in await ops.read_topic(stack.broker.bootstrap, events_topic("billing"))
            if r.info["ce_type"].split(".")[2] in ("InvoiceIssued", "PaymentReceived")  # backoffice.billing.<name>.v1
        }
        posted = {
            str(r["source_event_id"]): r["n"]
            for r in await ledger.fetch(
                "SELECT source_event_id, count(*) AS n FROM journal_entries WHERE source_event_id IS NOT NULL"
                " GROUP BY source_event_id"
            )
        }
        unposted = [e for e in wanted if e not in posted]
        twice_posted = [e for e, n in posted.items() if n > 1]
        unbalanced = await ledger.fetchval(
            "SELECT count(*) FROM (SELECT entry_id FROM journal_lines GROUP BY entry_id"
            " HAVING sum(debit_minor) <> sum(credit_minor)) AS t"
        )
        report.lost = len(lost_orders) + len(uninvoiced) + len(unposted)
        report.duplicated = len(twice_invoiced) + len(twice_posted)
        report.unbalanced_entries = int(unbalanced)
        for label, items in (
            ("orders lost", lost_orders),
            ("shipments without invoice", uninvoiced),
            ("billing events without journal entry", unposted),
        ):
            if items:
                report.problems.append(f"{label}: {sorted(items)[:5]}")
    finally:
        for conn in (billing, ledger, orders):
            await conn.close()
    async with httpx.AsyncClient(timeout=30) as client:
        trial = (
            await client.get(f"{stack.fleet.url('ledger')}/reports/trial-balance?currency={CURRENCY}", headers=HEADERS)
        ).json()
        report.trial_balance_zero = trial["totals"]["debit_minor"] == trial["totals"]["credit_minor"]
        recon = (await client.get(f"{stack.fleet.url('ledger')}/reports/reconciliation", headers=HEADERS)).json()
        report.reconciliation_differences = len(recon.get("differences", [1]))
    dead = 0
    for s in SERVICES:
        dead += len(await ops.read_dead_letters(stack.broker.bootstrap, s))
    report.valid_events_dead_lettered = dead


async def run(
    *,
    orders: int,
    seed: int,
    kill_postgres: bool,
    every: tuple[float, float] = (3.0, 6.0),
    pause: tuple[float, float] = (1.0, 3.0),
    min_kills: int = 0,
    out: Path | None = None,
    deadline_s: float = 1800,
) -> Report:
    """Run the whole chaos test and return its report (also written to .run/reports/chaos.json)."""
    rng = random.Random(seed)
    report = Report(seed=seed, orders=orders)
    stack = Stack(RUN_DIR / "chaos", free_ports("postgres", "kafka", "controller", *SERVICES))
    targets = [*SERVICES, "kafka"] + (["postgres"] if kill_postgres else [])
    try:
        await stack.start()
        load = Load(stack, orders=orders, seed=seed)
        load_done = asyncio.Event()
        started = time.monotonic()
        faults = asyncio.create_task(
            inject_faults(
                stack,
                report,
                rng=rng,
                targets=targets,
                every=every,
                pause=pause,
                load_done=load_done,
                min_kills=min_kills,
            )
        )
        await load.run(deadline=time.monotonic() + deadline_s)
        load_done.set()
        await faults
        report.load_s = time.monotonic() - started
        for target in targets:
            await restart(stack, target, report)
        await asyncio.to_thread(stack.fleet.wait_ready, timeout=120)
        report.acknowledged_orders = len(load.orders)
        report.acknowledged_shipments = len(load.shipments)
        async with httpx.AsyncClient(timeout=10) as client:
            await load.pay_open_invoices(client, time.monotonic() + 300)
        report.acknowledged_payments = len(load.payments)
        caught_up = await ops.wait_caught_up(stack.broker.bootstrap, stack.dsn, timeout=300)
        report.max_catch_up_s, report.consumers_stuck = caught_up
        report.problems += load.problems
        await check(stack, load, report)
    finally:
        stack.stop()
    path = out or RUN_DIR / "reports" / "chaos.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(report), "ok": report.ok, "id": str(uuid.uuid4())}, indent=2))
    return report
