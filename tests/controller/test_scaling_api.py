"""The scaling and provider API: roles on every endpoint, manual scale and revert through a real simulated fleet,
bad input answered with what is wrong and nothing stored, every change audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from agents.sim.background import BackgroundFleet
from control.controller import actions
from control.controller.models import PoolProvider, ScalingAction
from core.audit.models import AuditEvent
from tests.controller.conftest import bind_local
from tests.controller.test_actions import set_pool_policy

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("redis_db")]
API = Callable[[str | None], APIClient]
POOL = "ctl"


def scale(api: API, role: str | None, body: Any, pool: str = POOL) -> Any:
    return api(role).post(f"/api/v1/scaling/pools/{pool}/scale/", body, format="json")


@pytest.mark.parametrize("path", ["/api/v1/scaling/pools/", "/api/v1/scaling/actions/", "/api/v1/power/"])
def test_reading_needs_the_viewer_role(api: API, path: str) -> None:
    assert api(None).get(path).status_code in (401, 403)
    assert api("viewer").get(path).status_code == 200


def test_pools_show_provider_sizes_and_policy_bounds(api: API, fleet: BackgroundFleet) -> None:
    from control.controller import loop

    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=1, max_nodes=3)
    loop.tick()  # below min: the controller scales to 1 and publishes what it saw
    pools = {p["pool"]: p for p in api("viewer").get("/api/v1/scaling/pools/").json()}
    p = pools[POOL]
    assert (p["provider"], p["min"], p["max"]) == ("local", 1, 3)
    assert p["desired"] == 1 and p["error"] == ""
    assert ScalingAction.objects.get().rule == "min_nodes"


def test_manual_scale_needs_an_operator_and_is_audited(api: API, fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=3)
    assert scale(api, "viewer", {"size": 2, "reason": "peak"}).status_code == 403
    assert scale(api, None, {"size": 2, "reason": "peak"}).status_code in (401, 403)
    assert not ScalingAction.objects.exists()
    r = scale(api, "operator", {"size": 2, "reason": "launch at 14:00"})
    assert r.status_code == 201, r.content
    doc = r.json()
    assert (doc["from_size"], doc["to_size"], doc["rule"], doc["actor"], doc["state"]) == (
        0, 2, "manual", "operator", "pending")
    event = AuditEvent.objects.get(action="scaling.scale_out")
    assert event.actor == "operator" and event.reason == "launch at 14:00" and event.request_id
    # The controller carries it out on its next tick.
    from control.controller import loop

    loop.tick()
    assert ScalingAction.objects.get(pk=doc["id"]).state == "done" and len(fleet.nodes) == 2
    # Revert: back to 0, a new audited action that points at the old one.
    r = api("operator").post(f"/api/v1/scaling/actions/{doc['id']}/revert/", {"reason": "too many"}, format="json")
    assert r.status_code == 201, r.content
    assert (r.json()["to_size"], r.json()["reverts"], r.json()["rule"]) == (0, doc["id"], f"revert #{doc['id']}")
    assert AuditEvent.objects.filter(action="scaling.scale_in", details__reverts=doc["id"]).exists()


@pytest.mark.parametrize(("body", "status", "message", "field"), [
    ({"size": 2}, 400, "reason is required", "reason"),
    ({"size": 2, "reason": "   "}, 400, "reason is required", "reason"),
    ({"size": "two", "reason": "x"}, 400, "whole number", "size"),
    ({"size": 2.5, "reason": "x"}, 400, "whole number", "size"),
    ({"size": True, "reason": "x"}, 400, "whole number", "size"),
    ({"size": -1, "reason": "x"}, 400, "outside the pool's scaling policy", "size"),
    ({"size": 9, "reason": "x"}, 400, "outside the pool's scaling policy", "size"),
    ({"size": 2, "reason": "x", "force": True}, 400, "unknown field", "force"),
    ({"size": 2, "reason": "x\x00y"}, 400, "NUL", "reason"),
    ([1, 2], 400, "JSON object", "$"),
])
def test_bad_manual_scale_requests_say_what_is_wrong_and_store_nothing(
        api: API, fleet: BackgroundFleet, body: Any, status: int, message: str, field: str) -> None:
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=3)
    r = scale(api, "operator", body)
    assert r.status_code == status, r.content
    assert message in r.json()["error"] and field in r.json()["fields"], r.json()
    assert not ScalingAction.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="scaling.").exists()
    assert fleet.nodes == []


def test_scaling_a_pool_without_provider_or_twice_is_refused(api: API, fleet: BackgroundFleet) -> None:
    r = scale(api, "operator", {"size": 1, "reason": "x"}, pool="nowhere")
    assert r.status_code == 404 and "no pool named 'nowhere'" in r.json()["error"]
    from dashboard.fleet.models import Pool

    Pool.objects.create(name="bare")
    r = scale(api, "operator", {"size": 1, "reason": "x"}, pool="bare")
    assert r.status_code == 409 and "has no provider" in r.json()["error"]
    bind_local(POOL, fleet)
    assert scale(api, "operator", {"size": 1, "reason": "x"}).status_code == 201
    r = scale(api, "operator", {"size": 2, "reason": "x"})
    assert r.status_code == 409 and "in progress" in r.json()["error"]
    assert ScalingAction.objects.count() == 1


def test_only_done_actions_can_be_reverted(api: API, fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    pending = scale(api, "operator", {"size": 1, "reason": "x"}).json()
    r = api("operator").post(f"/api/v1/scaling/actions/{pending['id']}/revert/", {"reason": "undo"}, format="json")
    assert r.status_code == 409 and "only a done action" in r.json()["error"]
    assert api("viewer").post(f"/api/v1/scaling/actions/{pending['id']}/revert/", {"reason": "undo"},
                              format="json").status_code == 403
    assert api("operator").post("/api/v1/scaling/actions/99999/revert/", {"reason": "u"},
                                format="json").status_code == 404
    assert ScalingAction.objects.count() == 1


def test_action_list_filters_and_checks_its_parameters(api: API, fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    scale(api, "operator", {"size": 1, "reason": "x"})
    assert len(api("viewer").get("/api/v1/scaling/actions/?pool=ctl&state=pending").json()) == 1
    assert api("viewer").get("/api/v1/scaling/actions/?state=done").json() == []
    r = api("viewer").get("/api/v1/scaling/actions/?state=exploded")
    assert r.status_code == 400 and "state" in r.json()["fields"]
    r = api("viewer").get("/api/v1/scaling/actions/?limit=0")
    assert r.status_code == 400 and "limit" in r.json()["fields"]


def test_providers_are_admin_only_validated_and_audited(api: API, fleet: BackgroundFleet) -> None:
    from dashboard.fleet.models import Pool

    Pool.objects.create(name="gpu-east")
    body = {"kind": "aws", "config": {"asg": "llm-east", "region": "us-east-1"}, "reason": "move to AWS"}
    for role in (None, "viewer", "operator"):
        assert api(role).put("/api/v1/providers/gpu-east/", body, format="json").status_code in (401, 403)
        assert api(role).get("/api/v1/providers/").status_code in (401, 403)
    assert not PoolProvider.objects.exists()
    r = api("admin").put("/api/v1/providers/gpu-east/", body, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["kind"] == "aws" and r.json()["config"]["asg"] == "llm-east"
    event = AuditEvent.objects.get(action="provider.set")
    assert event.actor == "admin" and event.after["config"]["asg"] == "llm-east" and event.before is None
    assert api("admin").get("/api/v1/providers/gpu-east/").json()["kind"] == "aws"
    r = api("admin").delete("/api/v1/providers/gpu-east/", {"reason": "back to local"}, format="json")
    assert r.status_code == 204 and not PoolProvider.objects.exists()
    assert AuditEvent.objects.get(action="provider.remove").before["config"]["asg"] == "llm-east"


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"kind": "gcp", "reason": "x"}, "kind", "must be one of"),
    ({"kind": "aws", "config": {}, "reason": "x"}, "asg", "required"),
    ({"kind": "aws", "config": {"asg": "a", "secret_access_key": "AKIA..."}, "reason": "x"}, "secret_access_key",
     "looks like a secret"),
    ({"kind": "aws", "config": {"asg": "a", "colour": "red"}, "reason": "x"}, "colour", "unknown key"),
    ({"kind": "local", "config": "http://x", "reason": "x"}, "config", "JSON object"),
    ({"kind": "local", "config": {}, "enabled": "yes", "reason": "x"}, "enabled", "true or false"),
    ({"kind": "local", "config": {}}, "reason", "required"),
])
def test_bad_provider_settings_are_refused_with_the_field(api: API, body: Any, field: str, message: str) -> None:
    from dashboard.fleet.models import Pool

    Pool.objects.create(name="gpu-east")
    r = api("admin").put("/api/v1/providers/gpu-east/", body, format="json")
    assert r.status_code == 400, r.content
    assert field in r.json()["fields"] and message in r.json()["fields"][field] + r.json()["error"], r.json()
    assert not PoolProvider.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="provider.").exists()


def test_forecast_endpoint_checks_its_parameters(api: API, fleet: BackgroundFleet) -> None:
    bind_local(POOL, fleet)
    r = api("viewer").get(f"/api/v1/scaling/pools/{POOL}/forecast/")
    assert r.status_code == 200 and r.json()["forecast"] == [] and r.json()["mape"] is None
    assert api("viewer").get(f"/api/v1/scaling/pools/{POOL}/forecast/?hours=0").status_code == 400
    assert api("viewer").get("/api/v1/scaling/pools/nope/forecast/").status_code == 404


def test_action_error_messages_reach_the_operator(fleet: BackgroundFleet) -> None:
    from core.audit.context import Origin

    with pytest.raises(actions.ActionError, match="no scaling action 12345"):
        actions.revert(12345, "x", Origin.system("t"))
