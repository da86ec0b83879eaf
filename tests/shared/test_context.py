"""Correlation and W3C trace context: what a request or event binds, and what the events it causes carry."""

from __future__ import annotations

import re

from backoffice import context

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


class TestTraceContext:
    def test_a_new_trace_has_valid_distinct_ids_and_children_keep_the_trace(self) -> None:
        traces, spans = set(), set()
        for _ in range(200):
            context.bind(correlation=None, parent=None)
            parent = context.traceparent()
            assert parent is not None
            match = TRACEPARENT.match(parent)
            assert match is not None, parent
            assert set(match.group(1)) != {"0"} and set(match.group(2)) != {"0"}
            child = context.child_traceparent()
            assert child is not None
            child_match = TRACEPARENT.match(child)
            assert child_match is not None, child
            assert child_match.group(1) == match.group(1)
            assert child_match.group(2) != match.group(2)
            traces.add(match.group(1))
            spans.update((match.group(2), child_match.group(2)))
        assert len(traces) == 200
        assert len(spans) == 400

    def test_a_valid_incoming_traceparent_is_kept_and_an_invalid_one_replaced(self) -> None:
        incoming = f"00-{'4b' * 16}-{'00f067aa0ba902b7'}-01"
        context.bind(correlation="c-1", parent=incoming)
        assert context.traceparent() == incoming
        assert context.correlation_id() == "c-1"
        context.bind(correlation=None, parent="00-not-hex-01")
        replaced = context.traceparent()
        assert replaced is not None and replaced != "00-not-hex-01"
        assert TRACEPARENT.match(replaced)
