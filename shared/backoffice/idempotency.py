"""Idempotency keys: the first response to (caller, key) is stored in the same transaction as its write.

Same key and body: the stored response is replayed. Same key, other body: 422. A request arriving while the
first is still in flight waits for it (up to `wait_s`) and replays its answer, or gets 409 when it is still busy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from pydantic import BaseModel

from backoffice.auth import Principal
from backoffice.db import Conn
from backoffice.errors import BadRequest, Conflict, Unprocessable

Operation = Callable[[Conn], Awaitable[tuple[int, Any]]]
MAX_KEY_LENGTH = 255


def request_hash(method: str, path: str, body: bytes) -> str:
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def digest_of(request: Request, body: bytes) -> str:
    """The request's hash for its key: method, path (the ASGI one: `request.url` costs a URL parse) and body."""
    return request_hash(request.method, request.scope["path"], body)


def key_of(request: Request, *, required: bool = False) -> str | None:
    """The request's Idempotency-Key, stripped; None when there is none (400 when `required`)."""
    key = request.headers.get("idempotency-key")
    if key is None or not key.strip():
        if required:
            raise BadRequest(
                "the Idempotency-Key header is required for this request",
                errors=[{"field": "header.Idempotency-Key", "message": "required"}],
            )
        return None
    if len(key) > MAX_KEY_LENGTH:
        raise Unprocessable("Idempotency-Key is too long", field="header.Idempotency-Key")
    return key.strip()


async def run(
    request: Request,
    *,
    pool: asyncpg.Pool,
    principal: Principal,
    operation: Operation,
    required: bool = False,
    wait_s: float = 10.0,
) -> Response:
    """Run `operation(conn)` in one transaction, at most once per (caller, Idempotency-Key)."""
    key = key_of(request, required=required)
    if key is None:
        async with pool.acquire() as conn, conn.transaction():
            status, body = await operation(conn)
            return Response(encoded(body), status_code=status, media_type="application/json")
    digest = digest_of(request, await request.body())
    async with pool.acquire() as conn, conn.transaction():
        stored = await _lock_and_find(conn, principal=principal, key=key, wait_s=wait_s)
        if stored is not None:
            return replay(stored, digest)
        status, body = await operation(conn)
        answer = encoded(body)
        await conn.execute(
            "INSERT INTO idempotency_keys (principal, key, request_hash, status_code, body) VALUES ($1,$2,$3,$4,$5)",
            principal.sub,
            key,
            digest,
            status,
            answer,
        )
        return Response(answer, status_code=status, media_type="application/json")


async def _lock_and_find(conn: Conn, *, principal: Principal, key: str, wait_s: float) -> asyncpg.Record | None:
    """Take the (caller, key) lock for this transaction and return the stored response, if any.

    Uncontended (nearly always) this is one round trip (`idempotency_claim`); a key in use by a request still in
    flight is waited for up to `wait_s`, then 409.
    """
    row = await conn.fetchrow("SELECT * FROM idempotency_claim($1, $2)", principal.sub, key)
    assert row is not None
    if row["locked"]:
        return row if row["request_hash"] is not None else None
    await conn.execute(f"SET LOCAL lock_timeout = '{int(wait_s * 1000)}ms'")
    try:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 0))", principal.sub, key)
    except asyncpg.LockNotAvailableError as exc:
        raise Conflict("a request with this Idempotency-Key is still in progress") from exc
    await conn.execute("SET LOCAL lock_timeout = 0")
    return await conn.fetchrow(
        "SELECT request_hash, status_code, body FROM idempotency_keys WHERE principal = $1 AND key = $2",
        principal.sub,
        key,
    )


def replay(stored: asyncpg.Record, digest: str) -> Response:
    """The response stored under the key, when `digest` is the same request's; 422 otherwise."""
    if stored["request_hash"] != digest:
        raise Unprocessable("this Idempotency-Key was used with a different request", field="header.Idempotency-Key")
    return Response(
        bytes(stored["body"]),
        status_code=stored["status_code"],
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


def encoded(body: Any) -> bytes:
    """The JSON of a response body, as FastAPI would write it: a pydantic model (the usual response) serialized by
    pydantic straight to bytes, anything else through `jsonable_encoder`."""
    if isinstance(body, BaseModel):
        return body.__pydantic_serializer__.to_json(body, by_alias=True)
    return orjson.dumps(jsonable_encoder(body))


async def purge(conn: Conn, *, older_than_s: float = 48 * 3600) -> int:
    """Forget keys older than `older_than_s` (kept at least 24 hours by contract)."""
    result = await conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)", older_than_s
    )
    return int(result.split()[-1])
