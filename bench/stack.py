"""The bench's own stack under `.run/bench`: PostgreSQL, a Kafka broker, the four services and the bare baseline app.

Reuses devstack's process management (the same servers `make chaos` starts, on free ports); `stop` ends every
process this module started, and is safe to call twice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

from backoffice import ops
from backoffice.db import SHARED_MIGRATIONS, Migration, load_migrations, migrate_dsn
from backoffice.topics import ensure_topics
from devstack import kafka, postgres
from devstack.config import ROOT, RUN_DIR, local_dsn
from devstack.fleet import Fleet, ServiceProcess
from devstack.procs import free_ports

SERVICES = ("orders", "support", "billing", "ledger")
PARTITIONS = 6


class Stack:
    """PostgreSQL (real fsync, like production) and one broker; the fleet only when HTTP pairs need it."""

    def __init__(self, state: Path = RUN_DIR / "bench") -> None:
        self.state = state
        self.ports = free_ports("postgres", "kafka", "controller", "baseline", *SERVICES)
        self.pg = postgres.PostgresServer(state, port=self.ports["postgres"], fast_durability=False)
        self.broker = kafka.KafkaBroker(
            state, port=self.ports["kafka"], controller_port=self.ports["controller"], partitions=PARTITIONS
        )
        self.fleet: Fleet | None = None
        self.baseline: ServiceProcess | None = None

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def dsn(self, database: str) -> str:
        return local_dsn(self.state, self.pg.port, database)

    async def start(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        kafka.ensure_jars()
        self.pg.start()
        self.broker.start()
        await postgres.wait_ready(self.dsn("postgres"))
        await kafka.wait_ready(self.bootstrap, broker=self.broker)
        await ensure_topics(self.bootstrap, partitions=PARTITIONS)

    async def database(self, name: str, migrations: list[Migration] | None = None) -> str:
        """A fresh database with the shared tables (outbox, inbox, idempotency keys) or `migrations`."""
        admin = self.dsn("postgres")
        await postgres.drop_database(admin, name)
        await postgres.ensure_database(admin, name)
        dsn = self.dsn(name)
        await migrate_dsn(dsn, migrations or load_migrations(SHARED_MIGRATIONS, namespace="shared"))
        return dsn

    async def set_synchronous_commit(self, on: bool) -> None:
        """Server-wide, for every session (existing ones pick it up on reload)."""
        await self.alter_system({"synchronous_commit": "on" if on else "off"})
        await asyncio.sleep(0.3)

    async def fetch(self, database: str, query: str, *args: object) -> list[asyncpg.Record]:
        """The rows of one query in `database`, on a connection of its own."""
        conn = await asyncpg.connect(self.dsn(database))
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    async def alter_system(self, settings: dict[str, str], *, restart: bool = False) -> None:
        """`ALTER SYSTEM SET` each setting, then reload the configuration, or restart the server for settings that
        only take effect at start (`shared_preload_libraries`)."""
        conn = await asyncpg.connect(self.dsn("postgres"))
        try:
            for name, value in settings.items():
                await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            if not restart:
                await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        if restart:
            self.pg.stop()
            self.pg.start()
            await postgres.wait_ready(self.dsn("postgres"))

    async def start_fleet(self) -> None:
        admin = self.dsn("postgres")
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "PYTHONPATH": str(ROOT)}
        for s in SERVICES:
            await postgres.ensure_database(admin, s)
            env[f"{s.upper()}_DATABASE_URL"] = self.dsn(s)
            env[f"{s.upper()}_JOB_INTERVAL_S"] = "3600"
        await postgres.ensure_database(admin, "baseline")
        env["BASELINE_DATABASE_URL"] = self.dsn("baseline")
        self.fleet = Fleet(env=env, ports={s: self.ports[s] for s in SERVICES}, logs=self.state / "logs")
        # The bare app: the same uvicorn command line as the services (ServiceProcess runs `<name>.app:create_app`).
        self.baseline = ServiceProcess(
            "bench",
            self.ports["baseline"],
            {**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            self.state / "logs" / "baseline.log",
        )
        self.baseline.start()
        await asyncio.to_thread(self.fleet.start, timeout=120)
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(self.baseline.ready):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the baseline app did not start; see {self.baseline.log}")
            await asyncio.sleep(0.3)

    @asynccontextmanager
    async def alone(self, name: str, *, catch_up_s: float = 300.0) -> AsyncIterator[None]:
        """Of the services, only `name` runs inside the block: the others are stopped, then, once it has completed,
        started again and given time to catch up (every outbox sent, every consumer group's lag back to zero).

        For a pair that measures one service's own path: on two cores, the services that consume its events would
        otherwise take their share of the CPU from it (billing and support used 0.15 of a core while `POST /orders`
        ran at 650/s), a cost the bare baseline, whose rows no one consumes, never pays. In a deployment they have
        CPUs of their own."""
        assert self.fleet is not None
        others = [s for key, s in self.fleet.services.items() if key != name]
        for service in others:
            await asyncio.to_thread(service.stop)
        yield
        for service in others:
            service.start()
        await asyncio.to_thread(self.fleet.wait_ready, timeout=120)
        behind = await self.caught_up(timeout=catch_up_s)
        if behind:
            raise RuntimeError(f"the services did not catch up within {catch_up_s:.0f}s: {', '.join(behind)}")

    async def caught_up(self, *, timeout: float) -> list[str]:
        """Waits until every service's outbox is sent and every consumer group's lag is zero; what is still behind
        at `timeout` (empty once caught up)."""
        _, behind = await ops.wait_caught_up(self.bootstrap, {s: self.dsn(s) for s in SERVICES}, timeout=timeout)
        return behind

    def processes(self) -> dict[str, list[int]]:
        """Top pids of every process of the stack, by name (children are counted with them)."""
        out: dict[str, list[int]] = {"bench": [os.getpid()]}
        pg = self.pg.pid()
        if pg:
            out["postgres"] = [pg]
        broker = self.broker.pid()
        if broker:
            out["kafka"] = [broker]
        for name, proc in ((n, s.proc) for n, s in (self.fleet.services.items() if self.fleet else ())):
            if proc is not None and proc.poll() is None:
                out[name] = [proc.pid]
        if self.baseline is not None and self.baseline.proc is not None and self.baseline.proc.poll() is None:
            out["baseline_app"] = [self.baseline.proc.pid]
        return out

    def stop(self) -> None:
        if self.baseline is not None:
            self.baseline.stop()
        if self.fleet is not None:
            self.fleet.stop()
        self.broker.stop()
        self.pg.stop()


def _family(pid: int, *, children: bool) -> list[psutil.Process]:
    """The process `pid` and, with `children`, all its descendants (PostgreSQL's backends); none once it has ended."""
    try:
        proc = psutil.Process(pid)
        return [proc, *(proc.children(recursive=True) if children else ())]
    except psutil.Error:
        return []


def _cpu_seconds(pid: int, *, children: bool) -> float:
    total = 0.0
    for p in _family(pid, children=children):
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


@dataclass
class _SpanMeter:
    """A per-process count of seconds (`_sample`, each process with its children but the bench's own) over a span,
    in cores: seconds per second of the span."""

    pids: dict[str, list[int]]
    started: float = field(default_factory=time.monotonic)
    before: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.before = self._sample()

    def _sample(self) -> dict[str, float]:
        raise NotImplementedError

    def _per_process(self, seconds: Callable[..., float]) -> dict[str, float]:
        """`seconds(pid, children=...)` summed over each name's pids: with their children, but the bench's own."""
        return {name: sum(seconds(pid, children=name != "bench") for pid in pids) for name, pids in self.pids.items()}

    def cores(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.started, 1e-6)
        after = self._sample()
        return {name: round(max(after[name] - self.before.get(name, 0.0), 0.0) / wall, 2) for name in after}


class CpuMeter(_SpanMeter):
    """CPU used per process (with its children: PostgreSQL's backends) over a span, in cores (1.0 = one core), and
    `steal`: the cores the hypervisor took for other guests over that span."""

    def _sample(self) -> dict[str, float]:
        used = self._per_process(_cpu_seconds)
        # What the hypervisor gave to other machines meanwhile (Linux guests): a run that shows it shared the host.
        return {**used, "steal": getattr(psutil.cpu_times(), "steal", 0.0)}


def run_queue_seconds(pid: int, *, children: bool, proc: Path = Path("/proc")) -> float:
    """How long the threads of `pid` (and of its children) have waited, runnable, for a CPU so far: the second field
    of each thread's `/proc/<pid>/task/<tid>/schedstat` (Linux with schedstats; 0 where it cannot be read)."""
    waited = 0
    for each in _family(pid, children=children):
        for task in (proc / str(each.pid) / "task").glob("*/schedstat"):
            try:
                waited += int(task.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the thread ended meanwhile
    return waited / 1e9


class RunQueueMeter(_SpanMeter):
    """Per process (with its children, as `CpuMeter`), the cores' worth of time its threads spent runnable but
    waiting for a CPU over a span. On two shared cores a process that has work all the time yet runs only part of a
    core waits the rest: at 470 orders/s on 2026-12-01, past the pipeline's ceiling, the orders process ran 0.62 of a
    core and waited 0.36, the stage that queued."""

    def _sample(self) -> dict[str, float]:
        return self._per_process(run_queue_seconds)


def start_profile(stack: Stack, name: str, *, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy samples process `name` (a service, `baseline_app` or `bench`) for `seconds`, as collapsed stacks."""
    pids = stack.processes().get(name)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not pids or not Path(spy).exists():
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "-p", str(pids[0]), "-d", str(int(seconds)), "-r", "200", "-f", "raw", "-o", str(out)]
    if os.environ.get("BENCH_PROFILE_NATIVE"):
        cmd.append("--native")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
