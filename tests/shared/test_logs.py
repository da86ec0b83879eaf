"""Logs are one JSON object per line with service, level, event and the bound correlation."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from backoffice import context, logs


def test_a_log_line_is_json_with_service_level_event_and_correlation(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(service="svc-under-test", level="INFO")
    context.bind(correlation="corr-42", parent=None)
    structlog.get_logger("t").info("something_happened", amount_minor=5)
    logging.getLogger("stdlib").warning("from the standard library")
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    first, second = lines[-2], lines[-1]
    assert first["service"] == "svc-under-test"
    assert first["level"] == "info"
    assert first["event"] == "something_happened"
    assert first["correlation_id"] == "corr-42"
    assert len(first["trace_id"]) == 32
    assert second["event"] == "from the standard library"
    assert second["level"] == "warning"
    assert second["service"] == "svc-under-test"


def test_uvicorn_formats_no_access_line_once_logging_is_configured() -> None:
    logs.configure(service="svc-under-test", level="INFO")
    # uvicorn's HTTP protocols format an access line for every response exactly when this is true
    assert not logging.getLogger("uvicorn.access").hasHandlers()
    assert logging.getLogger("uvicorn.error").hasHandlers()  # its errors still reach the JSON log
