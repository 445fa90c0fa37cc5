"""NetBox-style: every control-plane API endpoint, called by anonymous, viewer, operator and admin.

Each gets 401 (anonymous, JSON error), 403 (role too low) or its success status; every mutating call that succeeds
writes exactly the expected audit events, with the caller as actor, the reason given, the response's X-Request-ID
and the client address."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from control.policy import service
from control.tokens.service import issue
from core.audit.context import Origin
from core.audit.models import AuditEvent
from core.roles import RANK
from dashboard.fleet.models import Node
from tests.conftest import make_node
from tests.control.conftest import events_since, last_event_id

REASON = "access test"
State = dict[str, Any]


@dataclass
class Endpoint:
    id: str
    method: str
    path: Callable[[State], str]
    min_role: str
    status: int
    body: Callable[[State], dict[str, Any]] | None = None
    setup: Callable[[State, str | None], None] | None = None
    # (action, target) per expected event; the target may be computed from the response.
    audit: list[tuple[str, Callable[[Any], str]]] = field(default_factory=list)


def const(value: Any) -> Callable[..., Any]:
    return lambda *_: value


def _staged_scaling(state: State, role: str | None) -> None:
    current = service.active("scaling")
    doc = {**current.document, "default": {**current.document["default"], "max_nodes": 99}}
    state["staged"] = service.create_revision("scaling", doc, "staged", current.pk, Origin.system(),
                                              activate=False).revision.pk


def _changed_power(state: State, role: str | None) -> None:
    first = service.active("power")
    state["power_v1"] = first.pk
    doc = {"default": {"mode": "cap", "cap_w": 400}, "pools": {}}
    service.create_revision("power", doc, "cap", first.pk, Origin.system())


def _own_token(state: State, role: str | None) -> None:
    owner = get_user_model().objects.get(username=role or "viewer")
    state["token"] = issue(owner, "to-revoke", Origin.system(), "setup")[0].pk


def _node(state: State, role: str | None, node_state: str = "active") -> None:
    make_node("gpu-a-1", "pool-a")
    Node.objects.filter(name="gpu-a-1").update(state=node_state)


def _event(state: State, role: str | None) -> None:
    state["event"] = AuditEvent.objects.order_by("-id").first().pk


SCHED = "/api/v1/policies/scheduler/"
ENDPOINTS = [
    Endpoint("policies", "get", const("/api/v1/policies/"), "viewer", 200),
    Endpoint("active", "get", const(SCHED), "viewer", 200),
    Endpoint("schema", "get", const(SCHED + "schema/"), "viewer", 200),
    Endpoint("revisions", "get", const(SCHED + "revisions/"), "viewer", 200),
    Endpoint("revision", "get", lambda s: f"{SCHED}revisions/{service.active('scheduler').pk}/", "viewer", 200),
    Endpoint("diff", "get", lambda s: f"{SCHED}diff/?a={service.active('scheduler').pk}&b="
             f"{service.active('scheduler').pk}", "viewer", 200),
    Endpoint("preview", "post", const(SCHED + "preview/"), "viewer", 200,
             body=lambda s: {"document": service.active("scheduler").document}),
    Endpoint("create", "post", const(SCHED + "revisions/"), "operator", 201,
             body=lambda s: {"document": service.active("scheduler").document, "reason": REASON,
                             "parent": service.active("scheduler").pk},
             audit=[("policy.create", const("policy:scheduler"))]),
    Endpoint("activate", "post", const("/api/v1/policies/scaling/activate/"), "operator", 200,
             setup=_staged_scaling, body=lambda s: {"revision": s["staged"], "reason": REASON},
             audit=[("policy.activate", const("policy:scaling"))]),
    Endpoint("rollback", "post", const("/api/v1/policies/power/rollback/"), "operator", 201,
             setup=_changed_power, body=lambda s: {"revision": s["power_v1"], "reason": REASON},
             audit=[("policy.rollback", const("policy:power"))]),
    Endpoint("audit", "get", const("/api/v1/audit/"), "viewer", 200),
    Endpoint("audit-event", "get", lambda s: f"/api/v1/audit/{s['event']}/", "viewer", 200, setup=_event),
    Endpoint("tokens", "get", const("/api/v1/tokens/"), "viewer", 200),
    Endpoint("token-create", "post", const("/api/v1/tokens/"), "viewer", 201,
             body=const({"name": "ci", "reason": REASON}),
             audit=[("token.create", lambda r: f"token:{r.json()['id']}")]),
    Endpoint("token-revoke", "post", lambda s: f"/api/v1/tokens/{s['token']}/revoke/", "viewer", 200,
             setup=_own_token, body=const({"reason": REASON}),
             audit=[("token.revoke", lambda r: f"token:{r.json()['id']}")]),
    Endpoint("drain", "post", const("/api/v1/nodes/gpu-a-1/drain/"), "operator", 200, setup=_node,
             body=const({"reason": REASON}), audit=[("node.drain", const("node:gpu-a-1"))]),
    Endpoint("cordon", "post", const("/api/v1/nodes/gpu-a-1/cordon/"), "operator", 200, setup=_node,
             body=const({"reason": REASON}), audit=[("node.cordon", const("node:gpu-a-1"))]),
    Endpoint("uncordon", "post", const("/api/v1/nodes/gpu-a-1/uncordon/"), "operator", 200,
             setup=lambda s, r: _node(s, r, "draining"), body=const({"reason": REASON}),
             audit=[("node.uncordon", const("node:gpu-a-1"))]),
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
    if ep.method == "get":
        response = client.get(path)
    else:
        response = client.post(path, ep.body(state) if ep.body else {}, format="json")

    assert response["X-Request-ID"], "every response carries a request id"
    if role is None:
        assert response.status_code == 401, response.content
        assert set(response.json()) == {"error", "fields"} and response.json()["error"]
        assert events_since(mark) == []
        return
    if RANK[role] < RANK[ep.min_role]:
        assert response.status_code == 403, response.content
        assert "role" in response.json()["error"]
        assert events_since(mark) == []
        return
    assert response.status_code == ep.status, response.content
    events = events_since(mark)
    assert [(e.action, e.target) for e in events] == [(a, t(response)) for a, t in ep.audit]
    for event in events:
        assert event.actor == role
        assert event.reason == REASON
        assert event.request_id == response["X-Request-ID"]
        assert event.client == "127.0.0.1"
