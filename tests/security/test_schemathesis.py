"""Schemathesis against each service's own OpenAPI, in process, with a staff token holding every scope.

No case may get a server error, and every answer must be one the document promises: its status code, its
content type, its headers and its body; invalid (negative) input must be refused with a 4xx. One test per
operation and mode, so a new route is covered as soon as it is in the document. Bounded and derandomized, so CI
runs the same cases every time, in a few minutes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backoffice.topics import delete_topics, ensure_topics
from tests.conftest import BOOTSTRAP, token
from tests.security.conftest import PUBLIC, SCHEMATHESIS_CASES, SERVICES, billing_balances, service_app

MAX_EXAMPLES = 20
CUSTOMER = "cust-schemathesis"
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
CONFIG = {"generation": {"with-security-parameters": False, "database": "none", "deterministic": True}}
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
# (who calls, what is generated): staff with every scope, valid and invalid input; a customer, valid input.
RUNS = {"staff": (None, POSITIVE), "staff-invalid": (None, NEGATIVE), "customer": (CUSTOMER, POSITIVE)}


def _operations() -> list[tuple[str, str, str, str]]:
    """(service, method, path, run) of every documented operation, read from each app's own document.

    The invalid-input run is left out where there is nothing to make invalid (no parameter, no body).
    """
    out = []
    for name, service in SERVICES.items():
        document = service.create_app(service.settings()).openapi()
        for path, item in document["paths"].items():
            if path in PUBLIC:
                continue
            for method, operation in item.items():
                has_input = bool(operation.get("parameters")) or "requestBody" in operation
                out += [(name, method.upper(), path, run) for run in RUNS if has_input or run != "staff-invalid"]
    return out


@pytest.fixture(scope="module")
async def schemas(
    make_database: Callable[[str], Awaitable[str]], topics: str
) -> AsyncIterator[dict[str, schemathesis.BaseSchema]]:
    """Each service's schema, loaded from its app, which runs (lifespan and all) on a fresh database.

    The apps have topics and consumer groups of their own, so the events they cause never reach other tests.
    """
    loaded = {}
    prefix = f"{topics}fuzz."
    await ensure_topics(BOOTSTRAP, prefix=prefix, partitions=1)
    with billing_balances() as billing_url:
        try:
            for name, service in SERVICES.items():
                app = await service_app(
                    service,
                    make_database=make_database,
                    topics=prefix,
                    database=f"sec_fuzz_{name}",
                    billing_url=billing_url,
                )
                loaded[name] = schemathesis.openapi.from_asgi(
                    "/openapi.json", app, config=schemathesis.Config.from_dict(CONFIG)
                )
            yield loaded
        finally:
            asgi.shutdown_lifespans()
            await delete_topics(BOOTSTRAP, prefix=prefix)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize(("service", "method", "path", "run"), _operations())
def test_operation_keeps_its_documented_promises(
    schemas: dict[str, schemathesis.BaseSchema], service: str, method: str, path: str, run: str
) -> None:
    customer, mode = RUNS[run]
    operation = schemas[service][path][method]
    bearer = token(SERVICES[service].scopes, customer_id=customer, sub=f"schemathesis-{service}-{run}")
    headers = {"Authorization": f"Bearer {bearer}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        SCHEMATHESIS_CASES[service] += 1
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()
