"""The demo's HTTP side: one client per service, clear errors, Idempotency-Keys, bounded polling."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from backoffice.auth import issue_token
from backoffice.settings import DEV_JWT_SECRET

T = TypeVar("T")
SERVICES = ("orders", "billing", "support", "ledger")
DEFAULT_URLS = {"orders": 8001, "support": 8002, "billing": 8003, "ledger": 8004}
SCOPES = " ".join(
    [f"{s}:{a}" for s in ("orders", "support", "billing", "ledger") for a in ("read", "write")]
    + ["inventory:write", "support:admin", "billing:admin"]
)


class DemoError(Exception):
    """Something the operator must fix (a service down, a refused request): the message says what."""


@dataclass(frozen=True)
class Urls:
    orders: str = f"http://127.0.0.1:{DEFAULT_URLS['orders']}"
    billing: str = f"http://127.0.0.1:{DEFAULT_URLS['billing']}"
    support: str = f"http://127.0.0.1:{DEFAULT_URLS['support']}"
    ledger: str = f"http://127.0.0.1:{DEFAULT_URLS['ledger']}"

    def of(self, service: str) -> str:
        return str(getattr(self, service)).rstrip("/")


def staff_token(sub: str = "backoffice-demo", ttl: int = 3600) -> str:
    """A staff token with every scope the demo uses, signed with BACKOFFICE_JWT_SECRET (or the dev default)."""
    secret = os.environ.get("BACKOFFICE_JWT_SECRET", DEV_JWT_SECRET)
    return issue_token(secret, scopes=SCOPES, sub=sub, ttl=ttl)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        text = str(body.get("detail") or body.get("title") or body)
        errors = body.get("errors")
        return f"{text} {errors}" if errors else text
    return str(body)[:300]


class Api:
    """One service's API: JSON in and out, a problem or an unreachable service raised as a DemoError."""

    def __init__(self, name: str, base_url: str, token: str, *, run: str, timeout: float = 30.0) -> None:
        self.name = name
        self.base_url = base_url
        self.run = run
        self._keys = 0
        self.client = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def unreachable(self, exc: Exception) -> DemoError:
        return DemoError(
            f"{self.name} is not reachable at {self.base_url} ({type(exc).__name__}: {exc or 'no answer'}). "
            f"Start the platform (`make run`) or point --{self.name}-url at it."
        )

    async def ready(self) -> None:
        try:
            response = await self.client.get("/readyz", timeout=5.0)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from exc
        if response.status_code != 200:
            raise DemoError(
                f"{self.name} at {self.base_url} is not ready ({response.status_code}): {_detail(response)}"
            )

    def key(self, what: str) -> str:
        """An Idempotency-Key unique to this run and step: a retried request is applied once."""
        self._keys += 1
        return f"demo-{self.run}-{self.name}-{self._keys}-{what}"[:200]

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        key: str | None = None,
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        headers = {"Idempotency-Key": key} if key else {}
        for attempt in range(4):
            try:
                response = await self.client.request(method, path, json=body, params=params, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise self.unreachable(exc) from exc
            except httpx.TransportError as exc:
                if key is None or attempt == 3:  # only a keyed request is safe to send again
                    raise self.unreachable(exc) from exc
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if response.status_code == 409 and key is not None and attempt < 3 and "progress" in response.text:
                await asyncio.sleep(0.5 * (attempt + 1))  # the same key still in flight
                continue
            if response.status_code not in expect:
                raise DemoError(f"{self.name}: {method} {path} answered {response.status_code}: {_detail(response)}")
            return response.json() if response.content else None
        raise DemoError(f"{self.name}: {method} {path} did not complete")  # pragma: no cover

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    async def post(
        self, path: str, body: Any = None, *, what: str = "post", params: dict[str, Any] | None = None
    ) -> Any:
        return await self.request("POST", path, body=body, params=params, key=self.key(what))

    async def put(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body=body)

    async def items(self, path: str, **params: Any) -> list[Any]:
        """Every item of a paginated list."""
        found: list[Any] = []
        cursor = None
        while True:
            page = await self.get(path, limit=200, cursor=cursor, **params)
            found += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return found


async def until(
    fetch: Callable[[], Awaitable[T]], check: Callable[[T], bool], *, timeout: float, what: str, interval: float = 0.3
) -> T:
    """Poll `fetch` until `check` holds, at most `timeout` seconds; a DemoError naming `what` after that."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if check(value):
            return value
        if time.monotonic() >= deadline:
            raise DemoError(f"gave up after {timeout:.0f}s waiting for {what} (are the services consuming events?)")
        await asyncio.sleep(interval)


def money(minor: int, currency: str = "") -> str:
    """Minor units as a decimal string, exactly (no floats): 123456 -> 1,234.56."""
    sign = "-" if minor < 0 else ""
    major, cents = divmod(abs(minor), 100)
    return f"{sign}{major:,}.{cents:02d}" + (f" {currency}" if currency else "")
