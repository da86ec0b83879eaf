"""One error hierarchy for every service, mapped to RFC 9457 problem+json in one place (`problems`)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A rule was broken; `status` says how HTTP shows it, and a consumer treats it as permanent."""

    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(DomainError):
    pass


class Unauthorized(DomainError):
    status, title, slug = 401, "Unauthorized", "unauthorized"


class Forbidden(DomainError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(DomainError):
    status, title, slug = 404, "Not found", "not-found"


class Conflict(DomainError):
    status, title, slug = 409, "Conflict", "conflict"


class Unprocessable(DomainError):
    status, title, slug = 422, "Unprocessable content", "unprocessable"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        if field is not None:
            extra.setdefault("errors", [{"field": field, "message": detail}])
        super().__init__(detail, **extra)


class Unavailable(DomainError):
    status, title, slug = 503, "Service unavailable", "unavailable"


class TransientError(Exception):
    """A failure worth retrying (a dependency is down or timed out); never a reason to dead-letter."""
