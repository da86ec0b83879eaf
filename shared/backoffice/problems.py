"""RFC 9457 problem+json for every error: domain errors, validation, HTTP errors and the unexpected."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backoffice.errors import DomainError
from backoffice.responses import JSON

PROBLEM = "application/problem+json"
_BASE = "https://backoffice.dev/problems/"
log = structlog.get_logger("http")

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemResponse(JSON):
    media_type = PROBLEM


def problem(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    title = title or _TITLES.get(status, "Error")
    body = {
        "type": _BASE + (slug or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


def field_errors(errors: list[Any]) -> list[dict[str, str]]:
    """Pydantic errors as `{field, message, type}`; the field is a dotted path like `body.lines.0.quantity`."""
    out = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        out.append(
            {
                "field": ".".join(loc) or "body",
                "message": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "value_error")),
            }
        )
    return out


async def _domain(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, DomainError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return problem(exc.status, exc.detail, slug=exc.slug, title=exc.title, headers=headers, **exc.extra)


async def _validation(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(list(exc.errors()))
    names = ", ".join(e["field"] for e in errors[:5])
    return problem(422, f"The request is not valid: {names}", slug="validation", errors=errors)


async def _http(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
    return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _bad_text(request: Request, exc: Exception) -> ProblemResponse:
    """Text PostgreSQL cannot store (a NUL character) is bad input, not a server error."""
    return problem(422, "text must not contain the NUL character (\\u0000)", slug="validation")


async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
    log.exception("unhandled_error", path=request.url.path)
    return problem(500, "An unexpected error occurred; it has been logged.")


_HANDLERS: tuple[tuple[type[Exception], Callable[[Request, Exception], Awaitable[ProblemResponse]]], ...] = (
    (DomainError, _domain),
    (RequestValidationError, _validation),
    (StarletteHTTPException, _http),
    (asyncpg.CharacterNotInRepertoireError, _bad_text),
    (asyncpg.UntranslatableCharacterError, _bad_text),
    (Exception, _unexpected),  # last: every other kind is more specific
)


def install(app: FastAPI) -> None:
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)


async def render(request: Request, exc: Exception) -> ProblemResponse:
    """The answer the handlers `install` adds give to `exc`, for code that runs outside FastAPI (`express`)."""
    handler = next(handler for kind, handler in _HANDLERS if isinstance(exc, kind))
    return await handler(request, exc)


# --- the OpenAPI document: every error an operation can answer, as problem+json ------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "each bad field (validation)",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}, "type": {"type": "string"}},
            },
        },
    },
}
_DESCRIPTIONS = {
    400: "The body is not readable, or a required header (Idempotency-Key) is missing",
    401: "No valid bearer token",
    403: "The token lacks the scope, or this is not for a customer token",
    404: "Not found (or another customer's)",
    409: "The current state forbids this, or a request with this Idempotency-Key is still in flight",
    413: "The body is over 1 MiB",
    422: "Invalid input; `errors` names each field",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers these problems beyond the ones `document` adds by itself."""
    return {code: {"description": _DESCRIPTIONS[code]} for code in codes}


CONFLICT = responses(409)


def _errors_of(operation: dict[str, Any], path: str) -> set[int]:
    """The problems any operation of this shape can answer, whatever its route declares."""
    codes = {422} if operation.get("parameters") or "requestBody" in operation else set()
    if operation.get("security"):
        codes |= {401, 403}
    if "requestBody" in operation:
        codes |= {400, 413}
    if "{" in path:
        codes.add(404)
    return codes


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """Show every error response of every operation as `application/problem+json` with the Problem schema."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    content = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in openapi.get("paths", {}).items():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            for code in _errors_of(operation, path):
                responses.setdefault(str(code), {})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    default = _DESCRIPTIONS.get(int(code), _TITLES.get(int(code), "Error"))
                    if response.get("description") in (None, "Validation Error"):
                        response["description"] = default
                    response["content"] = content
            operation["responses"] = dict(sorted(responses.items()))
    return openapi


def documented(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """A replacement for `app.openapi` that builds the document once, with `document` applied."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(build())
        return app.openapi_schema

    return openapi
