"""Audit pages: the log with filters, one event with its diff and the other changes of the same request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from core.audit.context import Origin
from core.audit.record import record


@pytest.mark.parametrize("path", ["/audit/", "/audit/1/"])
def test_audit_pages_need_a_login(browser: Callable[..., Any], path: str) -> None:
    response = browser(None).get(path)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_log_lists_and_filters(browser: Callable[..., Any]) -> None:
    origin = Origin.system("controller")
    record(origin, "node.drain", "node:gpu-a-1", "hot node")
    record(Origin.system("alice"), "policy.rollback", "policy:scheduler", "latency regression")
    client = browser("viewer")
    html = client.get("/audit/").content.decode()
    assert "hot node" in html and "latency regression" in html
    html = client.get("/audit/?actor=alice").content.decode()
    assert "latency regression" in html and "hot node" not in html
    html = client.get("/audit/?action=node.*").content.decode()
    assert "hot node" in html and "latency regression" not in html
    html = client.get("/audit/?since=garbage").content.decode()
    assert "since must be an ISO 8601 time" in html


def test_event_page_shows_the_diff_and_the_rest_of_its_request(browser: Callable[..., Any]) -> None:
    origin = Origin(actor="alice", request_id="r" * 32, client="10.0.0.1")
    first = record(origin, "policy.create", "policy:scheduler", "tune", before={"w": 0.6}, after={"w": 0.7})
    second = record(origin, "node.cordon", "node:gpu-a-1", "tune")
    record(Origin.system(), "node.drain", "node:other", "unrelated")
    client = browser("viewer")
    html = client.get(f"/audit/{first.pk}/").content.decode()
    assert "diff-add" in html and "diff-del" in html and "0.7" in html
    assert f'href="/audit/{second.pk}/"' in html and "node:other" not in html
    assert "10.0.0.1" in html and "r" * 32 in html
    assert client.get("/audit/99999999/").status_code == 404


def test_change_in_the_browser_shows_up_with_who_when_why(browser: Callable[..., Any]) -> None:
    """The issue's "done when": change a weight, then see it in the audit log."""
    import json

    from control.policy import service
    from tests.control.conftest import csrf_post

    client = browser("operator")
    current = service.active("scheduler")
    doc = json.loads(json.dumps(current.document))
    doc["scorers"][2]["weight"] = -0.3
    csrf_post(client, "/policies/scheduler/", {"document": json.dumps(doc), "reason": "latency costs more",
                                               "parent": current.pk, "action": "save"})
    html = client.get("/audit/?target=policy:scheduler").content.decode()
    assert "latency costs more" in html and "operator" in html and "policy.create" in html
