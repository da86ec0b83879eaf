"""What the routes share: the caller's scopes, path and query parameters, cursors."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from backoffice.auth import Principal, require
from backoffice.errors import Unprocessable
from backoffice.pagination import decode_cursor
from billing.schemas import Timestamp
from billing.settings import Settings

Read = Annotated[Principal, Depends(require("billing:read", "billing:write", "billing:admin"))]
# Payments, payables, terms, AP reports and jobs are for staff: a customer token is refused (403) up front.
StaffRead = Annotated[Principal, Depends(require("billing:read", "billing:write", "billing:admin", staff_only=True))]
Write = Annotated[Principal, Depends(require("billing:write", "billing:admin", staff_only=True))]
Admin = Annotated[Principal, Depends(require("billing:admin", staff_only=True))]
CustomerPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\s]+$")]
CustomerQuery = Annotated[str | None, Query(max_length=128)]
CurrencyQuery = Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")]
AsOf = Annotated[Timestamp | None, Query(description="RFC 3339 with offset; default now")]


def after_seq(cursor: str | None) -> int | None:
    """The keyset value of one of our cursors."""
    values = decode_cursor(cursor)
    if values is None:
        return None
    if not isinstance(values[0], int) or isinstance(values[0], bool):
        raise Unprocessable("cursor is not valid", field="query.cursor")
    return values[0]


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
