"""ASGI middleware: body size limit (413), correlation and trace context, request metrics."""

from __future__ import annotations

import time
from typing import Any

import orjson
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backoffice import context

MAX_BODY = 1024 * 1024

REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def _problem_413() -> bytes:
    return orjson.dumps(
        {
            "type": "https://backoffice.dev/problems/content-too-large",
            "title": "Content too large",
            "status": 413,
            "detail": f"the request body is over {MAX_BODY} bytes",
        }
    )


class _TooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit: an HTTPException, so that FastAPI, which turns
    any other error while reading a body into a 400, lets it through to the problem handlers as a 413."""

    def __init__(self, max_body: int) -> None:
        super().__init__(413, f"the request body is over {max_body} bytes")


class BodyLimit:
    """Refuse bodies over 1 MiB with 413, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                await _send_413(send)
                return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await _send_413(send)


async def _send_413(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/problem+json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": _problem_413()})


class Correlation:
    """Bind `X-Correlation-ID` (or a new one) and `traceparent` for logs and events; echo the id back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation = parent = None
        for name, value in scope.get("headers", ()):  # ASGI servers give header names in lower case
            if name == b"x-correlation-id":
                correlation = value.decode("latin-1")
            elif name == b"traceparent":
                parent = value.decode("latin-1")
        cid = context.bind(correlation=correlation, parent=parent)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            count, latency = _metrics(scope["method"], _route(scope), status)
            count.inc()
            latency.observe(time.perf_counter() - started)


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _metrics(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter and latency histogram of (method, route, status), looked up once (`labels` takes a lock
    and builds its key on every call)."""
    key = (method, route, status)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route))
    return found


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
