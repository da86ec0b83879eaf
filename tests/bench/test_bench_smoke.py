"""The bench harness works: one tiny pair against the test PostgreSQL and Kafka. No timing is asserted here, ever:
speed is judged by the ratios `make bench` prints."""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import pytest

from backoffice.db import SHARED_MIGRATIONS, Migration, load_migrations, migrate_dsn
from backoffice.topics import ensure_topics, events_topic
from bench import http_pairs, loadgen, pgperf, probe, report
from bench.__main__ import Sizes, alternate, interpreter
from bench.ledger_post import LedgerBench
from bench.loadgen import percentile
from bench.messaging import ConsumerBench, RelayBench, Tail, Timed, started_producer
from bench.stack import CpuMeter, RunQueueMeter, Stack, run_queue_seconds
from tests.conftest import ADMIN_DSN, BOOTSTRAP


class _TestStack(Stack):
    """The bench's stack, pointed at the test PostgreSQL and broker instead of starting its own."""

    def __init__(self, make_database: Callable[[str], Awaitable[str]]) -> None:
        self.make_database = make_database

    @property
    def bootstrap(self) -> str:
        return BOOTSTRAP

    def dsn(self, database: str) -> str:
        return ADMIN_DSN.rsplit("/", 1)[0] + "/" + database

    async def database(self, name: str, migrations: list[Migration] | None = None) -> str:
        dsn = await self.make_database(name)
        await migrate_dsn(dsn, migrations or load_migrations(SHARED_MIGRATIONS, namespace="shared"))
        return dsn

    def processes(self) -> dict[str, list[int]]:
        return {"bench": [os.getpid()]}


