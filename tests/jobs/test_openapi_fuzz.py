"""Schemathesis over the jobs and routing API (the same check as tests/control/test_openapi_fuzz.py): generated
requests never get a 5xx and every answer has a documented status and a conforming body."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.control.test_openapi_fuzz import keep_test_connection  # noqa: F401  (fixture)

MAX_EXAMPLES = 25


@pytest.mark.django_db
@pytest.mark.usefixtures("keep_test_connection", "redis_db")
def test_jobs_and_routing_api_never_answer_5xx_and_match_the_schema(tokens: dict[str, str]) -> None:
    auth = {"Authorization": f"Token {tokens['admin']}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application(), headers=auth)
    schema = schema.include(path_regex=r"^/api/v1/(jobs|routing/)")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {
        "GET /api/v1/jobs", "POST /api/v1/jobs", "GET /api/v1/jobs/{job_id}", "POST /api/v1/jobs/{job_id}/cancel",
        "GET /api/v1/routing/summary", "GET /api/v1/routing/minutes"}
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
    assert set(statuses) == {op.label for op in operations}
    for label in ("GET /api/v1/jobs", "GET /api/v1/routing/summary", "GET /api/v1/routing/minutes"):
        assert 200 in statuses[label], statuses
