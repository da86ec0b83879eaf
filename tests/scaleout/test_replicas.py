"""Two instances of every service share their consumer groups and outboxes: both consume, both relay, and no
effect happens twice."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from backoffice import ops
from backoffice.topics import events_topic
from devstack.fleet import Fleet
from devstack.procs import free_port
from tests.conftest import BOOTSTRAP, auth, eventually

SERVICES = ("orders", "support", "billing", "ledger")
STAFF = auth(" ".join(f"{s}:{a}" for s in SERVICES for a in ("read", "write", "admin")) + " inventory:write")


@pytest.fixture(scope="module")
async def fleet(
    topics: str, make_database: Callable[[str], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, "BACKOFFICE_TOPIC_PREFIX": topics}
    for service in SERVICES:
        env[f"{service.upper()}_DATABASE_URL"] = await make_database(f"scale_{service}")
        env[f"{service.upper()}_OUTBOX_POLL_INTERVAL_S"] = "0.3"
    ports = {s: free_port() for s in SERVICES} | {f"{s}-2": free_port() for s in SERVICES}
    fleet = Fleet(env=env, ports=ports, logs=tmp_path_factory.mktemp("scale-logs"), replicas=2)
    try:
        await asyncio.to_thread(fleet.start)
        yield fleet
    finally:
        await asyncio.to_thread(fleet.stop)


def _metric(text: str, name: str) -> float:
    total = 0.0
    for match in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE):
        total += float(match.group(1))
    return total


async def _caught_up(prefix: str, fleet: Fleet) -> bool:
    if any(g.lag for g in await ops.group_lag(BOOTSTRAP, prefix=prefix)):
        return False
    for service in SERVICES:
        backlog = await ops.outbox_backlog(service, fleet.env[f"{service.upper()}_DATABASE_URL"])
        if backlog.unsent:
            return False
    return True


class TestTwoReplicas:
    async def test_both_instances_consume_and_relay_and_nothing_is_applied_twice(
        self, fleet: Fleet, topics: str
    ) -> None:
        urls = {key: proc.url for key, proc in fleet.services.items()}
        clients = {key: httpx.AsyncClient(base_url=url, timeout=30) for key, url in urls.items()}
        try:
            run = uuid.uuid4().hex[:6]
            for i in range(4):
                r = await clients["orders"].post(
                    "/products",
                    headers=STAFF,
                    json={
                        "sku": f"S{i}-{run}",
                        "name": "thing",
                        "unit_price_minor": 1000 + i,
                        "currency": "EUR",
                        "on_hand": 1000,
                    },
                )
                assert r.status_code == 201, r.text
            shipments = []
            for n in range(40):
                orders = clients["orders" if n % 2 else "orders-2"]
                r = await orders.post(
                    "/orders",
                    headers={**STAFF, "Idempotency-Key": str(uuid.uuid4())},
                    json={
                        "customer_id": f"scale-{run}-{n % 5}",
                        "currency": "EUR",
                        "shipping_address": "1 Road",
                        "lines": [{"sku": f"S{n % 4}-{run}", "quantity": 1 + n % 3}],
                    },
                )
                assert r.status_code == 201, r.text
                order = r.json()
                s = await clients["orders-2" if n % 2 else "orders"].post(
                    f"/orders/{order['id']}/shipments",
                    headers={**STAFF, "Idempotency-Key": str(uuid.uuid4())},
                    json={"lines": [{"sku": f"S{n % 4}-{run}", "quantity": 1 + n % 3}]},
                )
                assert s.status_code == 201, s.text
                shipments.append(s.json()["shipments"][-1]["id"])
            await eventually(lambda: _caught_up(topics, fleet), timeout=120)

            async def each_consumes() -> bool:  # a rebalance may be in flight at the moment the load ends
                texts = [(await c.get("/metrics")).text for c in clients.values()]
                return all(_metric(text, "consumer_assigned_partitions") > 0 for text in texts)

            with contextlib.suppress(TimeoutError):  # the assertions below say which one does not
                await eventually(each_consumes, timeout=30)
            for key, client in clients.items():
                text = (await client.get("/metrics")).text
                assert _metric(text, "consumer_assigned_partitions") > 0, f"{key} consumes no partition"
                assert _metric(text, "outbox_relay_lanes") > 0, f"{key} relays no lane"
            for key in ("orders", "orders-2", "billing", "billing-2"):
                text = (await clients[key].get("/metrics")).text
                assert _metric(text, "outbox_published_total") > 0, f"{key} published nothing"
        finally:
            for client in clients.values():
                await client.aclose()
        billing = await asyncpg.connect(fleet.env["BILLING_DATABASE_URL"])
        ledger = await asyncpg.connect(fleet.env["LEDGER_DATABASE_URL"])
        try:
            invoiced = {
                r["shipment_id"]: r["n"]
                for r in await billing.fetch("SELECT shipment_id, count(*) AS n FROM invoices GROUP BY shipment_id")
            }
            assert sorted(invoiced) == sorted(shipments)
            assert set(invoiced.values()) == {1}
            issued = [  # what billing published: its relays delete each outbox row once Kafka has it
                r.info["ce_id"]
                for r in await ops.read_topic(BOOTSTRAP, events_topic("billing", prefix=topics))
                if r.info["ce_type"].endswith("InvoiceIssued.v1")
            ]
            posted = await ledger.fetch(
                "SELECT source_event_id, count(*) AS n FROM journal_entries"
                " WHERE source_type = 'InvoiceIssued' GROUP BY source_event_id"
            )
            assert len(set(issued)) == len(shipments)
            assert set(issued) == {str(r["source_event_id"]) for r in posted}
            assert {r["n"] for r in posted} == {1}
        finally:
            await billing.close()
            await ledger.close()
