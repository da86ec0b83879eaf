"""The support API against the real PostgreSQL (and its own events through the real broker)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from backoffice.envelope import header_map
from tests.conftest import auth, eventually
from tests.support.conftest import (
    ADMIN,
    AGENT,
    READER,
    ce_type,
    customer,
    data,
    new_ticket,
    support_app,
    support_events,
)


@pytest.fixture(scope="module")
async def client(make_database: Callable[[str], Awaitable[str]], topics: str) -> AsyncIterator[httpx.AsyncClient]:
    async with support_app(make_database, topics, "support_api") as http:
        yield http


def cid() -> str:
    return f"cust-{uuid.uuid4().hex[:10]}"


async def open_ticket(client: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = new_ticket(fields.pop("customer_id", None) or cid(), **fields)
    response = await client.post("/tickets", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def set_status(client: httpx.AsyncClient, ticket_id: str, status: str, **extra: Any) -> httpx.Response:
    return await client.post(f"/tickets/{ticket_id}/status", json={"status": status, **extra}, headers=AGENT)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


class TestOpening:
    async def test_agent_opens_a_ticket_and_ticket_opened_is_published(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        order_id = str(uuid.uuid4())
        ticket = await open_ticket(client, AGENT, priority="high", category="delivery", order_id=order_id)
        assert ticket["status"] == "new"
        assert (ticket["priority"], ticket["order_id"], ticket["source"]) == ("high", order_id, "agent")
        assert ticket["sla"]["first_response"]["target_minutes"] == 240
        assert ticket["sla"]["resolution"]["running"] is True
        records = await support_events(topics, ticket_ids={ticket["id"]}, until=lambda rs: len(rs) >= 1)
        (record,) = records
        headers = header_map(record.headers)
        assert headers["ce_type"] == "backoffice.support.TicketOpened.v1"
        assert headers["ce_subject"] == ticket["id"] == record.key.decode()
        assert headers["ce_source"] == "/backoffice/support"
        assert data(record)["customer_id"] == ticket["customer_id"]
        assert data(record)["order_id"] == order_id

    async def test_customer_opens_only_for_themselves(self, client: httpx.AsyncClient) -> None:
        me = cid()
        mine = await open_ticket(client, customer(me), customer_id=me)
        assert (mine["customer_id"], mine["source"]) == (me, "customer")
        assert mine["sla"] is None and mine["breached"] is None
        problem(await client.post("/tickets", json=new_ticket(cid()), headers=customer(me)), 404)

    async def test_same_idempotency_key_opens_one_ticket(self, client: httpx.AsyncClient) -> None:
        me = cid()
        headers = {**AGENT, "Idempotency-Key": str(uuid.uuid4())}
        first = await client.post("/tickets", json=new_ticket(me), headers=headers)
        again = await client.post("/tickets", json=new_ticket(me), headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        listed = await client.get(f"/tickets?customer_id={me}", headers=AGENT)
        assert len(listed.json()["items"]) == 1


class TestBadInput:
    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"status": "closed"}, "body.status"),
            ({"priority": "asap"}, "body.priority"),
            ({"subject": "   "}, "body.subject"),
            ({"subject": "x" * 201}, "body.subject"),
            ({"order_id": "not-a-uuid"}, "body.order_id"),
            ({"customer_id": "a b;c"}, "body.customer_id"),
        ],
    )
    async def test_bad_fields_are_422_naming_them(
        self, client: httpx.AsyncClient, change: dict[str, Any], field: str
    ) -> None:
        body = problem(await client.post("/tickets", json={**new_ticket(cid()), **change}, headers=AGENT), 422)
        assert field in fields(body)

    async def test_a_bad_ticket_id_is_422_and_an_unknown_one_404(self, client: httpx.AsyncClient) -> None:
        assert "path.ticket_id" in fields(problem(await client.get("/tickets/nope", headers=AGENT), 422))
        problem(await client.get(f"/tickets/{uuid.uuid4()}", headers=AGENT), 404)

    async def test_bad_list_filters_and_cursor_are_422(self, client: httpx.AsyncClient) -> None:
        assert "query.status" in fields(problem(await client.get("/tickets?status=lost", headers=AGENT), 422))
        assert "query.cursor" in fields(problem(await client.get("/tickets?cursor=WyJ4Il0", headers=AGENT), 422))

    async def test_auth_is_checked(self, client: httpx.AsyncClient) -> None:
        problem(await client.get("/tickets"), 401)
        problem(await client.get("/tickets", headers=auth("orders:read")), 403)
        problem(await client.post("/tickets", json=new_ticket(cid()), headers=READER), 403)


class TestVisibility:
    async def test_a_customer_never_sees_internal_notes(self, client: httpx.AsyncClient) -> None:
        me = cid()
        ticket = await open_ticket(client, customer(me), customer_id=me)
        tid = ticket["id"]
        for visibility, text in (("internal", "SECRET: customer is on watch list"), ("public", "We are on it")):
            response = await client.post(
                f"/tickets/{tid}/messages", json={"body": text, "visibility": visibility}, headers=AGENT
            )
            assert response.status_code == 201, response.text
        await set_status(client, tid, "pending", note="SECRET: waiting for warehouse")

        seen_by_customer = [
            (await client.get(f"/tickets/{tid}", headers=customer(me))).text,
            (await client.get(f"/tickets/{tid}/messages", headers=customer(me))).text,
            (await client.get(f"/tickets?customer_id={me}", headers=customer(me))).text,
        ]

        async def timeline_has_all_ticket_events() -> bool:
            items = (await client.get(f"/customers/{me}/timeline", headers=customer(me))).json()["items"]
            seen_by_customer.append(str(items))
            return len(items) >= 3  # opened, open (agent replied), pending

        await eventually(timeline_has_all_ticket_events)
        assert not any("SECRET" in text for text in seen_by_customer)
        assert "We are on it" in seen_by_customer[1]
        agent_view = (await client.get(f"/tickets/{tid}/messages", headers=AGENT)).json()["items"]
        assert [m["visibility"] for m in agent_view] == ["internal", "public", "internal"]
        assert sum("SECRET" in m["body"] for m in agent_view) == 2

    async def test_a_customer_cannot_write_internal_notes_or_move_status(self, client: httpx.AsyncClient) -> None:
        me = cid()
        tid = (await open_ticket(client, customer(me), customer_id=me))["id"]
        note = {"body": "psst", "visibility": "internal"}
        problem(await client.post(f"/tickets/{tid}/messages", json=note, headers=customer(me)), 403)
        move = {"status": "closed"}
        problem(await client.post(f"/tickets/{tid}/status", json=move, headers=customer(me)), 403)

    async def test_another_customers_ticket_is_404_everywhere(self, client: httpx.AsyncClient) -> None:
        owner, other = cid(), cid()
        tid = (await open_ticket(client, customer(owner), customer_id=owner))["id"]
        reply = {"body": "hello"}
        problem(await client.get(f"/tickets/{tid}", headers=customer(other)), 404)
        problem(await client.get(f"/tickets/{tid}/messages", headers=customer(other)), 404)
        problem(await client.post(f"/tickets/{tid}/messages", json=reply, headers=customer(other)), 404)
        dispute = {"invoice_id": str(uuid.uuid4()), "reason": "x"}
        problem(await client.post(f"/tickets/{tid}/dispute", json=dispute, headers=customer(other)), 404)
        problem(await client.get(f"/customers/{owner}/timeline", headers=customer(other)), 404)
        listed = await client.get(f"/tickets?customer_id={owner}", headers=customer(other))
        assert listed.json()["items"] == []


class TestStatusAndMessages:
    async def test_first_public_agent_reply_meets_first_response(self, client: httpx.AsyncClient) -> None:
        tid = (await open_ticket(client, AGENT))["id"]
        await client.post(f"/tickets/{tid}/messages", json={"body": "n", "visibility": "internal"}, headers=AGENT)
        assert (await client.get(f"/tickets/{tid}", headers=AGENT)).json()["first_response_at"] is None
        await client.post(f"/tickets/{tid}/messages", json={"body": "Hello!"}, headers=AGENT)
        ticket = (await client.get(f"/tickets/{tid}", headers=AGENT)).json()
        assert ticket["first_response_at"] is not None
        assert ticket["status"] == "open"
        assert ticket["sla"]["first_response"]["running"] is False

    async def test_illegal_move_is_409_saying_why(self, client: httpx.AsyncClient) -> None:
        tid = (await open_ticket(client, AGENT))["id"]
        assert (await set_status(client, tid, "closed")).status_code == 200
        body = problem(await set_status(client, tid, "open"), 409)
        assert "closed ticket cannot become open" in body["detail"]
        problem(await client.post(f"/tickets/{tid}/messages", json={"body": "hi"}, headers=AGENT), 409)
        problem(await client.post(f"/tickets/{tid}/assign", json={"agent": "bob"}, headers=AGENT), 409)

    async def test_customer_reply_reopens_a_resolved_ticket(self, client: httpx.AsyncClient, topics: str) -> None:
        me = cid()
        tid = (await open_ticket(client, customer(me), customer_id=me))["id"]
        resolved = await set_status(client, tid, "resolved")
        assert resolved.json()["status"] == "resolved"
        reply = await client.post(f"/tickets/{tid}/messages", json={"body": "Still broken"}, headers=customer(me))
        assert reply.status_code == 201
        assert (await client.get(f"/tickets/{tid}", headers=customer(me))).json()["status"] == "open"
        records = await support_events(topics, ticket_ids={tid}, until=lambda rs: len(rs) >= 3)
        assert [ce_type(r) for r in records] == ["TicketOpened", "TicketResolved", "TicketStatusChanged"]
        assert (data(records[2])["previous_status"], data(records[2])["status"]) == ("resolved", "open")

    async def test_parallel_resolutions_succeed_once(self, client: httpx.AsyncClient, topics: str) -> None:
        tid = (await open_ticket(client, AGENT))["id"]
        responses = await asyncio.gather(*(set_status(client, tid, "resolved") for _ in range(6)))
        assert sorted(r.status_code for r in responses) == [200] + [409] * 5
        assert (await set_status(client, tid, "open")).status_code == 200  # a marker after them, same key
        records = await support_events(
            topics, ticket_ids={tid}, until=lambda rs: any(ce_type(r) == "TicketStatusChanged" for r in rs)
        )
        assert [ce_type(r) for r in records] == ["TicketOpened", "TicketResolved", "TicketStatusChanged"]

    async def test_assign_and_filter_by_assignee(self, client: httpx.AsyncClient) -> None:
        agent = f"agent-{uuid.uuid4().hex[:6]}"
        tid = (await open_ticket(client, AGENT))["id"]
        assigned = await client.post(f"/tickets/{tid}/assign", json={"agent": agent}, headers=AGENT)
        assert assigned.json()["assignee"] == agent
        listed = (await client.get(f"/tickets?assignee={agent}", headers=AGENT)).json()["items"]
        assert [t["id"] for t in listed] == [tid]

    async def test_list_pages_newest_first_without_gaps(self, client: httpx.AsyncClient) -> None:
        me = cid()
        made = [(await open_ticket(client, AGENT, customer_id=me))["id"] for _ in range(5)]
        seen, cursor = [], None
        while True:
            url = f"/tickets?customer_id={me}&limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = (await client.get(url, headers=customer(me))).json()
            seen += [t["id"] for t in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == made[::-1]


class TestSla:
    async def test_job_reports_each_clock_once_and_breached_lists_it(self, client: httpx.AsyncClient) -> None:
        tid = (await open_ticket(client, AGENT, priority="urgent"))["id"]
        as_of = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
        run = await client.post("/jobs/sla", params={"as_of": as_of}, headers=ADMIN)
        assert run.status_code == 200, run.text
        mine = [b for b in run.json()["breaches"] if b["ticket_id"] == tid]
        assert [b["clock"] for b in mine] == ["first_response"]
        again = await client.post("/jobs/sla", params={"as_of": as_of}, headers=ADMIN)
        assert [b for b in again.json()["breaches"] if b["ticket_id"] == tid] == []
        breached = (await client.get("/tickets?breached=true&priority=urgent&limit=200", headers=AGENT)).json()
        assert tid in [t["id"] for t in breached["items"]]
        assert all(t["breached"] for t in breached["items"])
        not_breached = (await client.get("/tickets?breached=false&limit=200", headers=AGENT)).json()
        assert tid not in [t["id"] for t in not_breached["items"]]

    async def test_pending_pauses_the_clocks(self, client: httpx.AsyncClient, topics: str) -> None:
        tid = (await open_ticket(client, AGENT, priority="urgent"))["id"]
        assert (await set_status(client, tid, "pending")).status_code == 200
        later = (datetime.now(UTC) + timedelta(hours=10)).isoformat()
        run = await client.post("/jobs/sla", params={"as_of": later}, headers=ADMIN)
        assert [b for b in run.json()["breaches"] if b["ticket_id"] == tid] == []
        assert (await set_status(client, tid, "open")).status_code == 200
        run = await client.post("/jobs/sla", params={"as_of": later}, headers=ADMIN)
        assert sorted(b["clock"] for b in run.json()["breaches"] if b["ticket_id"] == tid) == [
            "first_response",
            "resolution",
        ]
        records = await support_events(
            topics, ticket_ids={tid}, until=lambda rs: sum(ce_type(r) == "TicketSLABreached" for r in rs) >= 2
        )
        breaches = [data(r) for r in records if ce_type(r) == "TicketSLABreached"]
        assert sorted(b["clock"] for b in breaches) == ["first_response", "resolution"]

    async def test_only_admins_run_the_job(self, client: httpx.AsyncClient) -> None:
        problem(await client.post("/jobs/sla", headers=AGENT), 403)
        problem(await client.post("/jobs/sla", params={"as_of": "2026-01-01T00:00:00"}, headers=ADMIN), 422)

    async def test_report_gives_the_breach_rate_per_priority(self, client: httpx.AsyncClient) -> None:
        start = datetime.now(UTC)
        late = (await open_ticket(client, AGENT, priority="low"))["id"]
        quick = (await open_ticket(client, AGENT, priority="low"))["id"]
        await client.post(f"/tickets/{quick}/messages", json={"body": "Fixed it"}, headers=AGENT)
        await set_status(client, quick, "resolved")
        as_of = (datetime.now(UTC) + timedelta(hours=200)).isoformat()
        run = (await client.post("/jobs/sla", params={"as_of": as_of}, headers=ADMIN)).json()
        assert {b["ticket_id"] for b in run["breaches"]} & {late, quick} == {late}
        report = await client.get("/reports/sla", params={"created_from": start.isoformat()}, headers=AGENT)
        assert report.status_code == 200, report.text
        rows = {r["priority"]: r for r in report.json()["priorities"]}
        assert rows["low"] == {
            "priority": "low",
            "tickets": 2,
            "breached": 1,
            "first_response_breached": 1,
            "resolution_breached": 1,
            "breach_rate_bp": 5000,
        }
        assert rows["urgent"]["tickets"] == 0
        assert report.json()["totals"]["tickets"] == 2
        problem(await client.get("/reports/sla", headers=customer(cid())), 403)
        problem(await client.get("/tickets?breached=true", headers=customer(cid())), 403)


class TestDisputes:
    async def test_dispute_opens_and_resolving_the_ticket_ends_it(self, client: httpx.AsyncClient, topics: str) -> None:
        me, invoice = cid(), str(uuid.uuid4())
        tid = (await open_ticket(client, customer(me), customer_id=me))["id"]
        body = {"invoice_id": invoice, "reason": "Charged twice"}
        opened = await client.post(f"/tickets/{tid}/dispute", json=body, headers=customer(me))
        assert opened.status_code == 201, opened.text
        assert opened.json()["status"] == "open"
        other = (await open_ticket(client, AGENT, customer_id=me))["id"]
        problem(await client.post(f"/tickets/{other}/dispute", json=body, headers=AGENT), 409)
        problem(await client.post(f"/tickets/{tid}/dispute", json=body, headers=AGENT), 409)
        resolved = await set_status(client, tid, "resolved", outcome="refunded duplicate charge")
        assert resolved.json()["disputes"][0]["status"] == "resolved"
        assert resolved.json()["invoice_id"] == invoice
        records = await support_events(topics, ticket_ids={tid}, until=lambda rs: len(rs) >= 4)
        kinds = [ce_type(r) for r in records]
        assert kinds == ["TicketOpened", "DisputeOpened", "TicketResolved", "DisputeResolved"]
        assert data(records[1])["invoice_id"] == invoice
        assert data(records[1])["reason"] == "Charged twice"
        assert data(records[3])["outcome"] == "refunded duplicate charge"
        again = await client.post(f"/tickets/{other}/dispute", json=body, headers=AGENT)
        assert again.status_code == 201, again.text

    async def test_dispute_on_a_closed_ticket_is_409(self, client: httpx.AsyncClient) -> None:
        tid = (await open_ticket(client, AGENT))["id"]
        await set_status(client, tid, "closed")
        body = {"invoice_id": str(uuid.uuid4()), "reason": "late"}
        problem(await client.post(f"/tickets/{tid}/dispute", json=body, headers=AGENT), 409)


class TestTimeline:
    async def test_own_ticket_events_reach_the_customer_timeline(self, client: httpx.AsyncClient) -> None:
        me = cid()
        tid = (await open_ticket(client, customer(me), customer_id=me, subject="Where is my parcel"))["id"]
        await set_status(client, tid, "resolved")

        async def two_items() -> bool:
            r = await client.get(f"/customers/{me}/timeline", headers=customer(me))
            return len(r.json()["items"]) == 2

        await eventually(two_items)
        items = (await client.get(f"/customers/{me}/timeline", headers=AGENT)).json()["items"]
        assert [i["type"] for i in items] == ["TicketResolved", "TicketOpened"]
        assert {i["subject"] for i in items} == {tid}
        assert "Where is my parcel" in items[1]["summary"]
        assert set(items[0]) == {"type", "occurred_at", "subject", "summary"}
