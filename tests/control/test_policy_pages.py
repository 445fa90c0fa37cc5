"""Policy pages with Django's test client (CSRF enforced): editor, preview, save, history, diff, rollback."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from control.policy import service
from control.policy.defaults import DEFAULTS
from control.policy.models import PolicyRevision
from control.policy.schemas import KINDS
from core.audit.models import AuditEvent
from tests.control.conftest import csrf_post, events_since, last_event_id

PAGES = ["/policies/", "/policies/scheduler/", "/policies/scaling/history/"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_login(browser: Callable[..., Any], path: str) -> None:
    response = browser(None).get(path)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
@pytest.mark.parametrize("path", PAGES)
def test_pages_render_for_every_role(browser: Callable[..., Any], role: str, path: str) -> None:
    response = browser(role).get(path)
    assert response.status_code == 200
    assert b'href="/policies/"' in response.content  # the nav link


def test_index_lists_every_kind(browser: Callable[..., Any]) -> None:
    html = browser("viewer").get("/policies/").content.decode()
    for kind in KINDS:
        assert f'href="/policies/{kind}/"' in html


def test_editor_shows_the_document_and_viewers_get_no_edit_controls(browser: Callable[..., Any]) -> None:
    viewer = browser("viewer").get("/policies/scheduler/").content.decode()
    assert "&quot;gpu_free&quot;" in viewer and "&quot;weight&quot;: 0.6" in viewer
    assert "<textarea" not in viewer and 'name="reason"' not in viewer and "Save" not in viewer
    operator = browser("operator").get("/policies/scheduler/").content.decode()
    assert "<textarea" in operator and 'name="reason"' in operator and "Preview diff" in operator
    assert "data-json-check" in operator and "switchyard/control.js" in operator
    history = browser("viewer").get("/policies/scheduler/history/").content.decode()
    assert "Roll back" not in history


def test_unknown_kind_page_is_404(browser: Callable[..., Any]) -> None:
    assert browser("viewer").get("/policies/nope/").status_code == 404


def edited(weight: float) -> str:
    doc = json.loads(json.dumps(DEFAULTS["scheduler"]))
    doc["scorers"][0]["weight"] = weight
    return json.dumps(doc, indent=2)


def test_preview_shows_the_diff_and_stores_nothing(browser: Callable[..., Any]) -> None:
    client = browser("operator")
    parent = service.active("scheduler").pk
    before = (PolicyRevision.objects.count(), AuditEvent.objects.count())
    response = csrf_post(client, "/policies/scheduler/", {"document": edited(0.5), "reason": "", "parent": parent,
                                                          "action": "preview"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "scorers[0].weight" in html and "diff-add" in html and "diff-del" in html
    assert (PolicyRevision.objects.count(), AuditEvent.objects.count()) == before


def test_saving_the_form_creates_a_revision_and_an_audit_event(browser: Callable[..., Any]) -> None:
    client = browser("operator")
    parent = service.active("scheduler").pk
    mark = last_event_id()
    response = csrf_post(client, "/policies/scheduler/", {"document": edited(0.55), "reason": "less gpu weight",
                                                          "parent": parent, "action": "save"})
    assert response.status_code == 302 and response["Location"] == "/policies/scheduler/history/"
    current = service.active("scheduler")
    assert current.version == 2 and current.document["scorers"][0]["weight"] == 0.55
    assert current.author == "operator" and current.reason == "less gpu weight"
    [event] = events_since(mark)
    assert (event.action, event.actor, event.reason) == ("policy.create", "operator", "less gpu weight")
    assert event.client == "127.0.0.1" and event.request_id == response["X-Request-ID"]
    history = client.get("/policies/scheduler/history/").content.decode()
    assert "less gpu weight" in history and "Saved scheduler v2" in history


def test_form_errors_keep_the_text_and_store_nothing(browser: Callable[..., Any]) -> None:
    client = browser("operator")
    parent = service.active("scheduler").pk
    before = (PolicyRevision.objects.count(), AuditEvent.objects.count())
    no_reason = csrf_post(client, "/policies/scheduler/", {"document": edited(0.5), "reason": " ",
                                                           "parent": parent, "action": "save"})
    assert no_reason.status_code == 400 and "reason is required" in no_reason.content.decode()
    bad_json = csrf_post(client, "/policies/scheduler/", {"document": "{oops", "reason": "r", "parent": parent,
                                                          "action": "save"})
    assert bad_json.status_code == 400 and "Not valid JSON" in bad_json.content.decode()
    assert "{oops" in bad_json.content.decode()
    invalid = csrf_post(client, "/policies/scheduler/", {"document": edited(99), "reason": "r", "parent": parent,
                                                         "action": "save"})
    assert invalid.status_code == 400 and "scorers[0].weight" in invalid.content.decode()
    stale = csrf_post(client, "/policies/scheduler/", {"document": edited(0.5), "reason": "r", "parent": parent + 999,
                                                       "action": "save"})
    assert stale.status_code in (404, 409)
    assert (PolicyRevision.objects.count(), AuditEvent.objects.count()) == before


def test_form_needs_csrf_and_the_operator_role(browser: Callable[..., Any]) -> None:
    parent = service.active("scheduler").pk
    data = {"document": edited(0.5), "reason": "r", "parent": parent, "action": "save"}
    assert browser("operator").post("/policies/scheduler/", data).status_code == 403  # no CSRF token
    assert csrf_post(browser("viewer"), "/policies/scheduler/", data).status_code == 403
    assert service.active("scheduler").pk == parent


def test_stale_parent_in_the_form_is_a_conflict(browser: Callable[..., Any]) -> None:
    parent = service.active("scheduler").pk
    first = csrf_post(browser("operator"), "/policies/scheduler/", {"document": edited(0.5), "reason": "a",
                                                                    "parent": parent, "action": "save"})
    assert first.status_code == 302
    second = csrf_post(browser("admin"), "/policies/scheduler/", {"document": edited(0.4), "reason": "b",
                                                                  "parent": parent, "action": "save"})
    assert second.status_code == 409 and "no longer the active" in second.content.decode()
    assert service.active("scheduler").document["scorers"][0]["weight"] == 0.5


def test_history_diff_and_rollback_button(browser: Callable[..., Any]) -> None:
    client = browser("operator")
    v1 = service.active("scheduler")
    csrf_post(client, "/policies/scheduler/", {"document": edited(0.3), "reason": "try less gpu",
                                               "parent": v1.pk, "action": "save"})
    v2 = service.active("scheduler")
    history = client.get("/policies/scheduler/history/").content.decode()
    assert "Roll back to v1" in history and "data-confirm=" in history
    diff = client.get(f"/policies/scheduler/diff/?a={v1.pk}&b={v2.pk}").content.decode()
    assert "scorers[0].weight" in diff and "side-by-side" in diff
    assert client.get("/policies/scheduler/diff/?a=x&b=1").status_code == 404
    mark = last_event_id()
    response = csrf_post(client, "/policies/scheduler/rollback/", {"revision": v1.pk, "reason": "p95 went up",
                                                                   "active": v2.pk})
    assert response.status_code == 302
    now = service.active("scheduler")
    assert now.version == 3 and now.document == v1.document and now.restored_from_id == v1.pk
    [event] = events_since(mark)
    assert (event.action, event.actor, event.reason) == ("policy.rollback", "operator", "p95 went up")
    # Without a reason the button does nothing.
    response = csrf_post(client, "/policies/scheduler/rollback/", {"revision": v2.pk, "reason": ""})
    assert response.status_code == 302 and service.active("scheduler").pk == now.pk
    assert csrf_post(browser("viewer"), "/policies/scheduler/rollback/", {"revision": v2.pk,
                                                                         "reason": "x"}).status_code == 403
