"""JWT bearer auth: HS256 with the shared secret, RS256 through a JWKS URL; scopes per route; customer principals."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backoffice.errors import Forbidden, NotFound, Unauthorized
from backoffice.settings import ServiceSettings

_bearer = HTTPBearer(auto_error=False, description="A JWT with `sub`, `exp`, `scope` and optionally `customer_id`")


@dataclass(frozen=True)
class Principal:
    sub: str
    scopes: frozenset[str]
    customer_id: str | None = None

    @property
    def is_customer(self) -> bool:
        return self.customer_id is not None

    def can_see(self, customer_id: str | None) -> bool:
        return self.customer_id is None or self.customer_id == customer_id

    def ensure_visible(self, customer_id: str | None, *, what: str = "resource") -> None:
        """A customer asking for another customer's resource learns only that it is not found."""
        if not self.can_see(customer_id):
            raise NotFound(f"{what} not found")

    def scope_customer(self, requested: str | None) -> str | None:
        """The customer filter a list query must use: a customer only ever lists their own."""
        if self.customer_id is None:
            return requested
        return self.customer_id


class Verifier:
    """Checks tokens: signature, algorithm, expiry; HS256 always, RS256 when a JWKS URL is configured."""

    CACHE_SIZE = 4096

    def __init__(self, settings: ServiceSettings) -> None:
        self.secret = settings.jwt_secret.get_secret_value()
        self.jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True) if settings.jwks_url else None
        self._verified: dict[str, tuple[Principal, float]] = {}  # HS256 token -> (principal, exp)

    def verify(self, token: str) -> Principal:
        """The token's principal; an HS256 token already verified is only checked for expiry again."""
        known = self._verified.get(token)
        if known is not None and known[1] > time.time():
            return known[0]
        principal, exp, alg = self._verify(token)
        if alg == "HS256" and isinstance(exp, int | float):
            if len(self._verified) >= self.CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = (principal, float(exp))
        return principal

    def _verify(self, token: str) -> tuple[Principal, Any, str]:
        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            if alg == "HS256":
                claims = jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
            elif alg == "RS256" and self.jwks is not None:
                key = self.jwks.get_signing_key_from_jwt(token).key
                claims = jwt.decode(
                    token, key, algorithms=["RS256"], options={"require": ["exp", "sub"], "verify_aud": False}
                )
            else:
                raise Unauthorized("token algorithm is not accepted")
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("token is not valid") from exc
        scope = claims.get("scope", "")
        customer = claims.get("customer_id")
        if not isinstance(scope, str) or (customer is not None and not isinstance(customer, str)):
            raise Unauthorized("token claims are malformed")
        principal = Principal(sub=str(claims["sub"]), scopes=frozenset(scope.split()), customer_id=customer)
        return principal, claims.get("exp"), alg


def issue_token(
    secret: str, *, scopes: str, sub: str | None = None, customer_id: str | None = None, ttl: int = 3600
) -> str:
    """A development HS256 token."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub or (f"customer:{customer_id}" if customer_id else f"dev:{uuid.uuid4()}"),
        "scope": scopes,
        "iat": now,
        "exp": now + ttl,
    }
    if customer_id:
        claims["customer_id"] = customer_id
    return jwt.encode(claims, secret, algorithm="HS256")


def require(*scopes: str, staff_only: bool = False) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency giving the caller's principal, after checking it holds any one of `scopes`.

    With `staff_only`, a customer token is refused too, before anything else about the request is looked at.
    """

    async def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        token = credentials.credentials if credentials is not None and credentials.scheme.lower() == "bearer" else None
        return _authorize(request, token, scopes, staff_only)

    return dependency


def principal_of(request: Request, *scopes: str, staff_only: bool = False) -> Principal:
    """What `require(*scopes, staff_only=...)` gives for this request, or raises, without FastAPI's dependency
    machinery (for `express`). The header is read as `HTTPBearer` reads it."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    return _authorize(request, token if scheme.lower() == "bearer" and token else None, scopes, staff_only)


def _authorize(request: Request, token: str | None, scopes: tuple[str, ...], staff_only: bool) -> Principal:
    if token is None:
        raise Unauthorized("a bearer token is required")
    verifier: Verifier = request.app.state.verifier
    principal = verifier.verify(token)
    if scopes and not principal.scopes.intersection(scopes):
        raise Forbidden(f"this needs the scope {' or '.join(scopes)}")
    if staff_only and principal.is_customer:
        raise Forbidden("this is for staff, not for a customer token")
    return principal
