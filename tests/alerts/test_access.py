"""Every alerts/silences endpoint and page, per role (anonymous, viewer, operator, admin), with audit checks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from control.alerts import silences
from control.alerts.models import Alert, Silence
from core.audit.context import Origin
from core.roles import RANK
from tests.control.conftest import csrf_post, events_since, last_event_id
from tests.control.test_api_access import Endpoint, State, const

REASON = "access test"


def _silence(state: State, role: str | None) -> None:
    state["silence"] = silences.create([{"label": "node", "op": "=", "value": "gpu-a-1"}],
                                       timezone.now() + timedelta(hours=1), "setup", Origin.system()).pk


ENDPOINTS = [
    Endpoint("alerts", "get", const("/api/v1/alerts/?state=firing&severity=critical&since=0"), "viewer", 200),
    Endpoint("rules", "get", const("/api/v1/alerts/rules/"), "viewer", 200),
    Endpoint("silences", "get", const("/api/v1/silences/?state=active"), "viewer", 200),
    Endpoint("silence-create", "post", const("/api/v1/silences/"), "operator", 201,
             body=const({"matchers": [{"label": "node", "op": "=", "value": "gpu-a-1"}], "duration_s": 3600,
                         "reason": REASON}),
             audit=[("silence.create", lambda r: f"silence:{r.json()['id']}")]),
    Endpoint("silence-expire", "post", lambda s: f"/api/v1/silences/{s['silence']}/expire/", "operator", 200,
             setup=_silence, body=const({"reason": REASON}),
             audit=[("silence.expire", lambda r: f"silence:{r.json()['id']}")]),
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
    response = client.get(path) if ep.method == "get" else client.post(path, ep.body(state) if ep.body else {},
                                                                       format="json")
    if role is None:
        assert response.status_code == 401 and response.json()["error"]
        assert events_since(mark) == []
        return
    if RANK[role] < RANK[ep.min_role]:
        assert response.status_code == 403 and "role" in response.json()["error"]
        assert events_since(mark) == []
        return
    assert response.status_code == ep.status, response.content
    events = events_since(mark)
    assert [(e.action, e.target) for e in events] == [(a, t(response)) for a, t in ep.audit]
    for event in events:
        assert (event.actor, event.reason, event.client) == (role, REASON, "127.0.0.1")
        assert event.request_id == response["X-Request-ID"]


@pytest.mark.parametrize(("query", "field"), [
    ("state=burning", "state"), ("severity=fatal", "severity"), ("since=yesterday", "since"), ("limit=0", "limit"),
    ("limit=x", "limit")])
def test_bad_alert_filters_say_which(api: Callable[..., Any], query: str, field: str) -> None:
    response = api("viewer").get(f"/api/v1/alerts/?{query}")
    assert response.status_code == 400 and field in response.json()["fields"]


def test_alert_list_filters(api: Callable[..., Any], db: None) -> None:
    now = timezone.now()
    common = {"labels": {}, "threshold": 1, "annotations": {}}
    Alert.objects.create(fingerprint="a", rule="r", severity="critical", state="firing",
                         active_at=now - timedelta(hours=2), **common)
    Alert.objects.create(fingerprint="b", rule="r", severity="warning", state="firing", active_at=now, **common)
    Alert.objects.create(fingerprint="c", rule="r", severity="warning", state="resolved", active_at=now,
                         resolved_at=now, **common)
    get = api("viewer").get
    assert [a["fingerprint"] for a in get("/api/v1/alerts/?state=firing").json()] == ["b", "a"]
    assert [a["fingerprint"] for a in get("/api/v1/alerts/?severity=warning").json()] == ["c", "b"]
    since = (now - timedelta(minutes=5)).isoformat()
    assert [a["fingerprint"] for a in get("/api/v1/alerts/", {"since": since}).json()] == ["c", "b"]


def test_rules_endpoint_shows_the_active_policy(api: Callable[..., Any], db: None) -> None:
    body = api("viewer").get("/api/v1/alerts/rules/").json()
    assert "node-not-reporting" in [r["name"] for r in body["rules"]]
    assert "throttle_power_or_thermal" in body["derived_metrics"]


@pytest.mark.parametrize(("payload", "field"), [
    ({"matchers": [{"label": "node", "op": "=~", "value": "(("}], "duration_s": 3600, "reason": "x"},
     "matchers[0].value"),
    ({"matchers": [], "duration_s": 3600, "reason": "x"}, "matchers"),
    ({"matchers": [{"label": "node", "value": "a"}], "duration_s": 3600}, "reason"),
    ({"matchers": [{"label": "node", "value": "a"}], "duration_s": 10, "reason": "x"}, "duration_s"),
    ({"matchers": [{"label": "node", "value": "a"}], "ends_at": "2001-01-01T00:00:00Z", "reason": "x"}, "ends_at"),
    ({"matchers": [{"label": "node", "value": "a"}], "reason": "x"}, "ends_at"),
    ({"matchers": [{"label": "node", "value": "a"}], "duration_s": 3600, "reason": "x", "extra": 1}, "extra"),
    ({"matchers": [{"label": "node", "value": "a" * 201}], "duration_s": 3600, "reason": "x"}, "matchers[0].value"),
])
def test_bad_silences_get_400_with_the_field_and_nothing_is_stored(api: Callable[..., Any], payload: Any,
                                                                   field: str) -> None:
    mark = last_event_id()
    response = api("operator").post("/api/v1/silences/", payload, format="json")
    assert response.status_code == 400 and field in response.json()["fields"], response.content
    assert Silence.objects.count() == 0 and events_since(mark) == []


def test_expiring_twice_is_a_conflict(api: Callable[..., Any]) -> None:
    state: State = {}
    _silence(state, None)
    url = f"/api/v1/silences/{state['silence']}/expire/"
    assert api("operator").post(url, {"reason": "done"}, format="json").status_code == 200
    assert api("operator").post(url, {"reason": "done"}, format="json").status_code == 409
    assert api("operator").post(url, {}, format="json").status_code == 400
    assert api("operator").post("/api/v1/silences/999999/expire/", {"reason": "x"}, format="json").status_code == 404


# --- pages -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", [None, "viewer", "operator", "admin"], ids=lambda r: r or "anonymous")
def test_alerts_page_per_role(browser: Callable[..., Any], role: str | None) -> None:
    now = timezone.now()
    Alert.objects.create(fingerprint="a", rule="gpu-hot", severity="critical", state="firing", active_at=now,
                         labels={"alertname": "gpu-hot", "node": "gpu-a-1", "gpu": "0"}, threshold=85,
                         annotations={"summary": "GPU 0 of gpu-a-1 at 91 °C"})
    response = browser(role).get("/alerts/")
    if role is None:
        assert response.status_code == 302 and "/login" in response["Location"]
        return
    assert response.status_code == 200
    html = response.content.decode()
    assert "GPU 0 of gpu-a-1 at 91 °C" in html
    assert ('id="silence-form"' in html) is (role != "viewer")


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_silence_form_per_role_and_audit(browser: Callable[..., Any], role: str) -> None:
    client = browser(role)
    mark = last_event_id()
    response = csrf_post(client, "/alerts/silences/", {"label0": "node", "op0": "=", "value0": "gpu-a-1",
                                                       "duration_s": "3600", "reason": "rack work"})
    if role == "viewer":
        assert response.status_code == 403 and Silence.objects.count() == 0 and events_since(mark) == []
        return
    assert response.status_code == 302
    s = Silence.objects.get()
    assert s.matchers == [{"label": "node", "op": "=", "value": "gpu-a-1"}] and s.created_by == role
    [event] = events_since(mark)
    assert (event.action, event.actor, event.reason) == ("silence.create", role, "rack work")
    response = csrf_post(client, f"/alerts/silences/{s.pk}/expire/", {"reason": "done"})
    assert response.status_code == 302
    assert [e.action for e in events_since(mark)] == ["silence.create", "silence.expire"]


def test_silence_form_refuses_a_bad_regex_with_a_message(browser: Callable[..., Any]) -> None:
    client = browser("operator")
    response = csrf_post(client, "/alerts/silences/", {"label0": "node", "op0": "=~", "value0": "((",
                                                       "duration_s": "3600", "reason": "x"})
    assert response.status_code == 302 and Silence.objects.count() == 0
    page = client.get("/alerts/").content.decode()
    assert "Not silenced" in page and "invalid regular expression" in page


def test_the_page_form_needs_csrf(browser: Callable[..., Any]) -> None:
    response = browser("operator").post("/alerts/silences/", {"label0": "node", "value0": "x", "duration_s": "3600",
                                                              "reason": "x"})
    assert response.status_code == 403 and Silence.objects.count() == 0
