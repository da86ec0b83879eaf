"""Fixtures of the platform tests."""

from tests.conftest import topics_fixture

topics = topics_fixture("platform")
