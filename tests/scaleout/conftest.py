"""Fixtures of the scaleout tests."""

from tests.conftest import topics_fixture

topics = topics_fixture("scaleout")
