"""The idempotent consumer: effect + inbox row in one transaction, then the offset; poison to `<group>.dlq`.

The records of a poll (every partition's) are applied in one transaction: one inbox statement, then each new
event's handler (a `Batched` handler takes each run of consecutive events it handles in one call). When a handler
raises a permanent error the batch is rolled back and applied again with a savepoint per record, so that only that
record is dead-lettered; a transient failure (database or broker unreachable, timeout, serialization conflict)
aborts the batch, which is re-read from its first offsets after a backoff. Offsets are committed only after the
transaction commits and the dead letters are acknowledged, so a crash at any point re-delivers, and the inbox makes
re-delivery a no-op.

Because the inbox, not the offset, is what makes an event apply once, offsets are committed at a pace rather than
after every poll: at most every `commit_interval` seconds while records flow, at once when the partitions go
quiet, when they are revoked and when the consumer stops. Under a trickle a commit per poll (a write to
`__consumer_offsets` each) was a large share of the broker's work; the cost of the pace is that a crash re-reads
at most an interval's worth of records, which the inbox skips.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import Counter, Gauge

from backoffice import context
from backoffice.db import Conn
from backoffice.envelope import Envelope, PoisonRecord, decode
from backoffice.errors import DomainError, TransientError
from backoffice.events import Event
from backoffice.outbox import new_producer
from backoffice.topics import dlq_topic

log = structlog.get_logger("consumer")

EventHandler = Callable[[Conn, Envelope], Awaitable[None]]


@dataclass(frozen=True, eq=False)
class Batched:
    """A handler that takes many events in one call: `apply(conn, envelopes)`.

    In a poll's transaction, each run of consecutive fresh records handled by the same `Batched` is applied in one
    call, in record order (so one statement can write a whole run instead of one per event). When the batch is redone
    record by record with a savepoint each (a handler refused an event), it is called with one event at a time, so
    only the refused one is dead-lettered.
    """

    apply: Callable[[Conn, list[Envelope]], Awaitable[None]]


Handler = EventHandler | Batched

APPLIED = Counter("consumer_events_applied_total", "Events applied", ["group", "type"])
DUPLICATES = Counter("consumer_events_duplicate_total", "Re-deliveries skipped by the inbox", ["group"])
ASSIGNED = Gauge("consumer_assigned_partitions", "Partitions this process consumes now", ["group"])
DEAD_LETTERED = Counter("consumer_events_dead_lettered_total", "Records sent to the dead-letter topic", ["group"])
RETRIES = Counter("consumer_batch_retries_total", "Batches retried after a transient failure", ["group"])

TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    TransientError,
    KafkaError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
_UNEXPECTED_ATTEMPTS = 3
_GATHER_BYTES = 1 << 20


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before partitions go to another member, commit what was applied of them, so it need not re-read that."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.consumer.commit(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


class _Rejected(Exception):
    """A handler refused or failed in the batch's fast path: redo the batch with a savepoint per record."""


async def _dispatch(conn: Conn, handler: Handler, envelopes: list[Envelope]) -> None:
    """Hand events to their handler: a `Batched` one takes them all in one call, any other one at a time."""
    if isinstance(handler, Batched):
        await handler.apply(conn, envelopes)
    else:
        for envelope in envelopes:
            await handler(conn, envelope)


async def _apply_run(conn: Conn, handler: Handler | None, envelopes: list[Envelope]) -> None:
    """Apply fresh events with their handler in the fast path; a permanent failure rejects the batch."""
    assert handler is not None
    context.bind(correlation=envelopes[0].correlation_id, parent=envelopes[0].traceparent)
    try:
        await _dispatch(conn, handler, envelopes)
    except Exception as exc:
        if is_transient(exc):
            raise
        raise _Rejected from exc


@dataclass(frozen=True)
class DeadLetter:
    record: ConsumerRecord  # type: ignore[type-arg]
    reason: str


