"""Schemathesis over the alerts, silences and webhooks API: no 5xx for generated requests, and every response
matches the documented schema (same harness as tests/control/test_openapi_fuzz.py)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from control.webhooks.models import Receiver
from tests.control.test_openapi_fuzz import keep_test_connection  # noqa: F401  (fixture)

MAX_EXAMPLES = 25
PATHS = r"^/api/v1/(alerts|silences|webhooks)"


@pytest.mark.django_db
@pytest.mark.usefixtures("keep_test_connection")
def test_no_server_errors_and_responses_match_the_schema(tokens: dict[str, str]) -> None:
    Receiver.objects.create(name="oncall", url="https://hooks.example.com/", secret="x" * 20, events=["alert"])
    auth = {"Authorization": f"Token {tokens['admin']}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application(), headers=auth)
    operations = [result.ok() for result in schema.include(path_regex=PATHS).get_all_operations()]
    assert len(operations) >= 11, [op.label for op in operations]
    failures: list[str] = []
    statuses: dict[str, set[int]] = {}
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call_and_validate(headers=auth, checks=checks)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    assert set(statuses) == {op.label for op in operations}
    for label in ("GET /api/v1/alerts/", "GET /api/v1/alerts/rules/", "GET /api/v1/silences/",
                  "GET /api/v1/webhooks/"):
        assert 200 in statuses[label], statuses
