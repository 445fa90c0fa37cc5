"""POST /api/v1/policies/scheduler/canary/ and the manual controls: roles, audit, one canary per kind, bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control.canary.models import Canary
from control.policy import service as policy
from core.audit.models import AuditEvent
from tests.canary.helpers import CANARY_URL, STEPS, candidate, classic, start


def test_an_operator_starts_a_canary_and_it_is_audited(api: Any) -> None:
    op = api("operator")
    rev = candidate(op)
    stable = policy.active("scheduler")
    r = start(op, rev, failure_limit=2)
    assert r.status_code == 201, r.content
    c = r.json()
    assert (c["state"], c["revision"], c["stable"], c["weight"], c["step"]) == ("running", rev, stable.pk, 5.0, 0)
    assert c["steps"] == [{"weight": 5.0, "pause_s": 0}, {"weight": 25.0, "pause_s": 0},
                          {"weight": 50.0, "pause_s": 0}]
    assert c["analysis"]["failure_limit"] == 2 and c["analysis"]["min_requests"] == 100  # defaults filled in
    ev = AuditEvent.objects.filter(action="canary.start").get()
    assert (ev.actor, ev.target, ev.details["revision"]) == ("operator", "canary:scheduler", rev)
    # Starting a canary does not change the active revision: the candidate only gets its share.
    assert policy.active("scheduler").pk == stable.pk
    got = api("viewer").get(CANARY_URL)
    assert got.status_code == 200 and got.json()["id"] == c["id"]


def test_one_canary_per_kind_at_a_time(api: Any) -> None:
    op = api("operator")
    rev = candidate(op)
    assert start(op, rev).status_code == 201
    again = start(op, rev)
    assert again.status_code == 409 and "already running" in again.json()["error"]
    assert Canary.objects.count() == 1 and AuditEvent.objects.filter(action="canary.start").count() == 1


def test_the_active_revision_cannot_be_its_own_canary(api: Any) -> None:
    op = api("operator")
    r = start(op, policy.active("scheduler").pk)
    assert r.status_code == 409 and r.json()["fields"] == {"revision": "already active"}
    assert Canary.objects.count() == 0


def test_viewers_and_anonymous_callers_cannot_start_or_control(api: Any) -> None:
    rev = candidate(api("operator"))
    assert start(api("viewer"), rev).status_code == 403
    assert start(api(None), rev).status_code in (401, 403)
    assert Canary.objects.count() == 0
    assert start(api("operator"), rev).status_code == 201
    for action in ("pause", "resume", "promote", "abort"):
        r = api("viewer").post(f"{CANARY_URL}{action}/", {"reason": "no"}, format="json")
        assert r.status_code == 403, action
    assert Canary.objects.get().state == "running"
    assert not AuditEvent.objects.filter(action__in=["canary.pause", "canary.abort", "canary.promote"]).exists()


def test_manual_pause_resume_and_abort_with_reasons(api: Any, db: None) -> None:
    from control.webhooks.models import Delivery, Receiver

    Receiver.objects.create(name="oncall", url="https://hooks.example.com/am", secret="s" * 32,
                            events=["rollback", "alert"])
    op = api("operator")
    start(op, candidate(op))
    assert op.post(f"{CANARY_URL}pause/", {"reason": "lunch"}, format="json").json()["state"] == "paused"
    assert op.post(f"{CANARY_URL}pause/", {"reason": "again"}, format="json").status_code == 409
    assert op.post(f"{CANARY_URL}resume/", {"reason": "back"}, format="json").json()["state"] == "running"
    r = op.post(f"{CANARY_URL}abort/", {"reason": "customers complain"}, format="json")
    assert r.status_code == 200 and (r.json()["state"], r.json()["weight"]) == ("aborted", 0.0)
    actions = list(AuditEvent.objects.filter(target="canary:scheduler").order_by("pk").values_list("action", "reason"))
    assert actions[-3:] == [("canary.pause", "lunch"), ("canary.resume", "back"),
                            ("canary.abort", "customers complain")]
    events = sorted(Delivery.objects.values_list("event", flat=True))
    assert events == ["alert", "rollback"]
    rollback = Delivery.objects.get(event="rollback").payload
    assert rollback["action"] == "canary_abort" and rollback["description"] == "customers complain"
    assert op.post(f"{CANARY_URL}abort/", {"reason": "x"}, format="json").status_code == 409  # nothing live


def test_manual_promote_makes_the_candidate_active_as_a_new_revision(api: Any) -> None:
    op = api("operator")
    rev = candidate(op)
    before = policy.active("scheduler")
    start(op, rev)
    r = op.post(f"{CANARY_URL}promote/", {"reason": "looks good"}, format="json")
    assert r.status_code == 200 and r.json()["state"] == "promoted"
    now = policy.active("scheduler")
    assert now.pk not in (before.pk, rev) and now.parent_id == before.pk and now.document == classic()
    assert now.author == "operator" and r.json()["promoted_to"] == now.pk
    assert AuditEvent.objects.filter(action="canary.promote", actor="operator").count() == 1
    assert AuditEvent.objects.filter(action="policy.create", details__revision=now.pk).count() == 1


def test_a_reason_is_required_for_each_control(api: Any) -> None:
    op = api("operator")
    start(op, candidate(op))
    for action in ("pause", "promote", "abort"):
        r = op.post(f"{CANARY_URL}{action}/", {}, format="json")
        assert r.status_code == 400 and "reason" in r.json()["fields"], action
        r = op.post(f"{CANARY_URL}{action}/", {"reason": "x", "force": True}, format="json")
        assert r.status_code == 400 and "force" in r.json()["fields"], action
    assert Canary.objects.get().state == "running"


BAD = [
    ({"revision": None}, "revision"),
    ({"revision": "x1"}, "revision"),
    ({"revision": True}, "revision"),
    ({"revision": 99999999}, "revision"),
    ({"steps": []}, "steps"),
    ({"steps": "5%"}, "steps"),
    ({"steps": [{"weight": 0, "pause_s": 10}]}, "steps[0].weight"),
    ({"steps": [{"weight": 101, "pause_s": 10}]}, "steps[0].weight"),
    ({"steps": [{"weight": "5", "pause_s": 10}]}, "steps[0].weight"),
    ({"steps": [{"weight": [5], "pause_s": 10}]}, "steps[0].weight"),
    ({"steps": [{"weight": 5, "pause_s": -1}]}, "steps[0].pause_s"),
    ({"steps": [{"weight": 5, "pause_s": 1.5}]}, "steps[0].pause_s"),
    ({"steps": [{"weight": 5}]}, "steps[0].pause_s"),
    ({"steps": [{"weight": 5, "pause_s": 1, "x": 1}]}, "steps[0].x"),
    ({"steps": [{"weight": 50, "pause_s": 1}, {"weight": 10, "pause_s": 1}]}, "steps[1].weight"),
    ({"steps": [{"weight": 5, "pause_s": 1}] * 21}, "steps"),
    ({"steps": [7]}, "steps[0]"),
    ({"analysis": []}, "analysis"),
    ({"analysis": {"failure_limit": -1}}, "analysis.failure_limit"),
    ({"analysis": {"failure_limit": 1.5}}, "analysis.failure_limit"),
    ({"analysis": {"min_requests": 0}}, "analysis.min_requests"),
    ({"analysis": {"window_s": 5000}}, "analysis.window_s"),
    ({"analysis": {"interval_s": "fast"}}, "analysis.interval_s"),
    ({"analysis": {"max_latency_p95_ratio": 0.5}}, "analysis.max_latency_p95_ratio"),
    ({"analysis": {"max_error_rate_diff": 2}}, "analysis.max_error_rate_diff"),
    ({"analysis": {"min_goodput_ratio": True}}, "analysis.min_goodput_ratio"),
    ({"analysis": {"p99": 1}}, "analysis.p99"),
    ({"analysis": {"initial_delay_s": 3601}}, "analysis.initial_delay_s"),
    ({"analysis": {"settle_s": 901}}, "analysis.settle_s"),
    ({"analysis": {"baseline_s": 5}}, "analysis.baseline_s"),
    ({"analysis": {"latency_against": "after"}}, "analysis.latency_against"),
    ({"analysis": {"latency_against": 1}}, "analysis.latency_against"),
    ({"analysis": {"settle_s": -1}}, "analysis.settle_s"),
    ({"analysis": {"latency_against": "switchbacks"}}, "analysis.latency_against"),
    ({"analysis": {"latency_against": ["switchback"]}}, "analysis.latency_against"),
    ({"analysis": {"latency_against": "switchback", "switchback_s": 1}}, "analysis.switchback_s"),
    ({"analysis": {"latency_against": "switchback", "switchback_s": 301}}, "analysis.switchback_s"),
    ({"analysis": {"latency_against": "switchback", "switchback_s": 2.5}}, "analysis.switchback_s"),
    ({"analysis": {"latency_against": "switchback", "switchback_s": "15"}}, "analysis.switchback_s"),
    ({"analysis": {"latency_against": "switchback", "switchback_s": True}}, "analysis.switchback_s"),
    ({"analysis": {"latency_against": "switchback", "switchback_s": 1e308}}, "analysis.switchback_s"),
    ({"analysis": {"latency_against": "switchback", "switchback_s": 61, "window_s": 120}}, "analysis.switchback_s"),
    ({"analysis": {"latency_against": "switchback", "switchback_periods": 1}}, "analysis.switchback_periods"),
    ({"analysis": {"latency_against": "switchback", "switchback_periods": 101}}, "analysis.switchback_periods"),
    ({"analysis": {"latency_against": "switchback", "switchback_periods": 2.5}}, "analysis.switchback_periods"),
    ({"analysis": {"latency_against": "switchback", "switchback_periods": "4"}}, "analysis.switchback_periods"),
    ({"analysis": {"early_settle_s": -1}}, "analysis.early_settle_s"),
    ({"analysis": {"early_settle_s": 901}}, "analysis.early_settle_s"),
    ({"analysis": {"early_settle_s": "soon"}}, "analysis.early_settle_s"),
    ({"analysis": {"early_settle_s": 0.5}}, "analysis.early_settle_s"),
    ({"analysis": {"early_settle_s": 60, "settle_s": 60}}, "analysis.early_settle_s"),
    ({"analysis": {"early_settle_s": 10, "settle_s": 0}}, "analysis.early_settle_s"),
    ({"reason": ""}, "reason"),
    ({"reason": "   "}, "reason"),
    ({"reason": 5}, "reason"),
    ({"reason": "x" * 2001}, "reason"),
    ({"reason": "a\x00b"}, "reason"),
    ({"weight": 5}, "weight"),
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_input_names_the_field_and_starts_nothing(api: Any, change: dict[str, Any], field: str) -> None:
    op = api("operator")
    rev = candidate(op)
    payload = {"revision": rev, "steps": STEPS, "analysis": {}, "reason": "try", **change}
    mark = AuditEvent.objects.order_by("-pk").first().pk
    # Sent as text: the client's own JSON encoder refuses NaN, which a script's may well send.
    r = op.post(CANARY_URL, json.dumps(payload), content_type="application/json")
    assert r.status_code in (400, 404), (r.status_code, r.content)
    assert field in r.json()["fields"], r.json()
    assert Canary.objects.count() == 0
    assert not AuditEvent.objects.filter(pk__gt=mark).exists()


def test_a_body_that_is_not_an_object_is_refused(api: Any) -> None:
    r = api("operator").post(CANARY_URL, [1, 2], format="json")
    assert r.status_code == 400 and Canary.objects.count() == 0


def test_other_kinds_have_no_canary(api: Any) -> None:
    r = api("operator").post("/api/v1/policies/power/canary/", {}, format="json")
    assert r.status_code == 404 and "scheduler or scaling" in r.json()["error"]
    assert api("viewer").get("/api/v1/policies/nope/canary/").status_code == 404
