"""RFC 9457 problem+json for every error: domain errors, validation, HTTP errors and the unexpected."""

from __future__ import annotations

from typing import Any

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


async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
    log.exception("unhandled_error", path=request.url.path)
    return problem(500, "An unexpected error occurred; it has been logged.")


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
