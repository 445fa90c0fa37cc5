"""Every webhook endpoint and page, per role (admin only), with audit checks; the secret is shown once only."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from control.webhooks.models import Delivery, Receiver
from core.audit.models import AuditEvent
from core.roles import RANK
from tests.control.conftest import csrf_post, events_since, last_event_id
from tests.control.test_api_access import Endpoint, State, const

REASON = "access test"
SECRET = "a-very-long-secret-value"


def _receiver(state: State, role: str | None) -> None:
    state["r"] = Receiver.objects.create(name="oncall", url="https://hooks.example.com/am", secret=SECRET,
                                         events=["alert"]).pk


def _path(suffix: str = "") -> Callable[[State], str]:
    return lambda s: f"/api/v1/webhooks/{s['r']}/{suffix}"


ENDPOINTS = [
    Endpoint("list", "get", const("/api/v1/webhooks/"), "admin", 200, setup=_receiver),
    Endpoint("create", "post", const("/api/v1/webhooks/"), "admin", 201,
             body=const({"name": "pager", "url": "https://hooks.example.com/x", "events": ["alert", "rollback"],
                         "reason": REASON}),
             audit=[("webhook.create", lambda r: f"webhook:{r.json()['id']}")]),
    Endpoint("detail", "get", _path(), "admin", 200, setup=_receiver),
    Endpoint("patch", "patch", _path(), "admin", 200, setup=_receiver,
             body=const({"enabled": False, "reason": REASON}),
             audit=[("webhook.update", lambda r: f"webhook:{r.json()['id']}")]),
    Endpoint("delete", "delete", _path(), "admin", 204, setup=_receiver, body=const({"reason": REASON}),
             audit=[("webhook.delete", lambda r: r.wsgi_request.path.rstrip("/").replace("/api/v1/webhooks/",
                                                                                           "webhook:"))]),
    Endpoint("test", "post", _path("test/"), "admin", 202, setup=_receiver),
    Endpoint("deliveries", "get", _path("deliveries/"), "admin", 200, setup=_receiver),
]


@pytest.mark.parametrize("role", [None, "viewer", "operator", "admin"], ids=lambda r: r or "anonymous")
@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: e.id)
def test_endpoint_access_and_audit(ep: Endpoint, role: str | None, api: Callable[..., Any]) -> None:
    state: State = {}
    if ep.setup:
        ep.setup(state, role)
    mark = last_event_id()
    client = api(role)
    path = ep.path(state)
    call = getattr(client, ep.method)
    response = call(path) if ep.method == "get" else call(path, ep.body(state) if ep.body else {}, format="json")
    if role is None:
        assert response.status_code == 401 and response.json()["error"]
        assert events_since(mark) == []
        return
    if RANK[role] < RANK[ep.min_role]:
        assert response.status_code == 403 and "admin" in response.json()["error"]
        assert events_since(mark) == []
        return
    assert response.status_code == ep.status, response.content
    events = events_since(mark)
    assert [(e.action, e.target) for e in events] == [(a, t(response)) for a, t in ep.audit]
    for event in events:
        assert (event.actor, event.reason, event.client) == (role, REASON, "127.0.0.1")
        assert SECRET not in json.dumps([event.before, event.after, event.details])


def test_the_secret_is_shown_at_creation_only_and_never_audited(api: Callable[..., Any]) -> None:
    admin = api("admin")
    created = admin.post("/api/v1/webhooks/", {"name": "pager", "url": "https://hooks.example.com/x",
                                               "reason": "new"}, format="json").json()
    secret = created["secret"]
    assert len(secret) >= 32 and Receiver.objects.get().secret == secret
    pk = created["id"]
    assert "secret" not in admin.get(f"/api/v1/webhooks/{pk}/").json()
    assert all("secret" not in r for r in admin.get("/api/v1/webhooks/").json())
    patched = admin.patch(f"/api/v1/webhooks/{pk}/", {"secret": "rotated-secret-0123456", "reason": "rotate"},
                          format="json")
    assert patched.status_code == 200 and "secret" not in patched.json()
    for e in AuditEvent.objects.filter(target=f"webhook:{pk}"):
        assert secret not in json.dumps([e.before, e.after, e.details])
        assert "rotated-secret-0123456" not in json.dumps([e.before, e.after, e.details])
    assert AuditEvent.objects.filter(action="webhook.update").get().details == {"secret_changed": True}


@pytest.mark.parametrize(("payload", "field", "message"), [
    ({"name": "x", "url": "http://u:p@hooks.example.com/"}, "url", "credentials"),
    ({"name": "x", "url": "ftp://hooks.example.com/"}, "url", "scheme 'ftp'"),
    ({"name": "x", "url": "https://ok.example.com/", "events": ["nope"]}, "events", "a non-empty list"),
    ({"name": "x", "url": "https://ok.example.com/", "events": []}, "events", "a non-empty list"),
    ({"name": "x", "url": "https://ok.example.com/", "format": "teams"}, "format", "one of"),
    ({"name": "Bad Name", "url": "https://ok.example.com/"}, "name", "lowercase"),
    ({"name": "x", "url": "https://ok.example.com/", "secret": "short"}, "secret", "16-200"),
    ({"name": "x", "url": "https://ok.example.com/", "internal": "yes"}, "internal", "a boolean"),
    ({"name": "x", "url": "https://ok.example.com/", "colour": "red"}, "colour", "unknown field"),
    ({"name": "x", "url": "https://ok.example.com/" + "a" * 3000}, "url", "longer than 2000"),
])
def test_bad_receivers_get_400_with_the_field_and_nothing_is_stored(api: Callable[..., Any], payload: Any,
                                                                    field: str, message: str) -> None:
    mark = last_event_id()
    response = api("admin").post("/api/v1/webhooks/", {**payload, "reason": "x"}, format="json")
    assert response.status_code == 400 and message in response.json()["fields"][field], response.content
    assert Receiver.objects.count() == 0 and events_since(mark) == []


def test_a_huge_body_is_refused_before_parsing(api: Callable[..., Any]) -> None:
    response = api("admin").post("/api/v1/webhooks/", {"name": "x", "url": "https://a.example/",
                                                       "reason": "x" * 300_000}, format="json")
    assert response.status_code == 413 and Receiver.objects.count() == 0


def test_duplicate_names_conflict(api: Callable[..., Any]) -> None:
    body = {"name": "pager", "url": "https://hooks.example.com/x", "reason": "x"}
    assert api("admin").post("/api/v1/webhooks/", body, format="json").status_code == 201
    assert api("admin").post("/api/v1/webhooks/", body, format="json").status_code == 409


def test_send_test_queues_a_test_delivery_shown_in_the_log(api: Callable[..., Any]) -> None:
    state: State = {}
    _receiver(state, None)
    Receiver.objects.filter(pk=state["r"]).update(enabled=False, disabled_reason="auto-disabled")
    response = api("admin").post(f"/api/v1/webhooks/{state['r']}/test/", format="json")
    assert response.status_code == 202 and response.json()["event"] == "test"
    log = api("admin").get(f"/api/v1/webhooks/{state['r']}/deliveries/").json()
    assert [d["event"] for d in log] == ["test"] and log[0]["state"] == "pending"
    assert Delivery.objects.get().payload["summary"].startswith("Test message for receiver oncall")


def test_reenabling_resets_the_failure_count(api: Callable[..., Any]) -> None:
    state: State = {}
    _receiver(state, None)
    Receiver.objects.filter(pk=state["r"]).update(enabled=False, consecutive_failures=5, disabled_reason="auto")
    body = api("admin").patch(f"/api/v1/webhooks/{state['r']}/", {"enabled": True, "reason": "fixed"},
                              format="json").json()
    assert body["enabled"] and body["consecutive_failures"] == 0 and body["disabled_reason"] == ""


# --- pages -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", [None, "viewer", "operator", "admin"], ids=lambda r: r or "anonymous")
def test_webhooks_pages_per_role(browser: Callable[..., Any], role: str | None) -> None:
    state: State = {}
    _receiver(state, None)
    Receiver.objects.filter(pk=state["r"]).update(enabled=False, disabled_reason="auto-disabled after 5 failed")
    for url in ("/webhooks/", f"/webhooks/{state['r']}/"):
        response = browser(role).get(url)
        if role is None:
            assert response.status_code == 302 and "/login" in response["Location"]
        elif role != "admin":
            assert response.status_code == 403
        else:
            html = response.content.decode()
            assert response.status_code == 200 and "oncall" in html and "auto-disabled after 5 failed" in html
            assert SECRET not in html


def test_create_page_shows_the_secret_once_and_audits(browser: Callable[..., Any]) -> None:
    client = browser("admin")
    mark = last_event_id()
    response = csrf_post(client, "/webhooks/", {"name": "pager", "url": "https://hooks.example.com/x",
                                                "events": ["alert", "job"], "format": "slack", "reason": "new"})
    assert response.status_code == 201
    r = Receiver.objects.get()
    assert r.secret in response.content.decode() and r.events == ["alert", "job"] and r.format == "slack"
    assert r.secret not in client.get("/webhooks/").content.decode()
    assert [e.action for e in events_since(mark)] == ["webhook.create"]


def test_a_reload_of_the_create_answer_is_turned_away(browser: Callable[..., Any]) -> None:
    client = browser("admin")
    nonce = re.search(r'name="once" value="([^"]+)"',  # type: ignore[union-attr]
                      client.get("/webhooks/").content.decode()).group(1)
    data = {"name": "pager", "url": "https://hooks.example.com/x", "events": ["alert"], "format": "slack",
            "reason": "new", "once": nonce}
    assert csrf_post(client, "/webhooks/", data).status_code == 201
    mark = last_event_id()
    again = csrf_post(client, "/webhooks/", data)
    assert again.status_code == 302 and again["Location"] == "/webhooks/"
    assert Receiver.objects.count() == 1 and events_since(mark) == []
    html = client.get("/webhooks/").content.decode()
    assert "already sent" in html and Receiver.objects.get().secret not in html


def test_create_page_refuses_a_loopback_credentials_url(browser: Callable[..., Any]) -> None:
    response = csrf_post(browser("admin"), "/webhooks/", {"name": "x", "url": "http://a:b@127.0.0.1/",
                                                          "events": ["alert"], "reason": "x"})
    assert response.status_code == 400 and "credentials" in response.content.decode()
    assert Receiver.objects.count() == 0


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_page_actions_need_admin_and_are_audited(browser: Callable[..., Any], role: str) -> None:
    state: State = {}
    _receiver(state, None)
    client = browser(role)
    mark = last_event_id()
    response = csrf_post(client, f"/webhooks/{state['r']}/disable/", {"reason": "noisy"})
    if role == "operator":
        assert response.status_code == 403 and Receiver.objects.get().enabled and events_since(mark) == []
        return
    assert response.status_code == 302 and not Receiver.objects.get().enabled
    csrf_post(client, f"/webhooks/{state['r']}/test/", {})
    assert Delivery.objects.filter(event="test").count() == 1
    csrf_post(client, f"/webhooks/{state['r']}/delete/", {"reason": "gone"})
    assert Receiver.objects.count() == 0
    assert [e.action for e in events_since(mark)] == ["webhook.update", "webhook.delete"]
