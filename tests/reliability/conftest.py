"""Fixtures of the reliability tests."""

from tests.conftest import topics_fixture

topics = topics_fixture("reliability")
