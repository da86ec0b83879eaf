"""CloudEvents 1.0 in Kafka binary content mode: `ce_*` headers, the aggregate id as key, JSON data as value."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from pydantic import ValidationError

from backoffice import context
from backoffice.events import ANY_EVENT, TYPES, Event, now
from backoffice.ids import new_id
from backoffice.topics import events_topic

Headers = list[tuple[str, bytes]]


class PoisonRecord(ValueError):
    """A record no consumer can ever apply: not JSON, unknown type, or data that fails the schema."""


@dataclass(frozen=True)
class Envelope:
    event: Event
    id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=now)
    correlation_id: str | None = None
    traceparent: str | None = None

    @property
    def type(self) -> str:
        return self.event.ce_type()

    @property
    def source(self) -> str:
        return f"/backoffice/{self.event.service}"

    @property
    def subject(self) -> str:
        return self.event.key

    def topic(self, *, prefix: str = "") -> str:
        return events_topic(self.event.service, prefix=prefix)

    @classmethod
    def wrap(cls, event: Event) -> Envelope:
        """An envelope that carries the correlation of the request or event being handled now."""
        return cls(event=event, correlation_id=context.correlation_id(), traceparent=context.child_traceparent())


def encode(envelope: Envelope) -> tuple[bytes, bytes, Headers]:
    """Return (key, value, headers) of the Kafka record."""
    headers: Headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", envelope.id.encode()),
        ("ce_source", envelope.source.encode()),
        ("ce_type", envelope.type.encode()),
        ("ce_time", envelope.time.isoformat().encode()),
        ("ce_subject", envelope.subject.encode()),
        ("content-type", b"application/json"),
    ]
    if envelope.correlation_id:
        headers.append(("ce_correlationid", envelope.correlation_id.encode()))
    if envelope.traceparent:
        headers.append(("traceparent", envelope.traceparent.encode()))
    value = envelope.event.__pydantic_serializer__.to_json(envelope.event)  # = orjson of model_dump(mode="json")
    return envelope.subject.encode(), value, headers


def header_map(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, raw in headers or ():
        try:
            out[name] = raw.decode() if raw is not None else ""
        except UnicodeDecodeError:
            out[name] = ""
    return out


def decode(headers: Sequence[tuple[str, bytes]] | None, value: bytes | None) -> Envelope:
    """Decode a record; raise PoisonRecord for anything that can never be applied."""
    h = header_map(headers)
    ce_type = h.get("ce_type")
    ce_id = h.get("ce_id")
    if h.get("ce_specversion") != "1.0" or not ce_type or not ce_id:
        raise PoisonRecord("missing or invalid CloudEvents headers (ce_specversion, ce_id, ce_type)")
    try:
        uuid.UUID(ce_id)
    except ValueError as exc:
        raise PoisonRecord(f"ce_id {ce_id!r} is not a UUID") from exc
    cls = TYPES.get(ce_type)
    if cls is None:
        raise PoisonRecord(f"unknown event type {ce_type}")
    try:  # the usual case, straight from the bytes; anything wrong is diagnosed (and explained) below
        return Envelope(
            event=cls.model_validate_json(value or b""),
            id=ce_id,
            time=datetime.fromisoformat(h["ce_time"]) if h.get("ce_time") else now(),
            correlation_id=h.get("ce_correlationid"),
            traceparent=h.get("traceparent"),
        )
    except (ValidationError, ValueError):
        pass
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise PoisonRecord(f"value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PoisonRecord("value is not a JSON object")
    try:
        event = ANY_EVENT.validate_python({**data, "type": ce_type})
        time = datetime.fromisoformat(h["ce_time"]) if h.get("ce_time") else now()
    except (ValidationError, ValueError) as exc:
        raise PoisonRecord(f"{ce_type} fails its schema: {_short(exc)}") from exc
    return Envelope(
        event=event, id=ce_id, time=time, correlation_id=h.get("ce_correlationid"), traceparent=h.get("traceparent")
    )


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    return str(exc)