class Consumer:
    """Consumes `topics` as `group`, applying each event once through `handlers` (by event class)."""

    CLOSE_COMMIT_TIMEOUT_S = 5.0

    def __init__(
        self,
        *,
        group: str,
        topics: list[str],
        pool: asyncpg.Pool,
        bootstrap: str,
        handlers: Mapping[type[Event], Handler],
        batch_size: int = 500,
        producer: AIOKafkaProducer | None = None,
        commit_interval: float = 0.5,
        gather_ms: int = 0,
    ) -> None:
        self.group = group
        self.topics = topics
        self.pool = pool
        self.bootstrap = bootstrap
        self.handlers = {cls.ce_type(): h for cls, h in handlers.items()}
        self.batch_size = batch_size
        self._producer = producer
        self._own_producer = producer is None
        self._consumer: AIOKafkaConsumer | None = None
        self._failures: dict[tuple[str, int, int], int] = {}
        self.commit_interval = commit_interval
        self.gather_ms = gather_ms
        self._uncommitted: dict[TopicPartition, int] = {}  # next offset per partition, applied but not committed
        self._committed_at = time.monotonic()
        self.running = False

    async def run(self) -> None:
        """Consume until cancelled; reconnect with backoff whenever Kafka or the database is away."""
        backoff = 0.2
        while True:
            try:
                await self._start()
                while True:
                    await self.poll_once()
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: rebuild the clients and go on
                RETRIES.labels(self.group).inc()
                log.warning("consumer_restart", group=self.group, error=repr(exc), backoff_s=round(backoff, 2))
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def stop(self) -> None:
        await self._close()

    async def _start(self) -> None:
        if self._consumer is not None:
            return
        if self._producer is None:
            producer = new_producer(self.bootstrap)
            await producer.start()
            self._producer = producer
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            isolation_level="read_committed",
            # Gathering: the broker holds each fetch up to `gather_ms` (or until a whole burst is in) instead of
            # answering at the first event; else it answers at once (it holds an empty fetch for 500 ms).
            fetch_max_wait_ms=self.gather_ms or 500,
            fetch_min_bytes=_GATHER_BYTES if self.gather_ms else 1,
        )
        consumer.subscribe(self.topics, listener=_CommitOnRevoke(self))
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self.running = True

    async def _close(self) -> None:
        self.running = False
        if self._consumer is not None and self._uncommitted:
            pending = len(self._uncommitted)
            try:  # bounded: aiokafka waits for a coordinator as long as it takes, and Kafka may be what is down
                async with asyncio.timeout(self.CLOSE_COMMIT_TIMEOUT_S):
                    await self.commit()
            except TimeoutError:  # the records are re-read by whoever consumes next; the inbox skips them
                log.warning("commit_abandoned", group=self.group, partitions=pending)
        consumer, self._consumer = self._consumer, None
        self._uncommitted.clear()
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), 15)
            except Exception:  # noqa: BLE001 - closing a broken client
                pass
        if self._own_producer and self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await asyncio.wait_for(producer.stop(), 15)
            except Exception:  # noqa: BLE001 - closing a broken client
                pass

    async def poll_once(self, timeout_ms: int = 500) -> int:
        """Fetch and apply what every partition has, in one transaction; return the number of records handled.

        One transaction for all the partitions of a poll, not one each: under a steady trickle, records are spread
        over many partitions a few at a time, and a commit (a WAL flush) per partition was what limited the rate.
        Records keep their order within each partition, which is all the order Kafka promises.
        """
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.batch_size)
        assignment = self._consumer.assignment()
        ASSIGNED.labels(self.group).set(len(assignment))
        # A partition revoked meanwhile is skipped: its new owner re-reads it, and the inbox skips what was applied.
        live = {tp: records for tp, records in batches.items() if records and tp in assignment}
        if not live:
            await self.commit()  # quiet: whatever was applied is committed now
            return 0
        if not await self._apply_partitions(live):
            return 0
        still = self._consumer.assignment()
        for tp, records in live.items():  # the transaction is durable: these offsets may be committed
            if tp in still:
                self._uncommitted[tp] = records[-1].offset + 1
        if time.monotonic() - self._committed_at >= self.commit_interval:
            await self.commit()
        return sum(len(records) for records in live.values())

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the offsets applied so far (of `partitions` only, when given).

        A failed commit is logged and its offsets are kept for the next try (the next quiet poll) while their
        partitions stay assigned; a partition that moved is re-read by its new owner, and the inbox skips that.
        """
        pending = {tp: o for tp, o in self._uncommitted.items() if partitions is None or tp in partitions}
        self._committed_at = time.monotonic()
        consumer = self._consumer
        if not pending or consumer is None:
            return
        for tp in pending:
            del self._uncommitted[tp]
        try:
            await consumer.commit(pending)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            log.warning("commit_failed", group=self.group, partitions=len(pending), error=repr(exc))
            assigned = consumer.assignment()
            for tp, offset in pending.items():
                if tp in assigned:
                    self._uncommitted.setdefault(tp, offset)  # unless a later offset was applied meanwhile

    async def _apply_partitions(self, live: dict[TopicPartition, list[ConsumerRecord]]) -> bool:  # type: ignore[type-arg]
        """Apply the batches (dead letters included); False when they are to be read again."""
        assert self._consumer is not None
        try:
            dead = await self._apply_batch([record for records in live.values() for record in records])
            if dead:
                await self._dead_letter(dead)
        except Exception as exc:
            if not is_transient(exc):
                raise
            RETRIES.labels(self.group).inc()
            for tp, records in live.items():
                log.warning(
                    "batch_retry",
                    group=self.group,
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=records[0].offset,
                    error=repr(exc),
                )
                self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(0.5)
            return False
        return True

    async def _apply_batch(self, records: list[ConsumerRecord]) -> list[DeadLetter]:  # type: ignore[type-arg]
        dead: list[DeadLetter] = []
        todo: list[tuple[ConsumerRecord, Envelope, Handler]] = []  # type: ignore[type-arg]
        for record in records:
            try:
                envelope = decode(record.headers, record.value)
            except PoisonRecord as exc:
                dead.append(DeadLetter(record, f"poison: {exc}"))
                continue
            handler = self.handlers.get(envelope.type)
            if handler is not None:
                todo.append((record, envelope, handler))
        if not todo:
            return dead
        async with self.pool.acquire() as conn:
            try:
                await self._apply_fast(conn, todo)
            except _Rejected:
                dead += await self._apply_each(conn, todo)
        dead.sort(key=lambda d: (d.record.topic, d.record.partition, d.record.offset))
        return dead

    async def _apply_fast(self, conn: Conn, todo: list[tuple[ConsumerRecord, Envelope, Handler]]) -> None:  # type: ignore[type-arg]
        """The whole batch in one transaction: one inbox statement, then each new event's handler (a run of
        consecutive events for the same `Batched` handler in one call), no savepoints.

        A handler that rejects its event or fails unexpectedly rolls the batch back (`_Rejected`); the batch is then
        applied record by record with a savepoint each, which isolates (and dead-letters) just that record.
        """
        applied: dict[str, int] = {}
        duplicates = 0
        run_handler: Handler | None = None
        async with conn.transaction():
            fresh = {
                str(r["event_id"])
                for r in await conn.fetch(
                    "INSERT INTO inbox (consumer, event_id, event_type)"
                    " SELECT $1, e.id, e.type FROM unnest($2::uuid[], $3::text[]) AS e(id, type)"
                    " ON CONFLICT DO NOTHING RETURNING event_id",
                    self.group,
                    [envelope.id for _, envelope, _ in todo],
                    [envelope.type for _, envelope, _ in todo],
                )
            }
            run: list[Envelope] = []  # fresh events in a row for the same Batched handler, not applied yet
            for _, envelope, handler in todo:
                if envelope.id not in fresh:
                    duplicates += 1
                    continue
                fresh.discard(envelope.id)  # the same event twice in one batch is applied once
                if run and handler is not run_handler:
                    await _apply_run(conn, run_handler, run)
                    run = []
                if isinstance(handler, Batched):
                    run.append(envelope)
                    run_handler = handler
                else:
                    await _apply_run(conn, handler, [envelope])
                applied[envelope.type] = applied.get(envelope.type, 0) + 1
            if run:
                await _apply_run(conn, run_handler, run)
        # counted once the transaction has committed, one metric update per type rather than per event
        if duplicates:
            DUPLICATES.labels(self.group).inc(duplicates)
        for kind, count in applied.items():
            APPLIED.labels(self.group, kind).inc(count)

    async def _apply_each(self, conn: Conn, todo: list[tuple[ConsumerRecord, Envelope, Handler]]) -> list[DeadLetter]:  # type: ignore[type-arg]
        dead: list[DeadLetter] = []
        async with conn.transaction():
            for record, envelope, handler in todo:
                reason = await self._apply_one(conn, record, envelope, handler)
                if reason:
                    dead.append(DeadLetter(record, reason))
        return dead

    async def _apply_one(
        self,
        conn: Conn,
        record: ConsumerRecord,  # type: ignore[type-arg]
        envelope: Envelope,
        handler: Handler,
    ) -> str | None:
        """Apply one event inside a savepoint; return a dead-letter reason, or None once applied or skipped."""
        context.bind(correlation=envelope.correlation_id, parent=envelope.traceparent)
        try:
            async with conn.transaction():
                inserted = await conn.fetchval(
                    "INSERT INTO inbox (consumer, event_id, event_type) VALUES ($1, $2, $3) "
                    "ON CONFLICT DO NOTHING RETURNING true",
                    self.group,
                    envelope.id,
                    envelope.type,
                )
                if not inserted:
                    DUPLICATES.labels(self.group).inc()
                    return None
                await _dispatch(conn, handler, [envelope])
        except DomainError as exc:
            return f"rejected: {type(exc).__name__}: {exc.detail}"
        except Exception as exc:
            if is_transient(exc):
                raise
            key = (record.topic, record.partition, record.offset)
            self._failures[key] = self._failures.get(key, 0) + 1
            if self._failures[key] < _UNEXPECTED_ATTEMPTS:
                raise TransientError(f"unexpected {exc!r}, attempt {self._failures[key]}") from exc
            self._failures.pop(key, None)
            log.error("handler_failed", group=self.group, type=envelope.type, event_id=envelope.id, error=repr(exc))
            return f"failed: {type(exc).__name__}: {exc}"
        if self._failures:
            self._failures.pop((record.topic, record.partition, record.offset), None)
        APPLIED.labels(self.group, envelope.type).inc()
        return None

    async def _dead_letter(self, dead: list[DeadLetter]) -> None:
        assert self._producer is not None
        futures = []
        for item in dead:
            r = item.record
            headers = list(r.headers or ()) + [
                ("dlq_reason", item.reason[:1000].encode()),
                ("dlq_topic", r.topic.encode()),
                ("dlq_partition", str(r.partition).encode()),
                ("dlq_offset", str(r.offset).encode()),
            ]
            futures.append(await self._producer.send(dlq_topic(self.group), value=r.value, key=r.key, headers=headers))
            log.warning(
                "dead_lettered",
                group=self.group,
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                reason=item.reason,
            )
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        DEAD_LETTERED.labels(self.group).inc(len(dead))
