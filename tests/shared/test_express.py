"""The express lane (`backoffice.express`): it answers its route's usual case itself, and hands every other request
on to FastAPI, body included, so that the route answers exactly as it would without the lane."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from backoffice import express, middleware, problems
from backoffice.errors import Conflict


class Thing(BaseModel):
    name: str = Field(min_length=1)
    count: int = Field(gt=0)


def _app(handler: express.Handler, calls: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.add_middleware(express.Lanes, lanes={("POST", "/things"): handler})
    app.add_middleware(middleware.BodyLimit)
    app.add_middleware(middleware.Correlation)

    @app.post("/things", status_code=201)
    async def create(body: Thing, request: Request) -> dict[str, Any]:
        calls.append({"body": body.model_dump(), "tried": express.tried(request)})
        return {"by": "route", **body.model_dump()}

    @app.get("/things")
    async def listed(request: Request) -> dict[str, Any]:
        calls.append({"tried": express.tried(request)})
        return {"by": "route"}

    return app


async def _express_answers(request: Request) -> Response | None:
    body = Thing.model_validate_json(await request.body()) if b'"pass"' not in await request.body() else None
    if body is None:
        return None
    return Response(orjson.dumps({"by": "lane", **body.model_dump()}), status_code=201, media_type="application/json")


async def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _requests_counted(route: str, status: str) -> float:
    return middleware.REQUESTS.labels("POST", route, status)._value.get()


class TestTheLane:
    async def test_the_usual_case_is_answered_by_the_lane_with_the_correlation_id_and_the_route_metrics(self) -> None:
        calls: list[dict[str, Any]] = []
        before = _requests_counted("/things", "201")
        async with await _client(_app(_express_answers, calls)) as client:
            response = await client.post(
                "/things", json={"name": "a", "count": 2}, headers={"X-Correlation-ID": "corr-1"}
            )
        assert response.status_code == 201
        assert response.json() == {"by": "lane", "name": "a", "count": 2}
        assert response.headers["x-correlation-id"] == "corr-1"
        assert response.headers["content-type"] == "application/json"
        assert calls == []
        assert _requests_counted("/things", "201") == before + 1

    async def test_a_request_the_lane_passes_on_reaches_the_route_with_its_body_and_knows_it_was_tried(self) -> None:
        calls: list[dict[str, Any]] = []
        async with await _client(_app(_express_answers, calls)) as client:
            response = await client.post("/things", json={"name": "pass", "count": 3})
        assert response.status_code == 201
        assert response.json() == {"by": "route", "name": "pass", "count": 3}
        assert calls == [{"body": {"name": "pass", "count": 3}, "tried": True}]
        assert response.headers["x-correlation-id"]

    async def test_the_route_still_gives_its_own_validation_error_for_what_the_lane_passes_on(self) -> None:
        async def lenient(request: Request) -> Response | None:
            return None

        calls: list[dict[str, Any]] = []
        async with await _client(_app(lenient, calls)) as client:
            response = await client.post("/things", json={"name": "", "count": 0})
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert {e["field"] for e in response.json()["errors"]} == {"body.name", "body.count"}

    @pytest.mark.parametrize(
        ("error", "status"), [(Conflict("busy with the same key"), 409), (RuntimeError("boom"), 500)]
    )
    async def test_an_error_in_the_lane_is_answered_as_problem_json_and_not_handed_on(
        self, error: Exception, status: int
    ) -> None:
        async def failing(request: Request) -> Response | None:
            raise error

        calls: list[dict[str, Any]] = []
        async with await _client(_app(failing, calls)) as client:
            response = await client.post("/things", json={"name": "a", "count": 1})
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
        assert calls == []  # a write may have been attempted: never a second time

    async def test_a_lane_with_a_path_parameter_gives_it_to_its_handler_and_matches_only_its_own_paths(self) -> None:
        seen: list[dict[str, str]] = []

        async def nested(request: Request) -> Response | None:
            seen.append(dict(request.path_params))
            return Response(b"{}", status_code=201, media_type="application/json")

        app = FastAPI()
        app.add_middleware(express.Lanes, lanes={("POST", "/things/{thing_id}/parts"): nested})

        @app.post("/{anything:path}")
        async def fallback(anything: str) -> dict[str, str]:
            return {"route": anything}

        async with await _client(app) as client:
            assert (await client.post("/things/t-1/parts", json={})).status_code == 201
            for other in ("/things/t-1/parts/x", "/things//parts", "/things/t-1/bits", "/thing/t-1/parts"):
                response = await client.post(other, json={})
                assert response.json() == {"route": other.lstrip("/")}, other
        assert seen == [{"thing_id": "t-1"}]

    async def test_other_methods_bodies_without_json_or_length_and_oversized_bodies_never_enter_the_lane(
        self,
    ) -> None:
        entered: list[str] = []

        async def watching(request: Request) -> Response | None:
            entered.append(request.method)
            return None

        calls: list[dict[str, Any]] = []
        async with await _client(_app(watching, calls)) as client:
            assert (await client.get("/things")).status_code == 200
            text = await client.post(
                "/things", content=b'{"name": "a", "count": 1}', headers={"content-type": "text/plain"}
            )
            assert text.status_code == 422

            async def stream() -> Any:
                yield b'{"name": "s", '
                yield b'"count": 1}'

            streamed = await client.post("/things", content=stream(), headers={"content-type": "application/json"})
            assert streamed.status_code == 201 and streamed.json()["by"] == "route"
            big = await client.post(
                "/things", content=b"x" * (middleware.MAX_BODY + 1), headers={"content-type": "application/json"}
            )
            assert big.status_code == 413
        assert entered == []
        assert [c["tried"] for c in calls] == [False, False]
