"""The scheduler's hooks in shared code: change notifications, token priority classes, older policy documents."""

from __future__ import annotations

import time
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from control.policy import service as policy_service
from control.policy.defaults import default_document
from control.policy.schemas import validate
from dashboard.accounts.models import UserToken
from dashboard.metrics import latest
from tests.conftest import make_node, make_user


def client_for(role: str) -> APIClient:
    c = APIClient()
    c.credentials(HTTP_AUTHORIZATION=f"Token {make_user(role, role)}")
    return c


def messages(pubsub: Any, wait: float = 2.0) -> list[tuple[str, str]]:
    out, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        m = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if m:
            out.append((m["channel"].decode(), m["data"].decode()))
        elif out:
            break
    return out


@pytest.fixture
def listener(redis_db: Any) -> Any:
    pubsub = redis_db.pubsub()
    pubsub.subscribe("sy:policy", "sy:nodes")
    pubsub.get_message(timeout=1)
    pubsub.get_message(timeout=1)
    yield pubsub
    pubsub.close()


def test_policy_activation_and_rollback_are_announced_after_commit(db: None, listener: Any,
                                                                  django_capture_on_commit_callbacks: Any) -> None:
    ops = client_for("operator")
    doc = ops.get("/api/v1/policies/scheduler/").json()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        r = ops.post("/api/v1/policies/scheduler/revisions/",
                     {"document": doc["document"], "reason": "same again", "parent": doc["id"]}, format="json")
        assert r.status_code == 201
    assert messages(listener, 0.3) == []  # nothing before the commit
    for cb in callbacks:
        cb()
    assert messages(listener) == [("sy:policy", "scheduler")]
    with django_capture_on_commit_callbacks(execute=True):
        r = ops.post("/api/v1/policies/scheduler/rollback/", {"revision": doc["id"], "reason": "back"},
                     format="json")
        assert r.status_code == 201
    assert messages(listener) == [("sy:policy", "scheduler")]


def test_a_redis_failure_does_not_fail_the_activation(db: None, monkeypatch: Any,
                                                       django_capture_on_commit_callbacks: Any) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(latest, "redis_client", lambda: dead)
    ops = client_for("operator")
    doc = ops.get("/api/v1/policies/priorities/").json()
    with django_capture_on_commit_callbacks(execute=True):
        r = ops.post("/api/v1/policies/priorities/revisions/",
                     {"document": doc["document"], "reason": "redis is down", "parent": doc["id"]}, format="json")
    assert r.status_code == 201
    assert policy_service.active("priorities").pk == r.json()["id"]


def test_node_actions_are_announced(db: None, listener: Any, django_capture_on_commit_callbacks: Any) -> None:
    make_node("gpu-x", "pool-a")
    ops = client_for("operator")
    for action in ("drain", "uncordon", "cordon"):
        with django_capture_on_commit_callbacks(execute=True):
            assert ops.post(f"/api/v1/nodes/gpu-x/{action}/", {"reason": "test"}, format="json").status_code == 200
        assert messages(listener) == [("sy:nodes", "gpu-x")]
    with django_capture_on_commit_callbacks(execute=True):  # a no-op changes nothing and announces nothing
        ops.post("/api/v1/nodes/gpu-x/cordon/", {"reason": "again"}, format="json")
    assert messages(listener, 0.3) == []


def test_tokens_carry_a_priority_class(db: None) -> None:
    viewer = client_for("viewer")
    r = viewer.post("/api/v1/tokens/", {"name": "nightly", "reason": "reports", "priority_class": "batch"},
                    format="json")
    assert r.status_code == 201 and r.json()["priority_class"] == "batch"
    assert UserToken.objects.get(pk=r.json()["id"]).priority_class == "batch"
    before = UserToken.objects.count()
    bad = viewer.post("/api/v1/tokens/", {"name": "x", "reason": "y", "priority_class": "vip"}, format="json")
    assert bad.status_code == 400
    assert bad.json()["fields"]["priority_class"].startswith("unknown priority class 'vip'")
    assert UserToken.objects.count() == before
    plain = viewer.post("/api/v1/tokens/", {"name": "p", "reason": "default"}, format="json").json()
    assert plain["priority_class"] == ""

    out = StringIO()
    call_command("createuser", "batcher", "--role", "viewer", "--class", "batch", stdout=out)
    assert UserToken.objects.filter(user__username="batcher").get().priority_class == "batch"
    with pytest.raises(CommandError, match="unknown priority class 'gold'"):
        call_command("createuser", "gold", "--role", "viewer", "--class", "gold", stdout=StringIO())


def test_an_older_scheduler_document_gets_the_new_sections_by_default() -> None:
    old = default_document("scheduler")
    for key in ("latency", "load", "retry", "quarantine", "cache", "shedding"):
        old.pop(key)
    old["filters"].pop("require_inference_up")
    old["scorers"] = [s for s in old["scorers"] if s["metric"] != "in_flight"]
    doc = validate("scheduler", old)
    assert doc["load"] == {"node_capacity": 32, "burst_correction": 1.0}
    assert doc["quarantine"] == {"failures": 3, "cooldown_s": 30.0}
    assert doc["filters"]["require_inference_up"] is True
    with pytest.raises(Exception, match="burst_correction"):
        validate("scheduler", {**old, "load": {"burst_correction": -1}})
