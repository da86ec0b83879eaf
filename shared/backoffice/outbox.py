"""Transactional outbox: `append` in the caller's transaction; `Relay` publishes rows to Kafka in order per key.

Rows are spread over `LANES` lanes by key. A relay publishes a lane only while it holds that lane's advisory
lock, so two replicas never publish the same key's rows at once (no duplicates from racing, no reordering);
lanes are shared fairly among the relays that are alive (each holds a shared "presence" lock).

Waking: a writer does not NOTIFY in its own transaction. PostgreSQL serialises the commits of notifying transactions
(a database-wide lock held through the WAL flush), which capped every writing endpoint at one commit per fsync. A
pool connection that wrote outbox rows instead wakes this process's relay when it is released (its transaction is
over); when other relays share the lanes, a background task sends them one NOTIFY per burst of writes. Rows written
any other way are found by the poll every `poll_interval`.

A row is deleted once Kafka has acknowledged it: the outbox holds what is still to be published, and the topic is the
record of what was. Marking rows sent (`sent_at`) rewrote each one, payload included: a new row version with new
entries in every index (an update of a column in an index's predicate is never HOT), and the sent rows stayed a day.
With `synchronous_commit` off, `POST /orders` served 4286 and 4660/s with deletes against 3879 and 4246/s with marks
(bench stacks, 64 clients, alternating), the relay's mark costing the database 14-16 us a row. `sent_at` stays, always
NULL now, for the replicas of an older version that still mark rows during a rolling upgrade: the relay skips rows
marked sent, and `purge_sent` deletes them a day later.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from murmurhash2 import murmurhash2
from prometheus_client import Counter, Gauge

from backoffice import db
from backoffice.db import Conn
from backoffice.envelope import Envelope, encode
from backoffice.events import Event

LANES = 16
LANE_LOCK_CLASS = 7_310_100
_PRESENCE = 7_310_099
# Under a steady trickle, a relay cycle (fetch, send, acknowledgements, delete) starts at most this often. Each cycle is
# a produce request, and a fetch response and a transaction in every consumer of the topic; on a busy machine fewer,
# larger batches cost less and arrive no later. Measured on the bench pipeline at 40 orders/s (2 cores): 25 ms took
# about 1.75 cores in all, 50 ms about 1.45 (the broker 0.25 instead of 0.33, each consumer a quarter less) with the
# same order-to-journal latency (p50 about 90-105 ms, p99 about 170-240 ms); 100 ms saved a little more CPU but added
# some 40 ms to p50. A write after a quiet spell is published at once.
_MIN_CYCLE_S = 0.05

log = structlog.get_logger("outbox")

# A statement failed, or the connection can no longer be used. asyncpg raises InternalClientError ("cannot switch to
# state 12; another operation (2) is in progress") for a statement sent on a connection whose server ended it while it
# was idle (PostgreSQL restarting, pg_terminate_backend): the server's unsolicited FATAL error puts the protocol in
# its error-consuming state, and a statement sent before the end of the socket is read meets that state.
_DB_FAILURES = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)

OLDEST_UNSENT = Gauge("outbox_oldest_unsent_age_seconds", "Age of the oldest outbox row not yet published")
LANES_HELD = Gauge("outbox_relay_lanes", "Outbox lanes this process relays now")
PUBLISHED = Counter("outbox_published_total", "Outbox rows published to Kafka")
RELAY_ERRORS = Counter("outbox_relay_errors_total", "Relay cycles that failed and were retried")


_INSERT = (
    "INSERT INTO outbox (event_id, lane, topic, key, headers, payload) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)"
)


def lane_of(key: str) -> int:
    return zlib.crc32(key.encode()) % LANES


def row_of(env: Envelope) -> tuple[str, int, str, str, str, bytes]:
    """The outbox columns of an envelope: event_id, lane, topic, key, headers (JSON text) and payload."""
    row, payload = document_of(env)
    return row["id"], row["lane"], row["topic"], row["key"], orjson.dumps(row["headers"]).decode(), payload


def document_of(env: Envelope) -> tuple[dict[str, Any], bytes]:
    """The outbox row of an envelope as a JSON object (`row_of` by name, the headers as [[name, value], ...]) and,
    apart, its payload: for statements that take their arguments as one JSON document and the payloads as bytes."""
    _key, value, headers = encode(env)
    return {
        "id": env.id,
        "lane": lane_of(env.subject),
        "topic": env.topic(),
        "key": env.subject,
        "headers": [[k, v.decode()] for k, v in headers],
    }, value


def columns(envelopes: Sequence[Envelope]) -> list[list[Any]]:
    """The outbox columns of `envelopes` as six arrays (`row_of`, transposed): the parameters of `insert_sql`."""
    return [list(column) for column in zip(*(row_of(env) for env in envelopes), strict=True)]


def insert_sql(first: int = 1) -> str:
    """An INSERT of outbox rows, in order, from the six arrays of `columns` passed as parameters $first.. $first+5:
    to write events in the same statement as other rows (a CTE), in one round trip."""
    p = db.placeholders(first, 6)
    return (
        "INSERT INTO outbox (event_id, lane, topic, key, headers, payload)"
        " SELECT e.id, e.lane, e.topic, e.key, e.headers::jsonb, e.payload"
        f" FROM unnest({p[0]}::uuid[], {p[1]}::smallint[], {p[2]}::text[], {p[3]}::text[], {p[4]}::text[],"
        f" {p[5]}::bytea[]) WITH ORDINALITY AS e(id, lane, topic, key, headers, payload, n) ORDER BY e.n"
    )


async def append(conn: Conn, event: Event | Envelope) -> Envelope:
    """Write one event to the outbox inside the caller's transaction."""
    envelope = event if isinstance(event, Envelope) else Envelope.wrap(event)
    await append_many(conn, [envelope])
    return envelope


