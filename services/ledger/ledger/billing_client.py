"""Asks billing for its own receivable, credit and payable figures (`GET /reports/balances`) over HTTP."""

from __future__ import annotations

import asyncio

import httpx
import structlog
from pydantic import ValidationError

from backoffice.auth import issue_token
from backoffice.errors import Unavailable
from ledger.schemas import BillingBalances
from ledger.settings import Settings

log = structlog.get_logger("billing_client")
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


def _token(settings: Settings) -> str:
    return issue_token(settings.jwt_secret.get_secret_value(), scopes="billing:read", sub="service:ledger", ttl=300)


async def fetch_balances(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> BillingBalances:
    """Billing's figures; retried with backoff on connection errors, timeouts and 5xx; 503 once out of attempts.

    Any other answer that is not a well-formed 200 is also a 503: a comparison against nothing is never "all clear".
    """
    url = settings.billing_url.rstrip("/") + "/reports/balances"
    headers = {"Authorization": f"Bearer {_token(settings)}", "Accept": "application/json"}
    reason = "no attempt made"
    async with httpx.AsyncClient(timeout=settings.billing_timeout_s, transport=transport) as client:
        for attempt in range(settings.billing_attempts):
            if attempt:
                await asyncio.sleep(settings.billing_backoff_s * 2 ** (attempt - 1))
            try:
                response = await client.get(url, headers=headers)
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__} calling billing"
                log.warning("billing_unreachable", attempt=attempt + 1, error=repr(exc))
                continue
            if response.status_code in _RETRY_STATUSES or response.status_code >= 500:
                reason = f"billing answered {response.status_code}"
                log.warning("billing_unavailable", attempt=attempt + 1, status=response.status_code)
                continue
            if response.status_code != 200:
                raise Unavailable(
                    f"billing refused the balances request ({response.status_code}); reconciliation is not possible"
                )
            try:
                return BillingBalances.model_validate_json(response.content)
            except ValidationError as exc:
                log.warning("billing_bad_answer", error=str(exc)[:500])
                raise Unavailable("billing answered with an unexpected body; reconciliation is not possible") from exc
    raise Unavailable(f"billing is unavailable ({reason}, {settings.billing_attempts} attempts); try again later")
