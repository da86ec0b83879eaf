"""API and event documents generated from the code: OpenAPI per service, one AsyncAPI for every topic and event,
and the compatibility check that keeps a published event version from breaking its consumers."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import orjson

from backoffice import events
from backoffice.ops import SUBSCRIPTIONS
from backoffice.topics import SERVICES, events_topic

CE_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "content-type"],
    "properties": {
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": {"type": "string", "format": "uuid", "description": "unique; consumers de-duplicate on it"},
        "ce_source": {"type": "string", "description": "/backoffice/<service>"},
        "ce_type": {"type": "string", "description": "backoffice.<service>.<EventName>.v<N>"},
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_subject": {"type": "string", "description": "the aggregate id, also the record key"},
        "content-type": {"type": "string", "const": "application/json"},
        "ce_correlationid": {"type": "string"},
        "traceparent": {"type": "string", "description": "W3C trace context"},
    },
}


def event_schema(cls: type[events.Event]) -> dict[str, Any]:
    """The JSON schema of an event's data (the record value), without the internal `type` discriminator."""
    schema = cls.model_json_schema(mode="serialization")
    schema["properties"].pop("type", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "type"]
    schema["title"] = cls.ce_type()
    return schema


def openapi(service: str) -> dict[str, Any]:
    module = importlib.import_module(f"{service}.app")
    return dict(module.create_app().openapi())


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    components: dict[str, Any] = {"messages": {}, "schemas": {}}
    for service in SERVICES:
        owned = [cls for cls in events.CATALOG if cls.service == service]
        topic = events_topic(service)
        channels[topic] = {
            "address": topic,
            "description": f"Events of the {service} service; record key = aggregate id.",
            "messages": {cls.name: {"$ref": f"#/components/messages/{cls.name}"} for cls in owned},
        }
        operations[f"{service}.publish"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic}"},
            "summary": f"{service} publishes through its transactional outbox",
        }
        for cls in owned:
            components["schemas"][cls.name] = event_schema(cls)
            components["messages"][cls.name] = {
                "name": cls.ce_type(),
                "contentType": "application/json",
                "headers": CE_HEADERS,
                "payload": {"$ref": f"#/components/schemas/{cls.name}"},
                "bindings": {"kafka": {"key": {"type": "string", "description": cls.key_field}}},
            }
    for consumer, sources in SUBSCRIPTIONS.items():
        for source in sources:
            topic = events_topic(source)
            operations[f"{consumer}.consume.{source}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{topic}"},
                "summary": f"consumer group `{consumer}` (dead letters to `{consumer}.dlq`)",
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Back-office events",
            "version": "1.0.0",
            "description": "CloudEvents 1.0 in Kafka binary content mode.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": components,
    }


def render(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def documents() -> dict[str, bytes]:
    """Every generated file, by path relative to `docs/`."""
    out = {f"openapi/{s}.json": render(openapi(s)) for s in SERVICES}
    out["asyncapi.json"] = render(asyncapi())
    for cls in events.CATALOG:
        out[f"events/{cls.ce_type()}.json"] = render(event_schema(cls))
    return out


def event_breaks(directory: Path) -> list[str]:
    """Breaking changes of the code's events against the committed per-version schemas in `docs/events/`."""
    problems = []
    current = {cls.ce_type(): event_schema(cls) for cls in events.CATALOG}
    for path in sorted((directory / "events").glob("*.json")):
        ce_type = path.name.removesuffix(".json")
        old = orjson.loads(path.read_bytes())
        if ce_type not in current:
            problems.append(f"{ce_type}: removed; keep publishing it or retire it with a new version alongside")
            continue
        problems += [
            f"{ce_type}: {p} (a breaking change needs a new version)" for p in breaking_changes(old, current[ce_type])
        ]
    return problems


def stale(directory: Path) -> list[str]:
    """Generated files that differ from what is committed under `directory`."""
    return [
        name
        for name, content in documents().items()
        if not (directory / name).exists() or (directory / name).read_bytes() != content
    ]


def write(directory: Path) -> list[str]:
    """Regenerate the documents; refuse (raise) when an event version would break its consumers."""
    breaks = event_breaks(directory)
    if breaks:
        raise ValueError("breaking event changes:\n" + "\n".join(breaks))
    written = []
    for name, content in documents().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            written.append(name)
    return written


# --- compatibility -----------------------------------------------------------------------------


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root.get("$defs", {}).get(name, {})
    return schema


def _shape(schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """The type-level shape of a schema: types, formats, item and property shapes; no validation keywords."""
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        return sorted((_shape(s, root) for s in schema["anyOf"]), key=repr)
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items") or (schema.get("prefixItems") or [{}])[0]
        return ["array", _shape(items, root)]
    if kind == "object" or "properties" in schema:
        return ["object", {k: _shape(v, root) for k, v in sorted(schema.get("properties", {}).items())}]
    return [kind, schema.get("format")]


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What a consumer built against `old` would break on in `new`: removed, retyped, or newly required fields."""
    problems = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, prop in old_props.items():
        if name not in new_props:
            problems.append(f"field {name!r} was removed or renamed")
        elif _shape(prop, old) != _shape(new_props[name], new):
            problems.append(f"field {name!r} changed type")
        elif _nested(prop, old, new_props[name], new):
            problems.append(f"field {name!r} changed inside: {'; '.join(_nested(prop, old, new_props[name], new))}")
    newly_required = set(new.get("required", [])) - set(old.get("required", []))
    problems += [f"field {name!r} became required" for name in sorted(newly_required)]
    return problems


def _nested(old: dict[str, Any], old_root: dict[str, Any], new: dict[str, Any], new_root: dict[str, Any]) -> list[str]:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    if old.get("type") == "array" and new.get("type") == "array":
        old, new = _resolve(old.get("items", {}), old_root), _resolve(new.get("items", {}), new_root)
    if "properties" in old and "properties" in new:
        old_full = {**old, "$defs": old_root.get("$defs", {})}
        return breaking_changes(old_full, {**new, "$defs": new_root.get("$defs", {})})
    return []
