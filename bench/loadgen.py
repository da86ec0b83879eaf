"""A lean HTTP/1.1 keep-alive client and two load shapes: closed-loop (throughput) and open-loop (latency).

The client is a few lines over asyncio streams so that the load generator, sharing two cores with the servers,
spends as little CPU as possible. Open-loop latency is measured from each request's scheduled time, so a server
that falls behind shows it in the tail (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson


class HttpError(RuntimeError):
    pass


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(
        self, method: str, path: str, *, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        payload = orjson.dumps(body) if body is not None else b""
        head = [f"{method} {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(payload)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = None
        for line in raw.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise HttpError("response without Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


# The most connections a client keeps to its server; a request beyond them waits for one, and an open-loop run counts
# that wait in its latency (measured from the request's due time), as wrk2 does with its fixed connections and as
# an application's HTTP client does with its pool (httpx and aiohttp keep at most 100). Without a bound, a stall of
# the server (a checkpoint's writes, say) had the client open a connection for every request that came due
# meanwhile, and the server then spent its time accepting them: `POST /orders` at 3500/s open-loop (synchronous
# commit on), which it serves closed-loop at 4300/s, opened 8900 connections in 8 s and had a p50 of 1.1 s.
MAX_CONNECTIONS = 128


class Client:
    """A pool of at most `max_connections` keep-alive connections to one server."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", max_connections: int = MAX_CONNECTIONS) -> None:
        self.host = host
        self.port = port
        self.idle: list[Connection] = []
        self.opened = 0
        self._slots = asyncio.Semaphore(max_connections)

    async def request(
        self, method: str, path: str, *, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        async with self._slots:  # each request in flight holds one connection: never more than the slots
            return await self._request(method, path, body=body, headers=headers)

    async def _request(
        self, method: str, path: str, *, body: object = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        reused = bool(self.idle)
        conn = self.idle.pop() if reused else await self._open()
        try:
            result = await conn.request(method, path, body=body, headers=headers)
        except (asyncio.IncompleteReadError, ConnectionError):
            conn.close()
            if not reused:
                raise
            # the server closed an idle keep-alive connection: send again on a new one (same Idempotency-Key)
            conn = await self._open()
            try:
                result = await conn.request(method, path, body=body, headers=headers)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        self.idle.append(conn)
        return result

    async def _open(self) -> Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.opened += 1
        return Connection(reader, writer)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Run:
    """What one load run measured: completed operations, errors, per-operation latencies (s)."""

    seconds: float
    done: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


Operation = Callable[[int], Awaitable[bool]]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection in this process while a run sends: a full collection of the load generator's heap
    (every latency and order it has kept) paused it for 40-110 ms, and the orders in flight then waited for it (an
    order's shipment is sent once its order is answered), which counted as the pipeline's latency. A run's cycles
    are collected once it is over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


async def closed_loop(operation: Operation, *, workers: int, seconds: float) -> Run:
    """`workers` clients each sending the next request as soon as the last answered, for `seconds`."""
    run = Run(seconds=seconds)
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                ok = await operation(next(counter))
            except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
                ok = False
                run.first_error = run.first_error or repr(exc)
            if ok:
                run.done += 1
                run.latencies.append(time.perf_counter() - started)
            else:
                run.errors += 1

    with collector_paused():
        await asyncio.gather(*(worker() for _ in range(workers)))
    return run


async def open_loop(operation: Operation, *, rate: float, seconds: float, timeout: float = 30.0) -> Run:
    """Start one operation every 1/`rate` seconds whatever the answers, for `seconds`; latency from the schedule."""
    run = Run(seconds=seconds)
    count = max(1, int(rate * seconds))
    start = time.perf_counter() + 0.01
    tasks = []

    async def one(n: int, due: float) -> None:
        try:
            async with asyncio.timeout(timeout):  # not wait_for: that is one more task for every operation
                ok = await operation(n)
        except (OSError, HttpError, asyncio.IncompleteReadError, TimeoutError) as exc:
            ok = False
            run.first_error = run.first_error or repr(exc)
        if ok:
            run.done += 1
            run.latencies.append(time.perf_counter() - due)
        else:
            run.errors += 1

    with collector_paused():
        for n in range(count):
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n, due)))
        await asyncio.gather(*tasks)
    return run


Tick = Callable[[range, float], Coroutine[Any, Any, None]]


async def paced(send: Tick, *, rate: float, seconds: float, tick: float = 0.01) -> int:
    """Open-loop for event paths: every `tick` seconds, `send(items, due)` is started for the items due in that tick
    (`rate` a second in all, numbered from 0) with the tick's due time (`time.time()`), whatever the earlier ticks'
    progress; a latency measured from `due` shows a path that falls behind. Returns how many items were sent.

    The caller pauses the collector (`collector_paused`) around the whole measurement, the wait for the last items
    to arrive included: the path measured runs in this process, and a collection at the end of the sending (of a
    heap holding every item made beforehand) paused it for some 300 ms while the last items were in flight."""
    total = max(1, int(rate * seconds))
    ticks = max(1, math.ceil(total / (rate * tick)))
    start = time.time() + 0.01
    tasks: list[asyncio.Task[None]] = []
    for k in range(ticks):
        first, last = int(total * k / ticks), int(total * (k + 1) / ticks)
        due = start + k * tick
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if last > first:
            tasks.append(asyncio.create_task(send(range(first, last), due)))
    await asyncio.gather(*tasks)
    return total
