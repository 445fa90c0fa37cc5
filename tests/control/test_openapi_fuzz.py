"""Schemathesis against the served OpenAPI document: generated requests to every API operation (the control plane,
and the fleet, metric and live read API) never get a 5xx, and every response matches the schema (status code
documented, body conforming).

Bounded (a few examples per operation) so it runs in well under a minute; it drives the Django app in-process
through WSGI, inside the test's database transaction."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.conftest import make_node

MAX_EXAMPLES = 25
# (path regex, at least this many operations, operations that must have answered 200 at least once)
GROUPS = {
    "control": (r"^/api/v1/(policies|audit|tokens|nodes/\{name\}/(drain|cordon|uncordon))", 15,
                ("GET /api/v1/policies/", "GET /api/v1/audit/", "GET /api/v1/tokens/")),
    "controller": (r"^/api/v1/(scaling|providers|power)", 10,
                   ("GET /api/v1/scaling/pools/", "GET /api/v1/scaling/actions/", "GET /api/v1/providers/",
                    "GET /api/v1/power/")),
    "read": (r"^/api/v1/(pools|gpus|metrics|live|nodes/$|nodes/\{name\}/$|nodes/\{name\}/history)", 8,
             ("GET /api/v1/pools/", "GET /api/v1/nodes/", "GET /api/v1/metrics/catalogue",
              "GET /api/v1/pools/summary")),
}


@pytest.fixture
def keep_test_connection() -> Any:
    """The WSGI handler closes "old" connections around each request, which would close the test's transaction;
    Django's own test client switches that off the same way."""
    for signal in (signals.request_started, signals.request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (signals.request_started, signals.request_finished):
        signal.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.usefixtures("keep_test_connection")
@pytest.mark.parametrize("group", list(GROUPS))
def test_no_server_errors_and_responses_match_the_schema(tokens: dict[str, str], group: str) -> None:
    paths, least, answered = GROUPS[group]
    make_node("gpu-a-1", "pool-a")
    auth = {"Authorization": f"Token {tokens['admin']}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application(), headers=auth)
    schema = schema.include(path_regex=paths)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= least, [op.label for op in operations]
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call_and_validate(headers=auth, checks=checks)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        try:
            run()
        except Exception as exc:  # collect all operations' failures, then report them together
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    # The run reached every operation, and requests got through authentication into the views.
    assert set(statuses) == {op.label for op in operations}
    for label in answered:
        assert 200 in statuses[label], statuses
