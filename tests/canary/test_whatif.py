"""POST /api/v1/policies/scheduler/whatif/: the candidate beside the active policy, on the live fleet."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from control.policy.defaults import default_document
from core.audit.models import AuditEvent
from tests.scheduler.conftest import Fleet

URL = "/api/v1/policies/scheduler/whatif/"


def prefer_busy() -> dict[str, Any]:
    """A candidate that turns the GPU term around: it prefers the busy node."""
    doc = copy.deepcopy(default_document("scheduler"))
    for s in doc["scorers"]:
        if s["metric"] == "gpu_free":
            s["weight"] = -0.6
        if s["metric"] == "expected_wait":
            s["weight"] = 0.0
    return doc


@pytest.fixture
def two_nodes(fleet: Fleet) -> Fleet:
    fleet.add("idle-node", "http://127.0.0.1:9/", gpu=5.0)
    fleet.add("busy-node", "http://127.0.0.1:9/", gpu=95.0 - 1.0)
    return fleet


def shares(side: dict[str, Any]) -> dict[str, float]:
    return {n["node"]: n["share"] for n in side["nodes"]}


def test_the_preview_shows_scores_and_shares_under_both_policies(two_nodes: Fleet, api: Any) -> None:
    before = AuditEvent.objects.count()
    r = api("operator").post(URL, {"document": prefer_busy(), "requests": 200}, format="json")
    assert r.status_code == 200, r.content
    out = r.json()
    assert out["requests"] == 200 and out["model"] == "test-model" and out["snapshot_age_s"] < 60
    active, candidate = shares(out["active"]), shares(out["candidate"])
    assert active["idle-node"] > active["busy-node"]
    assert candidate["busy-node"] > candidate["idle-node"]
    assert sum(active.values()) == pytest.approx(1.0) and sum(candidate.values()) == pytest.approx(1.0)
    # The share of requests that would go elsewhere under the candidate.
    assert out["shift"] == pytest.approx(sum(abs(active[n] - candidate[n]) for n in active) / 2, abs=1e-3)
    assert out["shift"] > 0.05
    rows = {n["node"]: n for n in out["active"]["nodes"]}
    assert rows["idle-node"]["score"] > rows["busy-node"]["score"]
    assert {"gpu_free", "cpu_load", "latency", "burst"} <= set(rows["idle-node"]["parts"])
    assert AuditEvent.objects.count() == before  # a preview changes nothing


def test_a_stored_revision_can_be_previewed_and_a_viewer_may_ask(two_nodes: Fleet, api: Any) -> None:
    active = api("operator").get("/api/v1/policies/scheduler/").json()
    r = api("operator").post("/api/v1/policies/scheduler/revisions/",
                             {"document": prefer_busy(), "reason": "try", "parent": active["id"], "activate": False},
                             format="json")
    assert r.status_code == 201, r.content
    out = api("viewer").post(URL, {"revision": r.json()["id"]}, format="json")
    assert out.status_code == 200, out.content
    assert shares(out.json()["candidate"])["busy-node"] > 0.5
    assert api(None).post(URL, {"revision": r.json()["id"]}, format="json").status_code in (401, 403)


def test_a_node_with_no_room_gets_no_predicted_share(two_nodes: Fleet, api: Any) -> None:
    doc = default_document("scheduler")
    doc["filters"]["max_gpu_util_pct"] = 50.0  # the busy node is filtered out
    out = api("viewer").post(URL, {"document": doc}, format="json").json()
    rows = {n["node"]: n for n in out["candidate"]["nodes"]}
    assert rows["busy-node"]["share"] == 0 and rows["busy-node"]["eligible"] is False
    assert rows["busy-node"]["reason"] == "saturated: gpu util"
    assert rows["idle-node"]["share"] == 1.0


@pytest.mark.parametrize(("payload", "field", "words"), [
    ({}, "document", "either document or revision"),
    ({"document": {}, "revision": 1}, "document", "either document or revision"),
    ({"document": {"scorers": [{"metric": "gpu_free", "weight": "x"}]}}, "scorers[0].weight", ""),
    ({"document": {"filters": {"max_gpu_util_pct": 140}}}, "filters.max_gpu_util_pct", ""),
    ({"revision": "abc"}, "revision", "revision"),
    ({"revision": 999999}, "revision", "no scheduler revision"),
    ({"document": {}, "requests": 0}, "requests", "1 to 1000"),
    ({"document": {}, "requests": 5000}, "requests", "1 to 1000"),
    ({"document": {}, "requests": True}, "requests", "1 to 1000"),
    ({"document": {}, "model": ""}, "model", "model"),
    ({"document": {}, "model": 7}, "model", "model"),
    ({"document": {}, "extra": 1}, "extra", "unknown"),
])
def test_bad_input_is_refused_naming_the_field(two_nodes: Fleet, api: Any, payload: dict[str, Any], field: str,
                                               words: str) -> None:
    before = AuditEvent.objects.count()
    r = api("operator").post(URL, payload, format="json")
    assert r.status_code in (400, 404), r.content
    body = r.json()
    assert field in body["fields"], body
    assert words in body["error"]
    assert AuditEvent.objects.count() == before


def test_whatif_is_for_the_scheduler_only(two_nodes: Fleet, api: Any) -> None:
    r = api("operator").post("/api/v1/policies/scaling/whatif/", {"document": {}}, format="json")
    assert r.status_code == 404 and "scheduler" in r.json()["error"]


def test_the_gateways_live_in_flight_and_measured_speeds_are_used(fleet: Fleet, api: Any, redis_db: Any) -> None:
    """Two nodes alike by their samples; the gateways measured one as 20 x slower per request slot and have
    requests in flight on it: the active policy (expected_wait) steers away from it, a policy without that term
    does not."""
    import orjson

    fleet.add("slow-node", "http://127.0.0.1:9/", gpu=50.0)
    fleet.add("fast-node", "http://127.0.0.1:9/", gpu=50.0)
    for gw, (slow_slot, fast_slot) in {"gw-a": (10.0, 0.5), "gw-b": (12.0, 0.6)}.items():
        redis_db.set(f"sy:gw:state:{gw}", orjson.dumps({"id": gw, "nodes": [
            {"node": "slow-node", "in_flight": 3, "slot_s": slow_slot},
            {"node": "fast-node", "in_flight": 1, "slot_s": fast_slot},
            {"node": "gone-node", "in_flight": "x", "slot_s": -1}]}), ex=10)
    redis_db.set("sy:gw:state:broken", b"not json", ex=10)
    blind = copy.deepcopy(default_document("scheduler"))
    for s in blind["scorers"]:
        if s["metric"] == "expected_wait":
            s["weight"] = 0.0
    out = api("viewer").post(URL, {"document": blind, "requests": 40}, format="json").json()
    assert out["live_in_flight"] == 8 and out["measured_speeds"] == 2
    active, candidate = shares(out["active"]), shares(out["candidate"])
    assert active["fast-node"] >= 0.75
    assert abs(candidate["fast-node"] - candidate["slow-node"]) <= 0.2
    rows = {n["node"]: n for n in out["active"]["nodes"]}
    assert rows["slow-node"]["in_flight"] == 6 and rows["fast-node"]["in_flight"] == 2
