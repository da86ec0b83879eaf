"""Fixtures of the shared tests."""

from tests.conftest import topics_fixture

topics = topics_fixture("shared")
