"""Replays change nothing; poison goes to the right dead-letter topic while the valid events around it apply."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from backoffice import ops
from backoffice.envelope import Envelope, encode, header_map
from backoffice.events import OrderPlaced, OrderReturned, TicketOpened
from devstack.fleet import Fleet
from tests.conftest import BOOTSTRAP, eventually, produce, read_topic

EFFECTS = {
    "orders": ["orders", "order_events", "order_invoices", "outbox", "inbox"],
    "billing": [
        "invoices",
        "payments",
        "credit_notes",
        "invoice_settlements",
        "dunning_notices",
        "disputes",
        "bills",
        "bill_payments",
        "outbox",
        "inbox",
    ],
    "ledger": ["journal_entries", "journal_lines", "outbox", "inbox"],
    "support": ["tickets", "ticket_messages", "timeline_items", "disputes", "outbox", "inbox"],
}


async def _counts(fleet: Fleet) -> dict[str, int]:
    out = {}
    for service, tables in EFFECTS.items():
        conn = await asyncpg.connect(fleet.env[f"{service.upper()}_DATABASE_URL"])
        try:
            for table in tables:
                out[f"{service}.{table}"] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await conn.close()
    return out


async def _caught_up(prefix: str) -> bool:
    return all(g.lag == 0 for g in await ops.group_lag(BOOTSTRAP, prefix=prefix))


async def _rewind(group: str, topics: list[str]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        if not partitions:
            await consumer.topics()
            partitions = [TopicPartition(t, p) for t in topics for p in range(3)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        await consumer.commit({tp: await consumer.position(tp) for tp in partitions})
    finally:
        await consumer.stop()


class TestReplay:
    async def test_resetting_every_group_to_the_earliest_offset_changes_nothing(
        self, fleet: Fleet, topics: str
    ) -> None:
        await eventually(lambda: _caught_up(topics), timeout=60)
        await asyncio.sleep(2)
        before = await _counts(fleet)
        assert before["ledger.journal_entries"] > 0, "the story before should have left effects to replay"
        await asyncio.to_thread(fleet.stop)
        for group, sources in ops.SUBSCRIPTIONS.items():
            await _rewind(f"{topics}{group}", [f"{topics}{s}.events" for s in sources])
        lags = {g.group: g.lag for g in await ops.group_lag(BOOTSTRAP, prefix=topics)}
        assert all(lag > 0 for lag in lags.values()), lags
        await asyncio.to_thread(fleet.start)
        await eventually(lambda: _caught_up(topics), timeout=90)
        await asyncio.sleep(2)
        assert await _counts(fleet) == before


def _poison(ce_type: str, value: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", str(uuid.uuid4()).encode()),
        ("ce_type", ce_type.encode()),
        ("ce_source", b"/backoffice/test"),
        ("ce_subject", b"poison"),
        ("content-type", b"application/json"),
    ]
    return b"poison", value, headers


class TestPoison:
    async def test_poison_in_every_topic_reaches_each_consumers_dlq_and_valid_events_apply(
        self, fleet: Fleet, topics: str
    ) -> None:
        now = datetime.now(UTC)
        customer = f"poison-{uuid.uuid4().hex[:6]}"
        batches = {
            "orders": (
                "backoffice.orders.OrderPlaced.v1",
                [
                    OrderPlaced(
                        order_id=str(uuid.uuid4()),
                        customer_id=customer,
                        currency="EUR",
                        lines=(),
                        total_minor=0,
                        status="confirmed",
                        placed_at=now,
                    )
                ],
            ),
            "billing": ("backoffice.billing.InvoicePaid.v1", []),
            "support": (
                "backoffice.support.TicketOpened.v1",
                [
                    TicketOpened(
                        ticket_id=str(uuid.uuid4()),
                        customer_id=customer,
                        status="new",
                        priority="low",
                        subject="poison neighbour",
                        occurred_at=now,
                    )
                ],
            ),
        }
        expected: dict[str, set[str]] = {}
        for source, (ce_type, valid) in batches.items():
            poison = [
                _poison(ce_type, b"{not json"),
                _poison(ce_type, b'{"only": "junk"}'),
                _poison(f"backoffice.{source}.NoSuchEvent.v1", b"{}"),
            ]
            records = (
                [encode(Envelope(event=e)) for e in valid[:1]] + poison + [encode(Envelope(event=e)) for e in valid[1:]]
            )
            await produce(f"{topics}{source}.events", records)
            ids = {header_map(h)["ce_id"] for _, _, h in poison}
            for group, sources in ops.SUBSCRIPTIONS.items():
                if source in sources:
                    expected.setdefault(group, set()).update(ids)
        dangling = encode(
            Envelope(
                event=OrderReturned(
                    order_id=str(uuid.uuid4()),
                    return_id=str(uuid.uuid4()),
                    customer_id=customer,
                    currency="EUR",
                    lines=({"sku": "X", "quantity": 1, "unit_price_minor": 100},),
                    subtotal_minor=100,
                    restocked=False,
                    returned_at=now,
                )
            )
        )
        await produce(f"{topics}orders.events", [dangling])
        expected["billing"].add(header_map(dangling[2])["ce_id"])

        for group, ids in expected.items():
            dead = await read_topic(
                f"{topics}{group}.dlq",
                timeout=60,
                until=lambda rs, ids=ids: ids <= {header_map(r.headers)["ce_id"] for r in rs},
            )
            got = {header_map(r.headers)["ce_id"]: header_map(r.headers) for r in dead}
            assert ids <= got.keys(), f"{group}.dlq is missing {ids - got.keys()}"
            for ce_id in ids:
                h = got[ce_id]
                assert h["dlq_topic"].startswith(topics)
                assert h["dlq_reason"]
                assert {"dlq_partition", "dlq_offset", "ce_type", "ce_source"} <= h.keys()
        support = fleet.env["SUPPORT_DATABASE_URL"]

        async def neighbours_applied() -> bool:
            conn = await asyncpg.connect(support)
            try:
                return (
                    int(await conn.fetchval("SELECT count(*) FROM timeline_items WHERE customer_id = $1", customer))
                    >= 2
                )
            finally:
                await conn.close()

        await eventually(neighbours_applied, timeout=30)
