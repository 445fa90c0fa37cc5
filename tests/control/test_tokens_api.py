"""User API tokens over the API: own tokens for everyone, anyone's for admins; secret shown once; audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.audit.models import AuditEvent
from core.tokens import digest
from dashboard.accounts.models import UserToken
from tests.control.conftest import events_since, last_event_id


def test_create_shows_the_secret_once_and_it_works(api: Callable[..., Any]) -> None:
    viewer = api("viewer")
    mark = last_event_id()
    response = viewer.post("/api/v1/tokens/", {"name": "ci", "reason": "pipeline"}, format="json")
    assert response.status_code == 201
    body = response.json()
    secret = body["token"]
    stored = UserToken.objects.get(pk=body["id"])
    assert stored.digest == digest(secret) and body["user"] == "viewer" and secret.startswith(body["prefix"])
    [event] = events_since(mark)
    assert secret not in str(event.after) and stored.digest not in str(event.after)
    listed = viewer.get("/api/v1/tokens/").json()["results"]
    assert {t["id"] for t in listed} == set(UserToken.objects.filter(user__username="viewer").values_list("pk",
                                                                                                      flat=True))
    assert all("token" not in t and "digest" not in t for t in listed)
    fresh = api(None)
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert fresh.get("/api/v1/audit/").status_code == 200


def test_revoke_own_token_stops_it_at_once_and_twice_is_409(api: Callable[..., Any]) -> None:
    created = api("operator").post("/api/v1/tokens/", {"name": "tmp", "reason": "try"}, format="json").json()
    response = api("operator").post(f"/api/v1/tokens/{created['id']}/revoke/", {"reason": "done"}, format="json")
    assert response.status_code == 200 and response.json()["revoked"]
    dead = api(None)
    dead.credentials(HTTP_AUTHORIZATION=f"Token {created['token']}")
    assert dead.get("/api/v1/audit/").status_code == 401
    again = api("operator").post(f"/api/v1/tokens/{created['id']}/revoke/", {"reason": "again"}, format="json")
    assert again.status_code == 409


def test_users_cannot_see_or_revoke_others_tokens_admins_can(api: Callable[..., Any]) -> None:
    theirs = UserToken.objects.filter(user__username="operator").first()
    viewer = api("viewer")
    assert theirs.pk not in {t["id"] for t in viewer.get("/api/v1/tokens/").json()["results"]}
    mark = last_event_id()
    refused = viewer.post(f"/api/v1/tokens/{theirs.pk}/revoke/", {"reason": "mine now"}, format="json")
    assert refused.status_code == 404 and events_since(mark) == []
    refused = viewer.post("/api/v1/tokens/", {"name": "x", "reason": "r", "user": "operator"}, format="json")
    assert refused.status_code == 403
    admin = api("admin")
    assert admin.get("/api/v1/tokens/", {"user": "operator"}).json()["count"] == 1
    issued = admin.post("/api/v1/tokens/", {"name": "svc", "reason": "for operator", "user": "operator"},
                        format="json")
    assert issued.status_code == 201 and issued.json()["user"] == "operator"
    assert admin.post("/api/v1/tokens/", {"name": "x", "reason": "r", "user": "ghost"}, format="json").status_code \
        == 404
    revoked = admin.post(f"/api/v1/tokens/{theirs.pk}/revoke/", {"reason": "leaked"}, format="json")
    assert revoked.status_code == 200
    event = AuditEvent.objects.filter(action="token.revoke").latest("id")
    assert (event.actor, event.target, event.reason) == ("admin", f"token:{theirs.pk}", "leaked")


def test_token_input_checks(api: Callable[..., Any]) -> None:
    viewer = api("viewer")
    mark = last_event_id()
    assert viewer.post("/api/v1/tokens/", {"name": "x"}, format="json").status_code == 400  # no reason
    assert viewer.post("/api/v1/tokens/", {"reason": "r"}, format="json").status_code == 400  # no name
    assert viewer.post("/api/v1/tokens/", {"name": "x" * 101, "reason": "r"}, format="json").status_code == 400
    assert viewer.post("/api/v1/tokens/", {"name": 5, "reason": "r"}, format="json").status_code == 400
    assert viewer.post("/api/v1/tokens/999999/revoke/", {"reason": "r"}, format="json").status_code == 404
    assert events_since(mark) == []


def test_only_an_admin_may_issue_a_token_whose_class_ranks_above_the_default(api: Callable[..., Any]) -> None:
    mark = last_event_id()
    before = UserToken.objects.count()
    for role in ("viewer", "operator"):
        refused = api(role).post("/api/v1/tokens/", {"name": "fast", "reason": "latency", "priority_class":
                                                     "realtime"}, format="json")
        assert refused.status_code == 403
        assert refused.json()["error"] == ("only an admin may issue a token of class 'realtime', which ranks above "
                                            "the default class 'standard'; yours may have 'standard' or below")
        assert refused.json()["fields"]["priority_class"].startswith("only an admin")
    assert UserToken.objects.count() == before and events_since(mark) == []  # nothing stored, nothing audited

    for cls in ("standard", "batch", ""):  # the default and below are anyone's
        ok = api("viewer").post("/api/v1/tokens/", {"name": f"t-{cls}", "reason": "r", "priority_class": cls},
                                format="json")
        assert ok.status_code == 201 and ok.json()["priority_class"] == cls
    mine = api("admin").post("/api/v1/tokens/", {"name": "rt", "reason": "r", "priority_class": "realtime"},
                             format="json")
    theirs = api("admin").post("/api/v1/tokens/", {"name": "rt", "reason": "trading desk", "user": "viewer",
                                                   "priority_class": "realtime"}, format="json")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert theirs.json()["user"] == "viewer" and theirs.json()["priority_class"] == "realtime"
    for hostile in ("realtime\x00", "REALTIME", "x" * 64, ["realtime"]):
        bad = api("viewer").post("/api/v1/tokens/", {"name": "h", "reason": "r", "priority_class": hostile},
                                 format="json")
        assert bad.status_code == 400, (hostile, bad.content)
    assert UserToken.objects.filter(user__username="viewer", priority_class="realtime").count() == 1
