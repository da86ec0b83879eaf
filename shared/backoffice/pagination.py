"""Keyset pagination: `?limit=` (default 50, max 200) and an opaque `?cursor=`; `{items, next_cursor}`."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel

from backoffice.errors import Unprocessable

T = TypeVar("T")
MAX_LIMIT = 200
DEFAULT_LIMIT = 50

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size (at most 200)")]
Cursor = Annotated[str | None, Query(max_length=512, description="The `next_cursor` of the previous page")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> list[Any] | None:
    """The keyset values of a cursor, or None for the first page; 422 naming `cursor` when it is not ours."""
    if not cursor:
        return None
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise Unprocessable("cursor is not valid", field="query.cursor") from exc
    if not isinstance(values, list) or not values:
        raise Unprocessable("cursor is not valid", field="query.cursor")
    return values


def page(rows: list[T], *, limit: int, key: Any) -> Page[T]:
    """Given up to `limit + 1` rows, the page and the cursor after its last row (`key(row)` gives keyset values)."""
    more = len(rows) > limit
    items = rows[:limit]
    return Page[T](items=items, next_cursor=encode_cursor(key(items[-1])) if more and items else None)
