"""The correlation id and W3C trace context of the request or event being handled, carried into logs and events."""

from __future__ import annotations

import os
import random
from contextvars import ContextVar

from structlog.typing import EventDict, WrappedLogger

from backoffice.ids import new_id

_correlation: ContextVar[str | None] = ContextVar("correlation_id", default=None)
_traceparent: ContextVar[str | None] = ContextVar("traceparent", default=None)


def correlation_id() -> str | None:
    return _correlation.get()


def traceparent() -> str | None:
    return _traceparent.get()


def trace_id() -> str | None:
    parent = _traceparent.get()
    return parent.split("-")[1] if parent and parent.count("-") == 3 else None


def _hex_id(bits: int) -> str:
    """A random trace or span id (never all zeros), as OpenTelemetry makes them: from `random`, not the system's
    entropy source, which costs a system call per id and is not needed for ids that only have to be unique. A new
    correlation id is a UUID like every other id (`backoffice.ids.new_id`)."""
    value = 0
    while value == 0:
        value = _ids.getrandbits(bits)
    return f"{value:0{bits // 4}x}"


_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat its parent's ids


def child_traceparent() -> str | None:
    """A traceparent for something this work causes: same trace, new span id."""
    tid = trace_id()
    return f"00-{tid}-{_hex_id(64)}-01" if tid else None


def _valid_traceparent(value: str | None) -> str | None:
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        int(parts[1], 16)
        int(parts[2], 16)
    except ValueError:
        return None
    return value.strip()


def bind(*, correlation: str | None, parent: str | None) -> str:
    """Bind the correlation (or a new one) and trace context for this task; return the correlation id."""
    cid = (correlation or "").strip()[:128] or new_id()
    trace = _valid_traceparent(parent) or f"00-{_hex_id(128)}-{_hex_id(64)}-01"
    _correlation.set(cid)
    _traceparent.set(trace)
    return cid


def add_to_log(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """A structlog processor: the correlation id and trace id bound now, read when a line is written (binding costs
    two ContextVar sets, which every request and every consumed event pays, rather than a structlog rebind)."""
    cid = _correlation.get()
    if cid is not None:
        event.setdefault("correlation_id", cid)
    tid = trace_id()
    if tid is not None:
        event.setdefault("trace_id", tid)
    return event
