"""Topic names, and their creation with a set partition count (the broker's auto-creation is off)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

SERVICES = ("orders", "billing", "support", "ledger")
DEFAULT_PARTITIONS = 6


def events_topic(service: str, *, prefix: str = "") -> str:
    return f"{prefix}{service}.events"


def dlq_topic(group: str) -> str:
    """The dead-letter topic of a consumer group (the group already carries any prefix)."""
    return f"{group}.dlq"


def all_topics(*, prefix: str = "") -> list[str]:
    return [events_topic(s, prefix=prefix) for s in SERVICES] + [dlq_topic(f"{prefix}{s}") for s in SERVICES]


async def ensure_topics(bootstrap: str, *, prefix: str = "", partitions: int = DEFAULT_PARTITIONS) -> list[str]:
    """Create the missing topics; return those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in all_topics(prefix=prefix) if t not in existing]
        if wanted:
            try:
                await admin.create_topics([NewTopic(t, partitions, 1) for t in wanted])
            except TopicAlreadyExistsError:
                pass
        return wanted
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, *, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in all_topics(prefix=prefix) if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