class TestHarness:
    async def test_the_ledger_pair_runs_both_sides_and_reports_a_ratio(
        self, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        bench = await LedgerBench.create(_TestStack(make_database))  # type: ignore[arg-type]
        ours = await bench.ours(24)
        hot = await bench.ours(12, hot=True)
        baseline = await bench.baseline(24)
        assert ours.rate > 0 and hot.rate > 0 and baseline.rate > 0
        pair = report.Pair("ledger_post", "entries/s", ">= 0.6")
        pair.modes["sync_on"] = report.figures(pair.target, [ours.rate], [baseline.rate])
        row = pair.row()
        assert {"name", "ours", "baseline", "unit", "ratio", "target", "met"} <= set(row)
        assert row["ratio"] == pytest.approx(ours.rate / baseline.rate, rel=0.01)
        assert "ledger_post" in report.table([pair])


class TestReport:
    def test_a_value_target_is_judged_on_ours_and_a_ratio_target_on_the_ratio(self) -> None:
        assert report.judge("<= 250", ours=200.0, ratio=None)
        assert not report.judge("<= 250", ours=300.0, ratio=None)
        assert report.judge(">= 0.5", ours=1.0, ratio=0.6)
        assert not report.judge(">= 0.5", ours=1.0, ratio=math.nan)

    def test_paired_repeats_give_the_median_of_their_ratios_and_keep_the_ratio_of_medians(self) -> None:
        # the host speeds up over the pair: each repeat's sides agree, the medians of the sides do not
        ours = [2700.0, 2300.0, 2460.0, 3290.0, 4200.0]
        baseline = [2600.0, 3100.0, 5280.0, 4880.0, 5190.0]
        f = report.figures(">= 0.7", ours, baseline, paired=True)
        assert f.paired_ratios == [round(o / b, 3) for o, b in zip(ours, baseline, strict=True)]
        assert f.ratio == pytest.approx(statistics.median(o / b for o, b in zip(ours, baseline, strict=True)), abs=1e-3)
        assert f.ratio_of_medians == pytest.approx(2700.0 / 4880.0, abs=1e-3)
        assert f.met and not report.judge(">= 0.7", ours=f.ours, ratio=f.ratio_of_medians)
        assert (f.ours, f.baseline) == (2700.0, 4880.0)  # the sides are still given by their medians
        pair = report.Pair("consumer_apply", "events/s", ">= 0.7", {"sync_on": f})
        assert "median of each turn's ratio" in report.table([pair])
        assert pair.row()["paired_ratios"] == f.paired_ratios and pair.row()["ratio_of_medians"] == f.ratio_of_medians

    def test_unpaired_repeats_give_the_ratio_of_medians(self) -> None:
        f = report.figures(">= 0.7", [2700.0, 2300.0, 4200.0], [2600.0, 3100.0, 5280.0])
        assert f.ratio == pytest.approx(2700.0 / 3100.0, abs=1e-3)
        assert f.paired_ratios == [] and f.ratio_of_medians is None

    def test_paired_repeats_must_match_one_for_one(self) -> None:
        with pytest.raises(ValueError, match="paired"):
            report.figures(">= 0.7", [1.0, 2.0], [1.0], paired=True)

    async def test_the_sides_of_a_pair_take_turns_after_a_warm_up_of_each(self) -> None:
        calls: list[tuple[str, int]] = []

        def side(name: str) -> Callable[[int], Awaitable[Timed]]:
            async def run(count: int) -> Timed:
                calls.append((name, count))
                return Timed(float(len(calls)), {})

            return run

        sizes = Sizes(3, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0)
        ours, baseline, hot = await alternate(sizes, 1000, side("ours"), side("baseline"), side("hot"))
        assert calls == [("ours", 100), ("baseline", 100), ("hot", 100)] + [
            (name, 1000) for _ in range(3) for name in ("ours", "baseline", "hot")
        ]
        assert [[t.rate for t in side] for side in (ours, baseline, hot)] == [
            [4.0, 7.0, 10.0],
            [5.0, 8.0, 11.0],
            [6.0, 9.0, 12.0],
        ]

    def test_percentiles_are_nearest_rank(self) -> None:
        values = [float(v) for v in range(1, 101)]
        assert percentile(values, 50) == 50.0
        assert percentile(values, 99) == 99.0


class TestMaxRateSearch:
    """`highest_kept_up`, the search of `pipeline_max_rate`, against a pipeline that keeps up below a known rate."""

    @pytest.mark.parametrize(("limit", "start"), [(97.0, 110.0), (97.0, 20.0), (300.0, 50.0), (12.0, 100.0)])
    async def test_it_ends_within_the_resolution_below_the_limit(self, limit: float, start: float) -> None:
        tried: list[float] = []

        async def probe(rate: float) -> bool:
            tried.append(rate)
            return rate <= limit

        found = await http_pairs.highest_kept_up(probe, start=start, ceiling=10_000, max_steps=12)
        assert limit / http_pairs.SEARCH_RESOLUTION <= found <= limit, tried
        assert len(tried) <= 12

    @pytest.mark.parametrize("limit", [190.0, 120.0, 300.0])
    async def test_the_bench_s_search_reaches_its_resolution_within_its_steps(self, limit: float) -> None:
        """As `make bench` calls it: from 15 % of ours' HTTP rate (here 625/s), with the default steps."""
        tried: list[float] = []

        async def probe(rate: float) -> bool:
            tried.append(rate)
            return rate <= limit

        found = await http_pairs.highest_kept_up(probe, start=0.15 * 625, ceiling=625)
        assert limit / 1.06 <= found <= limit, tried  # within 6 % of the limit

    async def test_none_kept_up_gives_zero_and_the_ceiling_stops_the_climb(self) -> None:
        async def never(rate: float) -> bool:
            return False

        async def always(rate: float) -> bool:
            return True

        assert await http_pairs.highest_kept_up(never, start=10, ceiling=100) == 0.0
        found = await http_pairs.highest_kept_up(always, start=10, ceiling=100, max_steps=20)
        assert 100 / 1.3 < found <= 100


class TestLatencies:
    """Each event path's p50/p99: both sides open-loop at a rate, one latency for every item sent."""

    async def test_the_ledger_pair_times_every_entry_from_its_due_time_to_its_commit(
        self, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        bench = await LedgerBench.create(_TestStack(make_database))  # type: ignore[arg-type]
        for ours in (True, False):
            started = time.time()
            latencies = await bench.latency(ours=ours, rate=400, seconds=0.1)
            assert len(latencies) == 40
            assert all(0 < ms < (time.time() - started) * 1000 for ms in latencies)
        posted = await _count(bench.dsn, "SELECT count(*) FROM journal_entries")
        assert posted >= 80  # both sides' entries were written, not only timed

    async def test_the_relay_pair_times_every_event_until_a_reader_has_it(
        self, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        stack = _TestStack(make_database)
        prefix = f"benchtest-{os.urandom(4).hex()}."
        await ensure_topics(BOOTSTRAP, prefix=prefix, partitions=2)
        bench = RelayBench(stack, await stack.database("bench_relay"), prefix)  # type: ignore[arg-type]
        for ours in (True, False):
            latencies = await bench.latency(ours=ours, rate=200, seconds=0.1)
            assert len(latencies) == 20 and all(ms > 0 for ms in latencies)
        assert await _count(bench.dsn, "SELECT count(*) FROM outbox") == 0  # each deleted once a reader had it

    async def test_the_consumer_pair_times_every_record_until_its_effect_row(
        self, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        stack = _TestStack(make_database)
        bench = ConsumerBench(stack, await stack.database("bench_consumer"))  # type: ignore[arg-type]
        for ours in (True, False):
            latencies = await bench.latency(ours=ours, rate=200, seconds=0.1)
            assert len(latencies) == 20 and all(ms > 0 for ms in latencies)
        assert await _count(bench.dsn, "SELECT count(*) FROM bench_effects") == 2 * (1 + 20)  # a first one each
        assert await _count(bench.dsn, "SELECT count(*) FROM inbox") == 1 + 20  # ours' inbox, not the baseline's

    async def test_a_tail_sees_only_what_is_sent_after_it_starts(self) -> None:
        prefix = f"benchtest-{os.urandom(4).hex()}."
        await ensure_topics(BOOTSTRAP, prefix=prefix, partitions=2)
        topic = events_topic("orders", prefix=prefix)
        async with started_producer(BOOTSTRAP) as producer:
            await (await producer.send(topic, value=b"{}", key=b"before"))
            async with Tail(BOOTSTRAP, topic) as tail:
                await (await producer.send(topic, value=b"{}", key=b"after"))
                await tail.until({b"after": 0.0}, timeout=30)
                assert set(tail.seen) == {b"after"}


async def _count(dsn: str, query: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


class TestLoadGenerator:
    async def test_paced_hands_each_item_over_once_in_ticks_due_at_the_rate(self) -> None:
        ticks: list[tuple[range, float]] = []
        running = 0
        overlapped = False

        async def send(items: range, due: float) -> None:
            nonlocal running, overlapped
            ticks.append((items, due))
            running += 1
            overlapped = overlapped or running > 1
            await asyncio.sleep(0.03)  # slower than a tick: the next ticks start anyway (open loop)
            running -= 1

        started = time.time()
        sent = await loadgen.paced(send, rate=1000, seconds=0.1, tick=0.01)
        assert sent == 100 and sorted(n for items, _ in ticks for n in items) == list(range(100))
        assert len(ticks) == 10 and all(len(items) == 10 for items, _ in ticks)
        dues = sorted(due for _, due in ticks)
        assert dues[0] >= started and all(b - a == pytest.approx(0.01) for a, b in itertools.pairwise(dues))
        assert overlapped and running == 0  # open loop, and every tick's send has completed on return

    async def test_the_collector_is_paused_while_a_run_sends_and_back_after_it(self) -> None:
        enabled: list[bool] = []

        async def operation(n: int) -> bool:
            enabled.append(gc.isenabled())
            await asyncio.sleep(0)
            return True

        assert gc.isenabled()
        opened = await loadgen.open_loop(operation, rate=400, seconds=0.05)
        closed = await loadgen.closed_loop(operation, workers=2, seconds=0.05)
        assert opened.done > 0 and closed.done > 0
        assert len(enabled) == opened.done + closed.done and not any(enabled)
        assert gc.isenabled()


class TestCpuMeter:
    def test_it_reports_each_process_and_what_the_hypervisor_stole(self) -> None:
        meter = CpuMeter({"bench": [os.getpid()]})
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:  # busy: this process uses CPU over the span
            pass
        cores = meter.cores()
        assert set(cores) == {"bench", "steal"}
        assert cores["bench"] > 0 and cores["steal"] >= 0


class TestRunQueueMeter:
    def test_the_wait_of_every_thread_of_a_process_is_summed(self, tmp_path: Path) -> None:
        # /proc/<pid>/task/<tid>/schedstat: ns on the CPU, ns waiting on a run queue, time slices
        for tid, line in ((os.getpid(), "900000000 250000000 40"), (4242, "10 1500000000 3")):
            task = tmp_path / str(os.getpid()) / "task" / str(tid)
            task.mkdir(parents=True)
            (task / "schedstat").write_text(line + "\n")
        assert run_queue_seconds(os.getpid(), children=False, proc=tmp_path) == pytest.approx(1.75)

    def test_a_process_that_cannot_be_read_waited_nothing(self, tmp_path: Path) -> None:
        assert run_queue_seconds(os.getpid(), children=False, proc=tmp_path) == 0.0

    def test_it_reports_each_process_in_cores(self) -> None:
        meter = RunQueueMeter({"bench": [os.getpid()]})
        waiting = meter.cores()
        assert set(waiting) == {"bench"} and waiting["bench"] >= 0


class TestKeptUp:
    """A step keeps up while its latency has no rising trend: `latency_growth_ms` over the step."""

    @staticmethod
    def _step(ms: Callable[[int], float], *, orders: int = 1500, seconds: float = 8.0) -> list[tuple[float, float]]:
        return [(n * seconds / orders, ms(n)) for n in range(orders)]

    def test_a_flat_latency_with_spikes_has_no_growth_however_slow_its_last_orders(self) -> None:
        noisy = random.Random(7)
        step = self._step(lambda n: 300 + noisy.uniform(-100, 100) + (2500 if n % 250 == 249 else 0))
        assert max(ms for _, ms in step[-300:]) > 3 * 300  # what the slowest-of-the-last-fifth test refused
        assert abs(http_pairs.latency_growth_ms(step)) < 100

    def test_a_backlog_that_builds_shows_as_the_growth_it_adds(self) -> None:
        noisy = random.Random(11)
        # 5 % more orders than the pipeline serves: each waits 5 % of the time elapsed since the step began
        step = self._step(lambda n: 300 + 0.05 * (n * 8.0 / 1500) * 1000 + noisy.uniform(-100, 100))
        assert http_pairs.latency_growth_ms(step) == pytest.approx(400, abs=40)

    def test_too_few_orders_show_no_growth(self) -> None:
        assert http_pairs.latency_growth_ms([]) == 0.0
        assert http_pairs.latency_growth_ms([(1.0, 100.0), (1.0, 900.0)]) == 0.0


class TestStepReport:
    """Each pipeline step is reported with how busy it kept the machine: the tail at half the highest rate is the
    tail of a machine nearly full, and the report shows it."""

    @staticmethod
    def _step(**changes: object) -> http_pairs.Step:
        cpu = {"postgres": 0.62, "orders": 0.47, "kafka": 0.19, "bench": 0.1, "steal": 0.3}
        fields: dict[str, object] = dict(
            rate=110.8,
            sent=1662,
            errors=0,
            posted=1662,
            latencies_ms=[100.0] * 98 + [400.0, 500.0],
            sustained=True,
            cpu=cpu,
            growth_ms=-12.4,
        )
        return http_pairs.Step(**{**fields, **changes})  # type: ignore[arg-type]

    def test_the_cores_busy_are_the_processes_not_what_the_hypervisor_stole(self) -> None:
        assert self._step().busy_cores == pytest.approx(1.38)

    def test_a_step_that_kept_up_gives_its_trend_p99_cores_and_steal(self) -> None:
        assert self._step().describe() == "110.8/s kept up (trend -12 ms) p99 400 ms, 1.38 cores busy, 0.30 stolen"

    def test_a_step_that_fell_behind_says_why(self) -> None:
        step = self._step(sustained=False, why="only 90 of 100 entries posted 15s after the load")
        assert step.describe() == (
            "110.8/s fell behind: only 90 of 100 entries posted 15s after the load p99 400 ms, 1.38 cores busy,"
            " 0.30 stolen"
        )

    @pytest.mark.parametrize("steal", [0.0, 0.04])
    def test_steal_below_what_the_report_prints_is_left_out(self, steal: float) -> None:
        step = self._step(cpu={"postgres": 0.62, "orders": 0.76, "steal": steal})
        assert step.describe() == "110.8/s kept up (trend -12 ms) p99 400 ms, 1.38 cores busy"

    def test_the_pooled_steps_note_gives_each_steps_p99_and_what_was_stolen_in_it(self) -> None:
        quiet = self._step(cpu={"postgres": 0.7, "orders": 0.7, "steal": 0.01}, latencies_ms=[50.0] * 100)
        note = http_pairs.pooled_note([self._step(), quiet], rate=95.3, seconds=15)
        assert note.startswith(
            "open-loop at 95.3 orders/s, 2 steps of 15 s pooled (each step's p99: 400 ms (0.30 stolen), 50 ms);"
            " 3324/3324 entries posted, 0 errors; 1.39 of "
        )


class TestOrderToLedgerSteps:
    async def test_a_warm_up_step_at_the_same_rate_comes_first_and_is_not_counted(self) -> None:
        calls: list[tuple[float, float]] = []

        async def step(http: object, *, rate: float, seconds: float) -> http_pairs.Step:
            calls.append((rate, seconds))
            return TestStepReport._step(rate=rate, latencies_ms=[float(len(calls))])

        runs = await http_pairs.order_to_ledger(
            SimpleNamespace(),  # type: ignore[arg-type]
            rate=104.7,
            seconds=15.0,
            repeats=3,
            warm_up_s=8.0,
            step=step,
        )
        assert calls == [(104.7, 8.0)] + [(104.7, 15.0)] * 3
        assert [run.latencies_ms for run in runs] == [[2.0], [3.0], [4.0]]  # the warm-up's orders are not pooled


class _FakeOrders:
    """Answers POST /orders with 201 like the service: a key seen before is a replay, which places nothing."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.placed: set[str] = set()

    async def request(
        self, method: str, path: str, *, body: object = None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        key = headers["Idempotency-Key"]
        self.keys.append(key)
        self.placed.add(key)
        return 201, b"{}"


def _http_against(fake: _FakeOrders) -> http_pairs.Http:
    service = SimpleNamespace(port=1)
    stack = SimpleNamespace(
        fleet=SimpleNamespace(services={"orders": service}),
        baseline=service,
        processes=lambda: {"bench": [os.getpid()]},
    )
    http = http_pairs.Http(stack)  # type: ignore[arg-type]
    http.orders = fake  # type: ignore[assignment]

    async def placed() -> int:
        return len(fake.placed)

    http.placed = placed  # type: ignore[method-assign]
    return http


class TestHttpPlaceOrderKeys:
    """Each request of `http_place_order` must place an order: a key sent again would be answered from the stored
    response and write nothing, and the bench would be timing replays."""

    async def test_no_key_is_sent_twice_across_runs(self) -> None:
        fake = _FakeOrders()
        http = _http_against(fake)
        runs = [await http_pairs.throughput(http, ours=True, seconds=0.05) for _ in range(3)]
        assert all(run.rate > 0 for run in runs)
        assert len(fake.keys) == len(set(fake.keys)) > 3

    async def test_a_run_whose_201s_did_not_all_place_an_order_fails(self) -> None:
        fake = _FakeOrders()
        http = _http_against(fake)
        await http_pairs.throughput(http, ours=True, seconds=0.05)
        http._keys = itertools.count()  # the keys of the run before are sent again: replays
        with pytest.raises(RuntimeError, match="a 201 must be a new order"):
            await http_pairs.throughput(http, ours=True, seconds=0.05)


class _SlowOrders(_FakeOrders):
    """A fake that takes a moment per request and counts how many were in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most_in_flight = 0

    async def request(
        self, method: str, path: str, *, body: object = None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.002)
            return await super().request(method, path, body=body, headers=headers)
        finally:
            self.in_flight -= 1


class TestClientCounts:
    """`http_place_order` measures each side at each client count and takes each where its median peaked."""

    def test_the_count_with_the_highest_median_wins_not_the_one_with_the_best_run(self) -> None:
        assert http_pairs.peak({16: [700.0, 1500.0, 710.0], 32: [760.0, 740.0, 790.0]}) == 32
        assert http_pairs.peak({16: [1200.0, 1150.0, 1180.0], 32: [1000.0, 1300.0, 990.0]}) == 16

    def test_equal_medians_keep_the_fewer_clients(self) -> None:
        assert http_pairs.peak({32: [800.0, 810.0], 16: [805.0, 805.0]}) == 16

    @pytest.mark.parametrize("clients", http_pairs.CLIENTS)
    async def test_a_throughput_run_keeps_as_many_requests_in_flight_as_it_has_clients(self, clients: int) -> None:
        fake = _SlowOrders()
        run = await http_pairs.throughput(_http_against(fake), ours=True, seconds=0.1, clients=clients)
        assert run.rate > 0
        assert fake.most_in_flight == clients


class TestClientPool:
    async def test_requests_beyond_its_connections_wait_for_one_and_their_wait_counts_in_open_loop_latency(
        self,
    ) -> None:
        connections = 0
        most = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections, most
            connections += 1
            most = max(most, connections)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    await asyncio.sleep(0.02)
                    writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                connections -= 1
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        client = loadgen.Client(server.sockets[0].getsockname()[1], max_connections=8)

        async def operation(n: int) -> bool:
            status, _ = await client.request("POST", "/x", body={"n": n})
            return status == 201

        try:
            run = await loadgen.open_loop(operation, rate=2000, seconds=0.05)  # 100 due within 50 ms
        finally:
            client.close()
            while connections:  # each handler sees its connection closed and returns
                await asyncio.sleep(0.01)
            server.close()
            await server.wait_closed()
        assert run.done == 100 and run.errors == 0
        assert most == 8 and client.opened == 8  # never more connections than its slots, each one reused
        # 100 requests of 20 ms on 8 connections take 13 turns of 20 ms; the last was due 50 ms after the first and
        # waited for the others (without the bound, each is answered in about 20 ms)
        assert run.p(100) >= 13 * 20 - 50 - 20


class _FakeService:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")

    def start(self) -> None:
        self.log.append(f"start {self.name}")


def _stack_of(log: list[str], *, behind: list[str]) -> Stack:
    stack = Stack.__new__(Stack)
    services = {name: _FakeService(name, log) for name in ("orders", "support", "billing", "ledger")}

    def wait_ready(*, timeout: float) -> None:
        log.append("ready")

    async def caught_up(*, timeout: float) -> list[str]:
        log.append("caught up?")
        return behind

    stack.fleet = SimpleNamespace(services=services, wait_ready=wait_ready)  # type: ignore[assignment]
    stack.caught_up = caught_up  # type: ignore[method-assign]
    return stack


class TestAlone:
    """A pair measuring one service's path runs with the other services stopped, and they catch up after it."""

    async def test_only_the_named_service_runs_inside_and_the_others_are_back_and_caught_up_after(self) -> None:
        log: list[str] = []
        async with _stack_of(log, behind=[]).alone("orders"):
            inside = list(log)
        assert inside == ["stop support", "stop billing", "stop ledger"]
        assert log[len(inside) :] == ["start support", "start billing", "start ledger", "ready", "caught up?"]

    async def test_services_that_do_not_catch_up_stop_the_bench(self) -> None:
        log: list[str] = []
        with pytest.raises(RuntimeError, match=r"did not catch up.*group billing: lag 5"):
            async with _stack_of(log, behind=["group billing: lag 5"]).alone("orders"):
                pass


class TestProbe:
    """`bench.probe`'s accounts: PostgreSQL's CPU by database and by background process, and a step's lines."""

    @pytest.mark.parametrize(
        ("title", "role"),
        [
            ("postgres: postgres orders [local] idle", "db orders"),
            ("postgres: postgres billing 127.0.0.1(53114) SELECT", "db billing"),
            ("postgres: app ledger [local] idle in transaction", "db ledger"),
            ("postgres: walwriter ", "walwriter"),
            ("postgres: io worker 2", "io worker"),
            ("postgres: autovacuum worker orders", "autovacuum worker"),
            ("postgres: logical replication launcher ", "logical replication launcher"),
            ("postmaster", "postmaster"),
        ],
    )
    def test_each_process_is_named_by_whom_it_works_for(self, title: str, role: str) -> None:
        assert probe.role_of(title) == role

    def test_cores_are_summed_by_role_over_the_span(self) -> None:
        before = {("db orders", 10): 1.0, ("db orders", 11): 2.0, ("walwriter", 5): 0.5, ("db billing", 12): 3.0}
        after = {("db orders", 10): 1.8, ("db orders", 11): 2.6, ("walwriter", 5): 0.52, ("db orders", 13): 0.2}
        # pid 12 ended (not counted); pid 13 started (counted from zero)
        assert probe.cores_by_role(before, after, 2.0) == {"db orders": 0.8, "walwriter": 0.01}

    def test_a_step_gives_its_cost_per_order_and_postgres_split(self) -> None:
        step = TestStepReport._step(rate=200.0)
        lines = probe.describe(step, {"db orders": 0.41, "db ledger": 0.12, "walwriter": 0.004})
        assert lines[0] == "200/s kept up: p50 100 ms, p99 400 ms, 1.38 cores busy, 6.90 ms of CPU per order"
        assert lines[1] == (
            "  cores: postgres 0.62, orders 0.47, kafka 0.19, bench 0.10 (stolen by the hypervisor: 0.30)"
        )
        assert lines[2] == "  postgres, over the step and its drain: db orders 0.410, db ledger 0.120"  # not < 0.005

    def test_a_step_that_measured_its_waits_for_a_cpu_gives_them_largest_first(self) -> None:
        step = TestStepReport._step(rate=200.0, waiting={"kafka": 0.26, "orders": 0.33, "bench": 0.004})
        lines = probe.describe(step, {"db orders": 0.41})
        assert lines[2] == "  waiting for a CPU while runnable, in cores: orders 0.33, kafka 0.26"  # not < 0.01
        assert lines[3] == "  postgres, over the step and its drain: db orders 0.410"

    def test_the_wal_of_a_step_is_given_per_order_with_its_most_frequent_records_first(self) -> None:
        records = [
            ("Heap/INSERT", 300, 120_000, 0),
            ("Btree/INSERT_LEAF", 800, 64_000, 0),
            ("Transaction/COMMIT", 10, 400, 0),
            ("XLOG/FPI_FOR_HINT", 2, 100, 16_384),
        ]
        lines = probe.wal_lines(records, 100, shown=3)
        assert lines[0] == "  WAL per order: 11.1 records, 2.0 KiB (0.2 KiB of full pages)"
        assert lines[1] == "    Btree/INSERT_LEAF 8.0, Heap/INSERT 3.0, Transaction/COMMIT 0.1"

    def test_stages_show_the_one_that_grows_from_the_first_third_to_the_last(self) -> None:
        # 30 orders, one every 0.1 s; each stage takes 10, 20, 30 and 40 ms, but the way from the shipment to billing
        # takes 5 ms longer for each order placed before it (a queue that builds)
        timelines = []
        for n in range(30):
            placed = 1000.0 + n / 10
            shipped = placed + 0.010
            billed = shipped + 0.020 + 0.005 * n
            ledgered = billed + 0.030
            timelines.append((placed, shipped, billed, ledgered, ledgered + 0.040))
        lines = probe.stage_lines(list(reversed(timelines)))  # taken in order of placing, whatever the given order
        assert lines[0] == "  stages of 30 orders, ms p50/p99, first third -> last third:"
        assert [line.split()[0] for line in lines[1:]] == ["place", "ship", "billing", "ledger's"]
        assert lines[1].endswith("10.0/  10.0 ->   10.0/  10.0")
        # the shipment's first third: orders 0-9 (p50 the 5th, order 4: 20 + 20 ms; p99 the 10th: 20 + 45); the
        # last: orders 20-29
        assert lines[2].endswith("40.0/  65.0 ->  140.0/ 165.0")
        assert lines[4].endswith("40.0/  40.0 ->   40.0/  40.0")

    def test_stages_of_too_few_orders_are_not_given(self) -> None:
        assert probe.stage_lines([(1.0, 2.0, 3.0, 4.0, 5.0)]) == ["  stages: too few orders followed through"]

    def test_a_step_that_fell_behind_says_why(self) -> None:
        step = TestStepReport._step(sustained=False, why="only 9 of 10 entries posted 15s after the load")
        assert probe.describe(step, {})[0].startswith("111/s fell behind (only 9 of 10 entries posted")
        assert probe.describe(step, {})[2] == "  postgres, over the step and its drain: idle"


# Two samples as `perf script` prints them: a header, the frames innermost first, a blank line between samples.
_PERF_SCRIPT = """\
postgres 17640 36443.069799:    2004008 cpu-clock:ppp: \n\
\t          45b0fe LWLockAttemptLock+0x1e (/pg/bin/postgres)
\t          439e35 StartReadBuffer+0xc5 (/pg/bin/postgres)
\t          2fdc33 ExecInterpExpr+0x7a3 (/pg/bin/postgres)
\t          2fdc34 RI_FKey_check.isra.0+0x12 (/pg/bin/postgres)
\t          2fdc34 ExecInterpExpr+0x12 (/pg/bin/postgres)
\t          2fdc35 PostgresMain+0x20 (/pg/bin/postgres)
\t          2fdc36 main+0x10 (/pg/bin/postgres)

postgres 17641 36443.071002:    2004008 cpu-clock:ppp: \n\
\t            7f00 [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t          2fdc35 PostgresMain+0x20 (/pg/bin/postgres)
\t          2fdc36 main+0x10 (/pg/bin/postgres)
postgres 17641 36443.073002:    2004008 cpu-clock:ppp: \n\
\t          3ab001 ExecInterpExpr+0x1 (/pg/bin/postgres)
\t          2fdc35 PostgresMain+0x20 (/pg/bin/postgres)
\t          2fdc36 main+0x10 (/pg/bin/postgres)
"""


class TestPgPerf:
    """`bench.pgperf`: the stacks of `perf script`, collapsed and ranked by the samples each function was in."""

    def test_each_sample_is_its_stack_innermost_first_a_clone_by_its_function_an_unnamed_frame_by_its_object(
        self,
    ) -> None:
        assert pgperf.samples(_PERF_SCRIPT) == [
            ["LWLockAttemptLock", "StartReadBuffer", "ExecInterpExpr", "RI_FKey_check", "ExecInterpExpr"]
            + ["PostgresMain", "main"],
            ["[libc.so.6]", "PostgresMain", "main"],
            ["ExecInterpExpr", "PostgresMain", "main"],
        ]

    def test_collapsed_stacks_run_outermost_first_with_their_counts(self) -> None:
        stacks = [*pgperf.samples(_PERF_SCRIPT), ["ExecInterpExpr", "PostgresMain", "main"]]
        assert pgperf.collapsed(stacks) == [
            "main;PostgresMain;ExecInterpExpr 2",
            "main;PostgresMain;ExecInterpExpr;RI_FKey_check;ExecInterpExpr;StartReadBuffer;LWLockAttemptLock 1",
            "main;PostgresMain;[libc.so.6] 1",
        ]

    def test_a_function_counts_once_per_sample_and_those_on_every_stack_are_left_out(self) -> None:
        ranked = pgperf.inclusive(pgperf.samples(_PERF_SCRIPT))
        # ExecInterpExpr: twice on the first stack (recursion), once on the third: 2 of 3 samples
        assert ranked == [
            ("ExecInterpExpr", pytest.approx(2 / 3)),
            ("LWLockAttemptLock", pytest.approx(1 / 3)),
            ("RI_FKey_check", pytest.approx(1 / 3)),
            ("StartReadBuffer", pytest.approx(1 / 3)),
            ("[libc.so.6]", pytest.approx(1 / 3)),
        ]

    def test_the_summary_gives_each_centre_s_share_then_the_functions_on_the_most_stacks(self) -> None:
        stacks = [*pgperf.samples(_PERF_SCRIPT), ["XLogFlush", "CommitTransaction", "PostgresMain", "main"]]
        assert dict(pgperf.centres(stacks)) == {
            name: {"foreign-key checks": 0.25, "commit": 0.25, "WAL flush": 0.25}.get(name, 0.0)
            for name, _ in pgperf.CENTRES
        }
        lines = pgperf.summary(stacks, top=2)
        assert lines[0] == "  perf: 4 samples of the backends; share of the samples in:"
        assert "foreign-key checks 25.0%" in lines[1] and "commit 25.0%, WAL flush 25.0%" in lines[1]
        assert "planning 0.0%" in lines[1]
        assert lines[2:] == [
            "  the functions on the most stacks:",
            "     50.0% ExecInterpExpr",
            "     25.0% CommitTransaction",
        ]
        assert pgperf.summary([]) == ["  perf: no samples (were the database's backends idle?)"]

    def test_without_perf_it_says_what_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(pgperf.shutil, "which", lambda name: None)
        with pytest.raises(pgperf.PerfMissing, match="linux-perf"):
            pgperf.perf_binary()

    async def test_the_backends_of_a_database_are_its_connections_not_the_one_asking(
        self, make_database: Callable[[str], Awaitable[str]]
    ) -> None:
        stack = _TestStack(make_database)
        dsn = await stack.database("perf_probe")
        name = dsn.rsplit("/", 1)[1]
        before = await probe.backends(stack, name)
        conn = await asyncpg.connect(dsn)
        try:
            pid = conn.get_server_pid()
            during = await probe.backends(stack, name)
        finally:
            await conn.close()
        assert pid not in before and pid in during


class TestInterpreter:
    def test_the_report_names_the_interpreter_the_stack_runs_by_version_path_and_build(self) -> None:
        named = interpreter()
        assert named.startswith(f"Python {platform.python_version()} at {os.path.realpath(sys.executable)} (")
        assert platform.python_build()[1] in named  # when it was built: two builds of one version differ there
