"""Operations on a running platform: consumer lag, outbox backlog, dead letters (list and replay)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from backoffice.envelope import header_map
from backoffice.outbox import new_producer
from backoffice.topics import SERVICES, dlq_topic, events_topic

SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "orders": ("billing",),
    "billing": ("orders", "support"),
    "support": ("orders", "billing", "support"),
    "ledger": ("billing",),
}
DLQ_HEADERS = ("dlq_reason", "dlq_topic", "dlq_partition", "dlq_offset")


@dataclass(frozen=True)
class GroupLag:
    group: str
    lag: int
    partitions: int


async def group_lag(bootstrap: str, *, prefix: str = "") -> list[GroupLag]:
    """Per consumer group: records on its topics not yet committed (a group with no commit counts everything)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        out = []
        for service in SERVICES:
            group = f"{prefix}{service}"
            committed = await admin.list_consumer_group_offsets(group)
            partitions = []
            for source in SUBSCRIPTIONS[service]:
                topic = events_topic(source, prefix=prefix)
                partitions += await _partitions(bootstrap, topic)
            ends = await consumer.end_offsets(partitions) if partitions else {}
            lag = 0
            for tp, end in ends.items():
                meta = committed.get(tp)
                lag += end - (meta.offset if meta is not None and meta.offset >= 0 else 0)
            out.append(GroupLag(group, lag, len(partitions)))
        return out
    finally:
        await consumer.stop()
        await admin.close()


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if not described or described[0].get("error_code", 0) != 0:
        return []
    return [
        TopicPartition(topic, p["partition"]) for p in sorted(described[0]["partitions"], key=lambda p: p["partition"])
    ]


@dataclass(frozen=True)
class OutboxBacklog:
    service: str
    unsent: int
    oldest_unsent_s: float


async def outbox_backlog(service: str, dsn: str) -> OutboxBacklog:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0) AS age"
            " FROM outbox WHERE sent_at IS NULL"
        )
        assert row is not None
        return OutboxBacklog(service, int(row["n"]), float(row["age"]))
    finally:
        await conn.close()


async def wait_caught_up(bootstrap: str, dsns: Mapping[str, str], *, timeout: float) -> tuple[float, list[str]]:
    """Seconds until every outbox (`dsns`: service -> its database) is sent and every consumer group's lag is zero,
    and what is still behind at `timeout` (empty once caught up). A component still starting counts as behind."""
    started = time.monotonic()
    behind: list[str] = []
    while time.monotonic() - started < timeout:
        try:
            backlogs = [await outbox_backlog(service, dsn) for service, dsn in dsns.items()]
            lags = await group_lag(bootstrap)
        except Exception:  # noqa: BLE001 - a component may still be starting
            await asyncio.sleep(1)
            continue
        behind = [f"outbox {b.service}: {b.unsent}" for b in backlogs if b.unsent]
        behind += [f"group {g.group}: lag {g.lag}" for g in lags if g.lag]
        if not behind:
            return time.monotonic() - started, []
        await asyncio.sleep(0.5)
    return time.monotonic() - started, behind


@dataclass(frozen=True)
class Record:
    """A record read from a topic (`read_topic`)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def info(self) -> dict[str, str]:
        return header_map(self.headers)


async def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Every record now on `topic`, in offset order partition by partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = await _partitions(bootstrap, topic)
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out: list[Record] = []
        while await _behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                out += [Record(r.partition, r.offset, r.key, r.value, list(r.headers or ())) for r in records]
        return sorted(out, key=lambda d: (d.partition, d.offset))
    finally:
        await consumer.stop()


async def read_dead_letters(bootstrap: str, group: str) -> list[Record]:
    """Every record now on `<group>.dlq`, oldest first."""
    return await read_topic(bootstrap, dlq_topic(group))


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def replay_dead_letters(bootstrap: str, group: str, *, ids: set[str] | None = None) -> list[Record]:
    """Re-publish dead letters to their original topic with their original headers (same `ce_id`)."""
    letters = [d for d in await read_dead_letters(bootstrap, group) if not ids or d.info.get("ce_id") in ids]
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        for letter in letters:
            original = [(k, v) for k, v in letter.headers if k not in DLQ_HEADERS]
            await producer.send_and_wait(letter.info["dlq_topic"], value=letter.value, key=letter.key, headers=original)
    finally:
        await producer.stop()
    return letters
