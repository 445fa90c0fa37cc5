"""Drain, cordon and uncordon over the API: state changes, audit with before/after, no-ops change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dashboard.fleet.models import Node
from tests.conftest import make_node
from tests.control.conftest import events_since, last_event_id


def test_drain_cordon_uncordon_cycle(api: Callable[..., Any]) -> None:
    make_node("gpu-a-1", "pool-a")
    op = api("operator")
    mark = last_event_id()
    for action, state in (("drain", "draining"), ("cordon", "cordoned"), ("uncordon", "active")):
        response = op.post(f"/api/v1/nodes/gpu-a-1/{action}/", {"reason": f"{action} for maintenance"},
                           format="json")
        assert response.status_code == 200, response.content
        assert response.json()["state"] == state and response.json()["changed"] is True
        assert Node.objects.get(name="gpu-a-1").state == state
    events = events_since(mark)
    assert [(e.action, e.before, e.after) for e in events] == [
        ("node.drain", {"state": "active"}, {"state": "draining"}),
        ("node.cordon", {"state": "draining"}, {"state": "cordoned"}),
        ("node.uncordon", {"state": "cordoned"}, {"state": "active"}),
    ]
    assert all(e.details == {"pool": "pool-a"} for e in events)


def test_a_no_op_changes_and_audits_nothing(api: Callable[..., Any]) -> None:
    make_node("gpu-a-1", "pool-a")
    mark = last_event_id()
    response = api("operator").post("/api/v1/nodes/gpu-a-1/uncordon/", {"reason": "x"}, format="json")
    assert response.status_code == 200 and response.json()["changed"] is False
    assert events_since(mark) == []


def test_node_action_input_checks(api: Callable[..., Any]) -> None:
    make_node("gpu-a-1", "pool-a")
    op = api("operator")
    mark = last_event_id()
    assert op.post("/api/v1/nodes/gpu-a-1/drain/", {}, format="json").status_code == 400
    assert op.post("/api/v1/nodes/gpu-a-1/drain/", {"reason": ""}, format="json").status_code == 400
    assert op.post("/api/v1/nodes/gpu-a-1/drain/", {"reason": "r", "force": True}, format="json").status_code == 400
    assert op.post("/api/v1/nodes/nope/drain/", {"reason": "r"}, format="json").status_code == 404
    assert op.post("/api/v1/nodes/BAD%00/drain/", {"reason": "r"}, format="json").status_code == 404
    assert op.post("/api/v1/nodes/gpu-a-1/reboot/", {"reason": "r"}, format="json").status_code == 404
    assert Node.objects.get(name="gpu-a-1").state == "active" and events_since(mark) == []