async def append_many(conn: Conn, events: Sequence[Event | Envelope]) -> list[Envelope]:
    """Write several events in one round trip, in order, inside the caller's transaction."""
    envelopes = [e if isinstance(e, Envelope) else Envelope.wrap(e) for e in events]
    if not envelopes:
        return []
    if len(envelopes) == 1:  # the usual case: a plain execute costs less than arrays of one
        await conn.execute(_INSERT, *row_of(envelopes[0]))
    else:
        await conn.execute(insert_sql(), *columns(envelopes))
    db.wrote_outbox(conn)
    return envelopes


Partitioner = Callable[[bytes | None, list[int], list[int]], int]
_MURMUR2_SEED = 0x9747B28C  # the seed of Kafka's Java client (`Utils.murmur2`)


def partition_of(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioner, as aiokafka's `DefaultPartitioner` and the Java client: a keyed record goes to
    murmur2(key) (sign bit cleared) modulo the partition count, so every client puts a key on the same partition;
    one without a key to any available partition.

    The hash is computed by `murmurhash2` (compiled) rather than aiokafka's pure-Python `murmur2`, which took 13 us
    a key: 43 % of the relay's CPU while it drained a backlog in the bench (`outbox_relay`), against 0.5 us."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmurhash2(key, _MURMUR2_SEED) & 0x7FFFFFFF) % len(all_partitions)]


def new_producer(
    bootstrap: str, *, partitioner: Partitioner = partition_of, max_batch_size: int = 262144
) -> AIOKafkaProducer:
    """The idempotent producer every service publishes with (acks=all, ordered retries)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=15000,
        max_batch_size=max_batch_size,
        partitioner=partitioner,
    )


class Relay:
    """Publishes unsent outbox rows; wakes on NOTIFY, polls as a fallback, backs off while Kafka is down."""

    CYCLE_TIMEOUT_S = 120.0  # far above any cycle's own bounds (a poll interval, 30 s for acks, 10 s for a fetch)

    def __init__(
        self,
        *,
        dsn: str,
        bootstrap: str,
        topic_prefix: str = "",
        batch_size: int = 500,
        poll_interval: float = 1.0,
        min_cycle: float = _MIN_CYCLE_S,
    ) -> None:
        self.topic_prefix = topic_prefix
        self.min_cycle = min_cycle
        self.dsn = dsn
        self.bootstrap = bootstrap
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lanes: set[int] = set()
        self.producer: AIOKafkaProducer | None = None
        self._conn: Conn | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._balanced_at = -math.inf
        self._published: list[int] = []  # published and acknowledged, deleted with the next fetch
        self._in_flight: deque[tuple[list[int], asyncio.Future[Any]]] = deque()  # sent, acks awaited
        self._ahead: asyncio.Future[list[asyncpg.Record]] | None = None  # the next batch, fetched while one is sent
        self.kafka_ok = False
        self._peers = 1  # relays sharing the lanes, this one included, as of the last balancing
        self._notify = asyncio.Event()

    def _written(self) -> None:
        """A connection of this process committed outbox rows: publish them now, and wake the other relays."""
        self._wake.set()
        if self._peers > 1:
            self._notify.set()

    async def run(self) -> None:
        """Run until cancelled; every failure is retried with backoff, and the relay never stops on its own.

        A cycle that takes longer than CYCLE_TIMEOUT_S is stuck (each of its waits has a bound well under it) and is
        abandoned like a failed one. A failure of an unexpected kind is logged with its traceback, and both clients
        are rebuilt. Rows published but not yet deleted are published again by the next cycle; consumers skip them.
        """
        backoff = 0.2
        measuring = asyncio.create_task(self._measure_loop(), name="outbox-measure")
        notifying = asyncio.create_task(self._notify_loop(), name="outbox-notify")
        unsubscribe = db.on_outbox_released(self._written)
        try:
            while not self._stopping:
                bound = asyncio.timeout(self.CYCLE_TIMEOUT_S)
                try:
                    async with bound:
                        await self._connect()
                        await self._cycle()
                    backoff = 0.2
                    continue
                except (KafkaError, *_DB_FAILURES) as exc:
                    RELAY_ERRORS.inc()
                    stuck = bound.expired()
                    log.warning("relay_retry", error=repr(exc), stuck=stuck, backoff_s=round(backoff, 2))
                    kafka, database = isinstance(exc, KafkaError | asyncio.TimeoutError), stuck
                except Exception as exc:  # a relay that stopped would leave every later row unsent
                    RELAY_ERRORS.inc()
                    log.exception("relay_failed", error=repr(exc), backoff_s=round(backoff, 2))
                    kafka, database = True, True
                try:
                    async with asyncio.timeout(self.CYCLE_TIMEOUT_S):
                        await self._reset(kafka=kafka, database=database)
                except Exception as exc:  # whatever is left is dropped: the next cycle starts afresh
                    log.exception("relay_reset_failed", error=repr(exc))
                    self._abandon()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        finally:
            unsubscribe()
            measuring.cancel()
            notifying.cancel()

    async def _notify_loop(self) -> None:
        """One NOTIFY per burst of local writes, outside every writer's transaction, for the other relays."""
        conn: Conn | None = None
        while True:
            await self._notify.wait()
            self._notify.clear()
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=5)
                    await conn.execute("SET synchronous_commit = off")
                await conn.execute("NOTIFY outbox")
            except asyncio.CancelledError:
                if conn is not None:
                    conn.terminate()
                raise
            except _DB_FAILURES:
                conn = None  # the other relays poll meanwhile
            await asyncio.sleep(0.005)

    async def _measure_loop(self) -> None:
        """Keep the age of the oldest unsent row current, even while publishing is stuck."""
        conn: Conn | None = None
        while True:
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self.dsn, timeout=5)
                oldest = await conn.fetchval(
                    "SELECT extract(epoch FROM clock_timestamp() - created_at) FROM outbox WHERE sent_at IS NULL "
                    "ORDER BY seq LIMIT 1"
                )
                OLDEST_UNSENT.set(float(oldest or 0.0))
            except asyncio.CancelledError:
                if conn is not None:
                    conn.terminate()
                raise
            except _DB_FAILURES:
                conn = None
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self._stopping = True
        try:
            async with asyncio.timeout(5):
                await self._drop_ahead()
                await self._settle(0)
                await self._delete_published()
        except (KafkaError, *_DB_FAILURES):
            pass  # rows not yet deleted are published again by the next relay; consumers skip them
        await self._reset(kafka=True)

    async def _connect(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self.lanes.clear()
            self._conn = await asyncpg.connect(self.dsn, timeout=10)
            # Deleting published rows need not wait for the WAL flush: a delete lost in a crash only publishes a
            # row again, which consumers skip (inbox), exactly as after a crash between publishing and deleting.
            await self._conn.execute("SET synchronous_commit = off")
            await self._conn.add_listener("outbox", lambda *_: self._wake.set())
            await self._conn.execute("SELECT pg_advisory_lock_shared($1, 0)", _PRESENCE)
        if self.producer is None:
            producer = new_producer(self.bootstrap)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self.producer = producer
        self.kafka_ok = True

    def _abandon(self) -> None:
        """Drop both clients and all state without waiting for anything (after a reset that failed itself)."""
        self._ahead = None
        while self._in_flight:
            self._in_flight.popleft()[1].cancel()
        self.kafka_ok = False
        self.producer = None  # its connections are closed when it is collected
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        self.lanes.clear()

    async def _reset(self, *, kafka: bool, database: bool = False) -> None:
        try:
            await self._drop_ahead()
        except _DB_FAILURES:
            pass  # its connection is closed: the next cycle connects again
        while self._in_flight:  # not known to be acknowledged: kept, published again later
            _, acks = self._in_flight.popleft()
            if acks.done() and not acks.cancelled():
                acks.exception()
            acks.cancel()
        if kafka:
            self.kafka_ok = False
            if self.producer is not None:
                producer, self.producer = self.producer, None
                try:
                    await asyncio.wait_for(producer.stop(), 10)
                except (TimeoutError, KafkaError, OSError):
                    pass
        if self._conn is not None and (kafka is False or database or self._stopping):
            conn, self._conn = self._conn, None
            self.lanes.clear()
            try:
                await asyncio.wait_for(conn.close(), 5)
            except _DB_FAILURES:
                conn.terminate()

    async def _cycle(self) -> None:
        assert self._conn is not None
        if not self.lanes or time.monotonic() - self._balanced_at >= self.poll_interval:
            await self._drop_ahead()  # fetched for the lanes held until now
            await self._settle(0)
            await self._delete_published()  # before a lane may pass to another relay
            await self._balance_lanes()
            self._balanced_at = time.monotonic()
        self._wake.clear()  # before reading: a NOTIFY arriving while publishing wakes the next wait at once
        started = time.monotonic()
        sent = await self.publish_batch()
        if sent < self.batch_size:
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                return
            # Under a steady trickle of writes, gather a few rows per batch rather than one per wake-up; a write
            # after a quiet spell is published at once.
            rest = started + self.min_cycle - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)

    async def _balance_lanes(self) -> None:
        """Hold a fair share of the lanes: release extras, try to take free ones."""
        try:
            await self._rebalance_lanes()
        finally:
            LANES_HELD.set(len(self.lanes))

    async def _rebalance_lanes(self) -> None:
        assert self._conn is not None
        relays = (
            await self._conn.fetchval(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = 0"
                " AND objsubid = 2 AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                _PRESENCE,
            )
            or 1
        )
        self._peers = relays
        share = math.ceil(LANES / relays)
        while len(self.lanes) > share:
            lane = max(self.lanes)
            await self._conn.execute("SELECT pg_advisory_unlock($1, $2)", LANE_LOCK_CLASS, lane)
            self.lanes.discard(lane)
        for lane in range(LANES):
            if len(self.lanes) >= share:
                break
            if lane not in self.lanes and await self._conn.fetchval(
                "SELECT pg_try_advisory_lock($1, $2)", LANE_LOCK_CLASS, lane
            ):
                self.lanes.add(lane)

    async def _delete_published(self) -> None:
        if self._published and self._conn is not None:
            await self._conn.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", self._published)
            self._published = []

    async def _drop_ahead(self) -> None:
        """Wait for a batch fetched ahead and forget it: its rows were neither sent nor deleted, so the next fetch
        takes them again (the connection is free for other statements after this)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        try:
            async with asyncio.timeout(10):
                await ahead
        except BaseException:
            if self._conn is not None:
                self._conn.terminate()  # its statement may still be running: the next cycle connects again
            raise

    def _fetch(self, *, skip: list[int]) -> asyncio.Future[list[asyncpg.Record]]:
        """Delete the acknowledged rows and fetch the next batch of this relay's lanes, skipping `skip` (rows in
        flight), in one statement; started at once. The fetch sees the rows as they were before the delete (one
        snapshot), hence it skips the deleted ones explicitly."""
        assert self._conn is not None
        deleting, self._published = self._published, []
        return asyncio.ensure_future(
            self._conn.fetch(
                "WITH deleted AS (DELETE FROM outbox WHERE seq = ANY($3::bigint[]))"
                " SELECT seq, topic, key, headers::text AS headers, payload FROM outbox"
                " WHERE sent_at IS NULL AND lane = ANY($1::int[]) AND seq <> ALL($3::bigint[])"
                " AND seq <> ALL($4::bigint[]) ORDER BY seq LIMIT $2",
                sorted(self.lanes),
                self.batch_size,
                deleting,
                skip,
            )
        )

    async def _settle(self, keep: int) -> None:
        """Wait for the acknowledgements of all but `keep` batches in flight; those rows become `_published`."""
        while len(self._in_flight) > keep:
            seqs, acks = self._in_flight[0]
            async with asyncio.timeout(30):  # not wait_for: on 3.11 it can swallow a cancellation
                await asyncio.shield(acks)
            self._in_flight.popleft()
            self._published += seqs

    async def _send(self, rows: list[asyncpg.Record]) -> asyncio.Future[Any]:
        """Hand `rows` to the producer, in order, as one record batch per partition; the future of their acks.

        The producer's `send` takes one record at a time, each with a future of its own that is resolved on its
        own, which cost the relay about twice the CPU an event (figures in `bench/RESULTS.md`). A batch built here
        has the records of a partition in outbox order, and the producer sends a partition's batches in the order
        they were given, so a key's events stay in order; their partition is the one `send` would have chosen
        (`partition_of`, the producer's partitioner).
        """
        assert self.producer is not None
        producer = self.producer
        batches: dict[tuple[str, int], list[Any]] = {}
        partitions: dict[str, list[int]] = {}
        for row in rows:
            topic = self.topic_prefix + row["topic"]
            known = partitions.get(topic)
            if known is None:
                known = partitions[topic] = sorted(await producer.partitions_for(topic))
            key, value = row["key"].encode(), row["payload"]
            headers = [(k, v.encode()) for k, v in orjson.loads(row["headers"])]
            builders = batches.setdefault((topic, partition_of(key, known, known)), [])
            if not builders or builders[-1].append(key=key, value=value, timestamp=None, headers=headers) is None:
                builders.append(producer.create_batch())  # a full batch is closed; a batch takes its first record
                builders[-1].append(key=key, value=value, timestamp=None, headers=headers)
        futures = [
            await producer.send_batch(builder, topic, partition=partition)
            for (topic, partition), builders in batches.items()
            for builder in builders
        ]
        return asyncio.gather(*futures)

    async def publish_batch(self) -> int:
        """Publish one batch of this relay's lanes in outbox order; rows are deleted once acknowledged.

        While a backlog lasts (full batches), the next batch is fetched while this one is sent, and sent while this
        one's acknowledgements are awaited (the producer keeps each partition in order); acknowledged rows are
        deleted by the statement that fetches a batch, which skips them and those in flight explicitly.
        """
        assert self._conn is not None and self.producer is not None
        if not self.lanes:
            return 0
        in_flight = [seq for seqs, _ in self._in_flight for seq in seqs]
        ahead, self._ahead = self._ahead, None
        rows = await (ahead if ahead is not None else self._fetch(skip=in_flight))
        if not rows:
            await self._settle(0)
            await self._delete_published()
            return 0
        seqs = [r["seq"] for r in rows]
        full = len(rows) == self.batch_size
        if full:
            self._ahead = self._fetch(skip=[*in_flight, *seqs])
            await asyncio.sleep(0)  # let it send its statement before the sends below hold the loop
        self._in_flight.append((seqs, await self._send(rows)))
        await self._settle(1 if full else 0)
        if not full:
            await self._delete_published()
        PUBLISHED.inc(len(rows))
        return len(rows)


async def unsent_count(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))


async def purge_sent(conn: Conn, *, older_than_s: float = 86400.0) -> int:
    """Delete rows marked published more than `older_than_s` ago: only replicas of an older version mark rows, the
    relay deletes what it published."""
    result = await conn.execute("DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)", older_than_s)
    return int(result.split()[-1])
