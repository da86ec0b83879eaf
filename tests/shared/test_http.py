"""The HTTP conventions every service gets from `create_service_app`, shown on a tiny app built here."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
import pytest
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from backoffice import idempotency, outbox
from backoffice.auth import Principal, require
from backoffice.envelope import header_map
from backoffice.events import OrderConfirmed
from backoffice.pagination import Cursor, Limit, Page, decode_cursor, page
from backoffice.service import ServiceSpec, create_service_app
from backoffice.settings import DEV_JWT_SECRET, ServiceSettings
from tests.conftest import BOOTSTRAP, auth, read_topic, running, token


class WidgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=50)
    quantity: int = Field(gt=0)
    customer_id: str


def _router() -> APIRouter:
    router = APIRouter()

    @router.post("/widgets", status_code=201)
    async def create(
        body: WidgetIn, request: Request, principal: Annotated[Principal, Depends(require("widgets:write"))]
    ) -> Any:
        async def op(conn: Any) -> tuple[int, Any]:
            await asyncio.sleep(0.05)
            row = await conn.fetchrow(
                "INSERT INTO widgets (id, name, quantity, customer_id) VALUES ($1, $2, $3, $4) RETURNING *",
                uuid.uuid4(),
                body.name,
                body.quantity,
                body.customer_id,
            )
            return 201, {**dict(row), "id": str(row["id"])}

        return await idempotency.run(
            request,
            pool=request.app.state.pool,
            principal=principal,
            operation=op,
            required=request.query_params.get("strict") == "1",
        )

    @router.post("/slow-widgets", status_code=201)
    async def create_slowly(
        request: Request, principal: Annotated[Principal, Depends(require("widgets:write"))]
    ) -> Any:
        async def op(conn: Any) -> tuple[int, Any]:
            await asyncio.sleep(1.5)
            return 201, {"ok": True}

        return await idempotency.run(
            request, pool=request.app.state.pool, principal=principal, operation=op, wait_s=0.3
        )

    @router.post("/confirmations", status_code=201)
    async def confirm(request: Request, principal: Annotated[Principal, Depends(require("widgets:write"))]) -> Any:
        async def op(conn: Any) -> tuple[int, Any]:
            envelope = await outbox.append(
                conn, OrderConfirmed(order_id=f"corr-{uuid.uuid4()}", customer_id="c", confirmed_at=datetime.now(UTC))
            )
            return 201, {"event_id": envelope.id}

        return await idempotency.run(request, pool=request.app.state.pool, principal=principal, operation=op)

    @router.get("/widgets")
    async def list_widgets(
        request: Request,
        principal: Annotated[Principal, Depends(require("widgets:read"))],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> Page[dict[str, Any]]:
        after = decode_cursor(cursor)
        customer = principal.scope_customer(None)
        rows = await request.app.state.pool.fetch(
            "SELECT seq, name, customer_id FROM widgets WHERE ($1::bigint IS NULL OR seq > $1) "
            "AND ($2::text IS NULL OR customer_id = $2) ORDER BY seq LIMIT $3",
            after[0] if after else None,
            customer,
            limit + 1,
        )
        return page([dict(r) for r in rows], limit=limit, key=lambda r: [r["seq"]])

    @router.get("/widgets/{widget_id}")
    async def get_widget(
        widget_id: uuid.UUID, request: Request, principal: Annotated[Principal, Depends(require("widgets:read"))]
    ) -> dict[str, Any]:
        row = await request.app.state.pool.fetchrow("SELECT * FROM widgets WHERE id = $1", widget_id)
        if row is None:
            from backoffice.errors import NotFound

            raise NotFound("widget not found")
        principal.ensure_visible(row["customer_id"], what="widget")
        return {"id": str(row["id"]), "name": row["name"]}

    return router


@pytest.fixture(scope="module")
async def client(
    tmp_path_factory: pytest.TempPathFactory, make_database: Callable[[str], Awaitable[str]], topics: str
) -> AsyncIterator[httpx.AsyncClient]:
    migrations = Path(tmp_path_factory.mktemp("widgets"))
    (migrations / "0001_widgets.sql").write_text(
        "CREATE TABLE widgets (seq bigserial, id uuid PRIMARY KEY, name text NOT NULL, quantity int NOT NULL,"
        " customer_id text NOT NULL);"
    )
    settings = ServiceSettings(
        service_name="widgets",
        database_url=await make_database("widgets"),
        kafka_bootstrap_servers=BOOTSTRAP,
        topic_prefix=topics,
        cors_origins=["https://shop.example"],
    )
    app = create_service_app(
        ServiceSpec(settings=settings, routers=[_router()], migrations=migrations, title="widgets")
    )
    async with running(app) as http:
        yield http


WRITE = auth("widgets:write widgets:read")


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


class TestProblems:
    async def test_validation_errors_name_each_field(self, client: httpx.AsyncClient) -> None:
        body = _problem(
            await client.post("/widgets", json={"name": "", "quantity": 0, "customer_id": "c"}, headers=WRITE), 422
        )
        fields = {e["field"] for e in body["errors"]}
        assert fields == {"body.name", "body.quantity"}

    async def test_unknown_fields_are_refused(self, client: httpx.AsyncClient) -> None:
        body = _problem(
            await client.post(
                "/widgets", json={"name": "a", "quantity": 1, "customer_id": "c", "status": "paid"}, headers=WRITE
            ),
            422,
        )
        assert any(e["field"] == "body.status" for e in body["errors"])

    async def test_malformed_json_is_a_problem_not_a_500(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/widgets", content=b"{nope", headers={**WRITE, "content-type": "application/json"}
        )
        _problem(response, 422)

    async def test_bodies_over_one_mebibyte_get_413(self, client: httpx.AsyncClient) -> None:
        big = {"name": "x" * (1024 * 1024 + 10), "quantity": 1, "customer_id": "c"}
        _problem(await client.post("/widgets", json=big, headers=WRITE), 413)

    async def test_unknown_route_is_a_problem(self, client: httpx.AsyncClient) -> None:
        _problem(await client.get("/nothing-here"), 404)

    async def test_page_size_above_the_maximum_is_422(self, client: httpx.AsyncClient) -> None:
        body = _problem(await client.get("/widgets?limit=201", headers=WRITE), 422)
        assert body["errors"][0]["field"] == "query.limit"

    async def test_a_forged_cursor_is_422_naming_the_cursor(self, client: httpx.AsyncClient) -> None:
        body = _problem(await client.get("/widgets?cursor=%%%%", headers=WRITE), 422)
        assert body["errors"][0]["field"] == "query.cursor"


class TestAuth:
    async def test_no_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/widgets")
        _problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"

    async def test_expired_token_is_401(self, client: httpx.AsyncClient) -> None:
        claims = {"sub": "a", "scope": "widgets:read", "exp": int(time.time()) - 10}
        expired = jwt.encode(claims, DEV_JWT_SECRET, algorithm="HS256")
        _problem(await client.get("/widgets", headers={"Authorization": f"Bearer {expired}"}), 401)

    async def test_tampered_token_is_401(self, client: httpx.AsyncClient) -> None:
        good = token("widgets:read")
        head, _payload, sig = good.split(".")
        forged_payload = jwt.utils.base64url_encode(
            b'{"sub":"a","scope":"widgets:read widgets:write","exp":9999999999}'
        ).decode()
        _problem(await client.get("/widgets", headers={"Authorization": f"Bearer {head}.{forged_payload}.{sig}"}), 401)

    async def test_alg_none_token_is_401(self, client: httpx.AsyncClient) -> None:
        unsigned = jwt.encode({"sub": "a", "scope": "widgets:read", "exp": 9999999999}, None, algorithm="none")
        _problem(await client.get("/widgets", headers={"Authorization": f"Bearer {unsigned}"}), 401)

    async def test_token_signed_with_another_secret_is_401(self, client: httpx.AsyncClient) -> None:
        other = jwt.encode({"sub": "a", "scope": "widgets:read", "exp": 9999999999}, "x" * 40, algorithm="HS256")
        _problem(await client.get("/widgets", headers={"Authorization": f"Bearer {other}"}), 401)

    async def test_missing_scope_is_403(self, client: httpx.AsyncClient) -> None:
        _problem(await client.get("/widgets", headers=auth("orders:read")), 403)

    async def test_another_customers_resource_is_404(self, client: httpx.AsyncClient) -> None:
        created = await client.post(
            "/widgets", json={"name": "a", "quantity": 1, "customer_id": "cust-a"}, headers=WRITE
        )
        wid = created.json()["id"]
        own = await client.get(f"/widgets/{wid}", headers=auth("widgets:read", customer_id="cust-a"))
        assert own.status_code == 200
        _problem(await client.get(f"/widgets/{wid}", headers=auth("widgets:read", customer_id="cust-b")), 404)

    async def test_a_customer_lists_only_their_own(self, client: httpx.AsyncClient) -> None:
        for customer in ("list-a", "list-b"):
            await client.post("/widgets", json={"name": "w", "quantity": 1, "customer_id": customer}, headers=WRITE)
        listed = await client.get("/widgets?limit=200", headers=auth("widgets:read", customer_id="list-b"))
        assert {w["customer_id"] for w in listed.json()["items"]} == {"list-b"}


class TestIdempotency:
    async def test_fifty_parallel_requests_with_one_key_make_one_effect_and_identical_answers(
        self, client: httpx.AsyncClient
    ) -> None:
        key = str(uuid.uuid4())
        body = {"name": "once", "quantity": 3, "customer_id": f"idem-{key}"}
        responses = await asyncio.gather(
            *(client.post("/widgets", json=body, headers={**WRITE, "Idempotency-Key": key}) for _ in range(50))
        )
        assert {r.status_code for r in responses} == {201}
        assert len({r.content for r in responses}) == 1
        listed = await client.get("/widgets?limit=200", headers=auth("widgets:read", customer_id=f"idem-{key}"))
        assert len(listed.json()["items"]) == 1

    async def test_same_key_with_another_body_is_422(self, client: httpx.AsyncClient) -> None:
        headers = {**WRITE, "Idempotency-Key": str(uuid.uuid4())}
        first = await client.post("/widgets", json={"name": "a", "quantity": 1, "customer_id": "c"}, headers=headers)
        assert first.status_code == 201
        _problem(
            await client.post("/widgets", json={"name": "b", "quantity": 1, "customer_id": "c"}, headers=headers), 422
        )

    async def test_keys_are_scoped_to_the_caller(self, client: httpx.AsyncClient) -> None:
        key = str(uuid.uuid4())
        body = {"name": "scoped", "quantity": 1, "customer_id": "c"}
        a = await client.post(
            "/widgets", json=body, headers={**auth("widgets:write", sub="alice"), "Idempotency-Key": key}
        )
        b = await client.post(
            "/widgets", json=body, headers={**auth("widgets:write", sub="bob"), "Idempotency-Key": key}
        )
        assert a.status_code == b.status_code == 201
        assert a.json()["id"] != b.json()["id"]

    async def test_a_required_key_missing_is_400(self, client: httpx.AsyncClient) -> None:
        body = _problem(
            await client.post(
                "/widgets?strict=1", json={"name": "a", "quantity": 1, "customer_id": "c"}, headers=WRITE
            ),
            400,
        )
        assert body["errors"][0]["field"] == "header.Idempotency-Key"


class TestPlumbing:
    async def test_pagination_walks_every_row_once(self, client: httpx.AsyncClient) -> None:
        customer = f"page-{uuid.uuid4()}"
        for i in range(7):
            await client.post("/widgets", json={"name": f"w{i}", "quantity": 1, "customer_id": customer}, headers=WRITE)
        seen, cursor = [], None
        while True:
            url = "/widgets?limit=3" + (f"&cursor={cursor}" if cursor else "")
            body = (await client.get(url, headers=auth("widgets:read", customer_id=customer))).json()
            seen += [w["name"] for w in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"w{i}" for i in range(7)]

    async def test_correlation_id_is_echoed_or_made(self, client: httpx.AsyncClient) -> None:
        echoed = await client.get("/livez", headers={"X-Correlation-ID": "abc-123"})
        made = await client.get("/livez")
        assert echoed.headers["x-correlation-id"] == "abc-123"
        uuid.UUID(made.headers["x-correlation-id"])

    async def test_cors_allows_only_configured_origins(self, client: httpx.AsyncClient) -> None:
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        allowed = await client.options("/widgets", headers={"Origin": "https://shop.example", **pre})
        denied = await client.options("/widgets", headers={"Origin": "https://evil.example", **pre})
        assert allowed.headers.get("access-control-allow-origin") == "https://shop.example"
        assert "access-control-allow-origin" not in denied.headers

    async def test_health_and_metrics(self, client: httpx.AsyncClient) -> None:
        assert (await client.get("/livez")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "kafka": "ok"}
        metrics = await client.get("/metrics")
        assert "http_requests_total" in metrics.text
        assert "outbox_oldest_unsent_age_seconds" in metrics.text


class TestInFlight:
    async def test_a_duplicate_while_the_first_is_still_running_gets_409(self, client: httpx.AsyncClient) -> None:
        headers = {**WRITE, "Idempotency-Key": str(uuid.uuid4())}
        first = asyncio.create_task(client.post("/slow-widgets", headers=headers))
        await asyncio.sleep(0.4)
        second = await client.post("/slow-widgets", headers=headers)
        _problem(second, 409)
        assert (await first).status_code == 201
        third = await client.post("/slow-widgets", headers=headers)
        assert third.status_code == 201
        assert third.headers["idempotent-replayed"] == "true"


class TestCorrelation:
    async def test_the_request_correlation_and_trace_reach_the_event(
        self, client: httpx.AsyncClient, topics: str
    ) -> None:
        trace = "0af7651916cd43dd8448eb211c80319c"
        response = await client.post(
            "/confirmations",
            headers={
                **WRITE,
                "X-Correlation-ID": "corr-from-request",
                "traceparent": f"00-{trace}-b7ad6b7169203331-01",
            },
        )
        event_id = response.json()["event_id"]
        records = await read_topic(
            f"{topics}orders.events", until=lambda rs: any(header_map(r.headers)["ce_id"] == event_id for r in rs)
        )
        h = header_map(next(r for r in records if header_map(r.headers)["ce_id"] == event_id).headers)
        assert h["ce_correlationid"] == "corr-from-request"
        assert h["traceparent"].split("-")[1] == trace
