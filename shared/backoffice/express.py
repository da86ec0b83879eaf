"""The express lane: the usual case of a busy route answered without FastAPI's routing, dependencies and body handling.

Profiled under load (py-spy, `make bench --profile orders`), a `POST /orders` spent about a third of its CPU
between the middleware and the endpoint: Starlette's exception middleware, matching the route among all the
others, solving the dependency graph (the bearer token, the principal), reading and validating the body, wrapping
the answer. None of it decides anything for a request that will be answered 201.

`Lanes` is an ASGI middleware placed innermost, inside Correlation, BodyLimit and CORS (so the correlation id, the
metrics, the body limit and CORS headers are the same whichever way a request goes) and just outside FastAPI's
exception handling and router. For a request to one of its routes whose body is JSON of a stated length, it reads
the body and calls the route's express handler, which either answers it (a `Response`) or returns None: then the
request goes on to FastAPI, body included, and the route's endpoint runs as it always does. That gives every answer
the lane does not give itself (a missing token, a validation error, a backorder, ...), so the two can only differ
in speed. The endpoint can tell (`tried`) that the lane has already tried its own shortcut, and not try it again.

An error the handler raises is answered as FastAPI would answer it (`problems.render`), never passed on: a write
may have been attempted, and going on would attempt it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backoffice import problems

Handler = Callable[[Request], Awaitable[Response | None]]
TRIED = "backoffice.express_tried"


def tried(request: Request) -> bool:
    """Whether the express lane already tried this request and passed it on."""
    return bool(request.scope.get(TRIED))


class Lanes:
    """Serve `(method, path)` requests through their express handler first; see the module's documentation.

    A path is the route's, and may have `{name}` segments: the handler finds them in `request.path_params` (as
    strings, unconverted: the handler checks them as strictly as the route would, or passes the request on).
    """

    def __init__(self, app: ASGIApp, lanes: Mapping[tuple[str, str], Handler]) -> None:
        self.app = app
        self.lanes = [(method, path, compile_path(path)[0], handler) for (method, path), handler in lanes.items()]
        self._routes: dict[tuple[str, str], Any] = {}

    def _match(self, scope: Scope) -> tuple[str, dict[str, str], Handler] | None:
        """The route path, path parameters and handler of the lane for this request, if one is for it."""
        if scope["type"] != "http":
            return None
        for method, template, pattern, handler in self.lanes:
            if method == scope["method"] and (found := pattern.match(scope["path"])) is not None:
                return template, found.groupdict(), handler
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope)
        if matched is None or not _json_of_stated_length(scope):
            await self.app(scope, receive, send)
            return
        template, scope["path_params"], handler = matched
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        request = Request(scope, _replay(body, receive))
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - answered as the app's exception handlers answer it
            response = await problems.render(request, exc)
        if response is None:
            scope[TRIED] = True
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = self._route(scope, template)  # for the metrics, as FastAPI would have set it
        await response(scope, receive, send)

    def _route(self, scope: Scope, template: str) -> Any:
        """The app's route this lane stands in front of (None when the app has none)."""
        key = (scope["method"], template)
        if key not in self._routes:
            app = scope.get("app")
            routes = getattr(getattr(app, "router", None), "routes", ())
            self._routes[key] = next(
                (r for r in routes if isinstance(r, APIRoute) and r.path == key[1] and key[0] in (r.methods or ())),
                None,
            )
        return self._routes[key]


def _json_of_stated_length(scope: Scope) -> bool:
    """A body with a Content-Length (BodyLimit has refused it if too long) and a JSON content type."""
    length = json = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = True
        elif name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            json = media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
    return length and json


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` (already read) and then whatever comes next, a disconnect."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
