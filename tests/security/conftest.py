"""The four services as the security tests see them: how to build each app, and every scope each one knows."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from backoffice.settings import ServiceSettings
from tests.conftest import BOOTSTRAP, running, topics_fixture


@dataclass(frozen=True)
class Service:
    name: str
    scopes: str

    def create_app(self, settings: ServiceSettings) -> FastAPI:
        module = __import__(f"{self.name}.app", fromlist=["create_app"])
        app: FastAPI = module.create_app(settings)
        return app

    def settings(self, **values: Any) -> ServiceSettings:
        module = __import__(f"{self.name}.settings", fromlist=["Settings"])
        settings: ServiceSettings = module.Settings(**values)
        return settings


SERVICES = {
    "orders": Service("orders", "orders:read orders:write inventory:write"),
    "billing": Service("billing", "billing:read billing:write billing:admin"),
    "ledger": Service("ledger", "ledger:read ledger:write"),
    "support": Service("support", "support:read support:write support:admin"),
}

topics = topics_fixture("security")
SCHEMATHESIS_CASES: Counter[str] = Counter()

# Routes every service has that need no token: health, metrics and the API documents.
PUBLIC = frozenset({"/livez", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class _Balances(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = orjson.dumps({"as_of": datetime.now(UTC), "receivables": [], "customer_credit": [], "payables": []})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def billing_balances() -> Iterator[str]:
    """A stand-in for billing's `GET /reports/balances` (nothing owed) on a loopback port; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Balances)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def service_app(
    service: Service,
    *,
    make_database: Callable[[str], Awaitable[str]],
    topics: str,
    database: str,
    billing_url: str = "http://127.0.0.1:9",
) -> FastAPI:
    """A fresh app of `service` on its own database, on the folder's topics (its lifespan not yet started)."""
    extra: dict[str, Any] = {}
    if service.name == "ledger":
        # Reconciliation asks billing over HTTP: once, quickly, at `billing_url`.
        extra = {"billing_url": billing_url, "billing_attempts": 1, "billing_timeout_s": 2.0}
    settings = service.settings(
        database_url=await make_database(database),
        kafka_bootstrap_servers=BOOTSTRAP,
        topic_prefix=topics,
        outbox_poll_interval_s=0.2,
        **extra,
    )
    return service.create_app(settings)


def api_routes(app: FastAPI) -> list[tuple[str, str, APIRoute]]:
    """Every (method, path, route) of the app but the public ones."""
    out = []
    for context in iter_route_contexts(app.routes):  # included routers' routes, with their prefixes
        route = context.route
        if isinstance(route, APIRoute) and route.path not in PUBLIC:
            out += [(method, route.path, route) for method in sorted(route.methods - {"HEAD"})]
    return out


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SCHEMATHESIS_CASES:
        counts = ", ".join(f"{name} {n}" for name, n in SCHEMATHESIS_CASES.items())
        terminalreporter.write_line(f"schemathesis cases run: {counts} (total {SCHEMATHESIS_CASES.total()})")


topics = topics_fixture("security")


@dataclass
class Platform:
    """The four services running (lifespan and all) on fresh databases; `http[name]` calls one in process."""

    apps: dict[str, FastAPI]
    http: dict[str, httpx.AsyncClient]


@pytest.fixture(scope="package")
async def platform(make_database: Callable[[str], Awaitable[str]], topics: str) -> AsyncIterator[Platform]:
    async with AsyncExitStack() as stack:
        apps, http = {}, {}
        for name, service in SERVICES.items():
            apps[name] = await service_app(service, make_database=make_database, topics=topics, database=f"sec_{name}")
            http[name] = await stack.enter_async_context(running(apps[name]))
        yield Platform(apps, http)
