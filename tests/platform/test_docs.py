"""Docs are artefacts of the code, and a published event version never breaks its consumers."""

from __future__ import annotations

from pathlib import Path

import orjson

from backoffice import apidocs, events

DOCS = Path(__file__).resolve().parents[2] / "docs"


class TestCommittedDocs:
    def test_committed_docs_match_the_code(self) -> None:
        assert apidocs.stale(DOCS) == [], "run `make docs` and commit the result"

    def test_no_published_event_version_has_a_breaking_change(self) -> None:
        assert apidocs.event_breaks(DOCS) == []

    def test_asyncapi_lists_every_event_on_its_topic(self) -> None:
        document = orjson.loads((DOCS / "asyncapi.json").read_bytes())
        for cls in events.CATALOG:
            assert cls.name in document["channels"][f"{cls.service}.events"]["messages"]


def _published(tmp_path: Path, cls: type[events.Event], change: object) -> Path:
    schema = apidocs.event_schema(cls)
    change(schema)  # type: ignore[operator]
    (tmp_path / "events").mkdir(exist_ok=True)
    (tmp_path / "events" / f"{cls.ce_type()}.json").write_bytes(apidocs.render(schema))
    return tmp_path


class TestCompatibilityCheck:
    def test_a_field_the_code_no_longer_has_is_breaking(self, tmp_path: Path) -> None:
        def add_field(s: dict) -> None:  # type: ignore[type-arg]
            s["properties"]["warehouse"] = {"type": "string"}

        breaks = apidocs.event_breaks(_published(tmp_path, events.OrderShipped, add_field))
        assert breaks == [
            "backoffice.orders.OrderShipped.v1: field 'warehouse' was removed or renamed "
            "(a breaking change needs a new version)"
        ]

    def test_a_retyped_field_is_breaking(self, tmp_path: Path) -> None:
        def retype(s: dict) -> None:  # type: ignore[type-arg]
            s["properties"]["subtotal_minor"] = {"type": "string"}

        assert "changed type" in apidocs.event_breaks(_published(tmp_path, events.OrderShipped, retype))[0]

    def test_a_field_made_required_is_breaking(self, tmp_path: Path) -> None:
        def loosen(s: dict) -> None:  # type: ignore[type-arg]
            s["required"].remove("shipped_at")

        assert "became required" in apidocs.event_breaks(_published(tmp_path, events.OrderShipped, loosen))[0]

    def test_an_added_optional_field_is_compatible(self, tmp_path: Path) -> None:
        def drop_optional(s: dict) -> None:  # type: ignore[type-arg]
            s["properties"].pop("carrier")

        assert apidocs.event_breaks(_published(tmp_path, events.OrderShipped, drop_optional)) == []
