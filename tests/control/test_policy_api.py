"""Policy API behaviour: lost-update protection (409, If-Match/412), rollback, activate, diff, bad documents of
every kind, hostile input and the size bound. Nothing refused is ever stored."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from control.policy.defaults import DEFAULTS
from control.policy.models import ActivePolicy, PolicyRevision
from control.policy.schemas import KINDS
from core.api import MAX_BODY_BYTES
from core.audit.models import AuditEvent
from tests.control.conftest import events_since, last_event_id

BASE = "/api/v1/policies"


def snapshot() -> tuple[int, int, list[tuple[str, int]]]:
    """What a refused request must leave untouched: revisions, audit events, active pointers."""
    return (PolicyRevision.objects.count(), AuditEvent.objects.count(),
            sorted(ActivePolicy.objects.values_list("kind", "revision_id")))


def active(api: Callable[..., Any], kind: str = "scheduler") -> dict[str, Any]:
    response = api("viewer").get(f"{BASE}/{kind}/")
    assert response.status_code == 200
    return response.json()


def with_weight(doc: dict[str, Any], metric: str, weight: float) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for scorer in doc["scorers"]:
        if scorer["metric"] == metric:
            scorer["weight"] = weight
    return doc


def test_defaults_exist_without_any_step(api: Callable[..., Any]) -> None:
    listed = api("viewer").get(f"{BASE}/").json()
    assert [r["kind"] for r in listed] == list(KINDS)
    for row in listed:
        assert row["version"] == 1 and row["author"] == "system" and row["active"] is True
        assert row["document"] == DEFAULTS[row["kind"]]
    sched = active(api)
    assert set(sched) >= {"id", "version", "document", "author", "reason", "created"}


def test_two_operators_editing_the_same_parent_second_gets_409(api: Callable[..., Any]) -> None:
    base = active(api)
    first = api("operator").post(f"{BASE}/scheduler/revisions/", {
        "document": with_weight(base["document"], "queue_depth", 0.2), "reason": "turn on queue scorer",
        "parent": base["id"]}, format="json")
    assert first.status_code == 201, first.content
    assert first.json()["version"] == 2 and first.json()["active"] is True and first.json()["parent"] == base["id"]
    before = snapshot()
    second = api("admin").post(f"{BASE}/scheduler/revisions/", {
        "document": with_weight(base["document"], "kv_cache", 0.3), "reason": "turn on kv scorer",
        "parent": base["id"]}, format="json")
    assert second.status_code == 409, second.content
    assert "no longer the active" in second.json()["error"] and "parent" in second.json()["fields"]
    assert snapshot() == before
    assert active(api)["id"] == first.json()["id"]


def test_etag_and_if_match(api: Callable[..., Any]) -> None:
    response = api("viewer").get(f"{BASE}/scheduler/")
    etag = response["ETag"]
    assert etag == f'"{response.json()["id"]}"'
    doc = with_weight(response.json()["document"], "gpu_free", 0.7)
    ok = api("operator").post(f"{BASE}/scheduler/revisions/", {"document": doc, "reason": "more gpu"},
                              format="json", HTTP_IF_MATCH=etag)
    assert ok.status_code == 201, ok.content
    assert ok["ETag"] == f'"{ok.json()["id"]}"'
    before = snapshot()
    stale = api("operator").post(f"{BASE}/scheduler/revisions/", {"document": doc, "reason": "again"},
                                 format="json", HTTP_IF_MATCH=etag)
    assert stale.status_code == 412, stale.content
    assert "If-Match" in stale.json()["fields"]
    rollback = api("operator").post(f"{BASE}/scheduler/rollback/", {"revision": response.json()["id"],
                                    "reason": "x"}, format="json", HTTP_IF_MATCH=etag)
    assert rollback.status_code == 412
    assert snapshot() == before


def test_parent_or_if_match_is_required(api: Callable[..., Any]) -> None:
    before = snapshot()
    response = api("operator").post(f"{BASE}/scheduler/revisions/", {
        "document": DEFAULTS["scheduler"], "reason": "no parent"}, format="json")
    assert response.status_code == 400 and "parent" in response.json()["fields"]
    assert snapshot() == before


def test_rollback_restores_the_earlier_content_exactly_and_is_audited(api: Callable[..., Any]) -> None:
    v1 = active(api)
    v2 = api("operator").post(f"{BASE}/scheduler/revisions/", {
        "document": with_weight(v1["document"], "gpu_free", 0.9), "reason": "push gpu", "parent": v1["id"]},
        format="json").json()
    assert active(api)["document"] != v1["document"]
    mark = last_event_id()
    response = api("operator").post(f"{BASE}/scheduler/rollback/", {"revision": v1["id"], "reason": "latency up"},
                                    format="json")
    assert response.status_code == 201, response.content
    v3 = response.json()
    assert v3["version"] == 3 and v3["restored_from"] == v1["id"] and v3["parent"] == v2["id"]
    now = active(api)
    assert now["id"] == v3["id"] and now["document"] == v1["document"]
    assert json.dumps(now["document"]) == json.dumps(v1["document"])  # same order, same types
    [event] = events_since(mark)
    assert (event.action, event.target, event.actor, event.reason) == (
        "policy.rollback", "policy:scheduler", "operator", "latency up")
    assert event.before == v2["document"] and event.after == v1["document"]
    assert event.details["restored_from"] == v1["id"] and event.request_id == response["X-Request-ID"]
    # History only grows: all three revisions are there.
    assert [r["version"] for r in api("viewer").get(f"{BASE}/scheduler/revisions/").json()["results"]] == [3, 2, 1]


def test_rollback_to_the_active_revision_is_a_conflict(api: Callable[..., Any]) -> None:
    before = snapshot()
    response = api("operator").post(f"{BASE}/scheduler/rollback/", {"revision": active(api)["id"], "reason": "r"},
                                    format="json")
    assert response.status_code == 409 and snapshot() == before


def test_staged_revision_then_activate(api: Callable[..., Any]) -> None:
    v1 = active(api, "alerts")
    rule = {"name": "hot-gpu", "metric": "temp_c", "comparison": ">", "threshold": 85, "for_s": 120,
            "severity": "critical", "scope": "gpu"}
    staged = api("operator").post(f"{BASE}/alerts/revisions/", {
        "document": {"rules": [rule]}, "reason": "stage", "parent": v1["id"], "activate": False}, format="json")
    assert staged.status_code == 201 and staged.json()["active"] is False
    assert active(api, "alerts")["id"] == v1["id"]
    mark = last_event_id()
    response = api("operator").post(f"{BASE}/alerts/activate/", {"revision": staged.json()["id"], "reason": "go"},
                                    format="json")
    assert response.status_code == 200 and response.json()["active"] is True
    assert active(api, "alerts")["document"]["rules"][0]["name"] == "hot-gpu"
    assert [e.action for e in events_since(mark)] == ["policy.activate"]


def test_diff_between_two_revisions(api: Callable[..., Any]) -> None:
    v1 = active(api)
    v2 = api("operator").post(f"{BASE}/scheduler/revisions/", {
        "document": with_weight(v1["document"], "latency", -0.2), "reason": "latency matters more",
        "parent": v1["id"]}, format="json").json()
    response = api("viewer").get(f"{BASE}/scheduler/diff/", {"a": v1["id"], "b": v2["id"]})
    assert response.status_code == 200
    body = response.json()
    assert body["changes"] == [{"path": "scorers[2].weight", "op": "changed", "before": -0.1, "after": -0.2}]
    assert '-      "weight": -0.1' in body["unified"] and '+      "weight": -0.2' in body["unified"]
    assert api("viewer").get(f"{BASE}/scheduler/diff/", {"a": v1["id"], "b": "x"}).status_code == 400
    assert api("viewer").get(f"{BASE}/scheduler/diff/", {"a": v1["id"], "b": 10**9}).status_code == 404
    # A revision of another kind is not found under this kind.
    other = active(api, "power")["id"]
    assert api("viewer").get(f"{BASE}/scheduler/diff/", {"a": v1["id"], "b": other}).status_code == 404


def test_preview_validates_and_diffs_without_storing(api: Callable[..., Any]) -> None:
    before = snapshot()
    response = api("viewer").post(f"{BASE}/scheduler/preview/", {
        "document": with_weight(DEFAULTS["scheduler"], "kv_cache", 0.1)}, format="json")
    assert response.status_code == 200
    assert response.json()["changes"] == [{"path": "scorers[4].weight", "op": "changed", "before": 0.0,
                                           "after": 0.1}]
    bad = api("viewer").post(f"{BASE}/scheduler/preview/", {"document": {"scorers": []}}, format="json")
    assert bad.status_code == 400 and "scorers" in bad.json()["fields"]
    assert snapshot() == before


# One bad document per kind (and a few more), with the path each must be refused at.
BAD = [
    ("scheduler", lambda d: d["scorers"][0].update(weight="heavy"), "scorers[0].weight"),
    ("scheduler", lambda d: d["scorers"][1].update(metric="gpu_temp"), "scorers[1].metric"),
    ("scheduler", lambda d: d["scorers"].append({"metric": "gpu_free", "weight": 1}), "scorers"),
    ("scheduler", lambda d: d["picker"].update(tie_break="coin"), "picker.tie_break"),
    ("scheduler", lambda d: d.update(extra=1), "extra"),
    ("scaling", lambda d: d["default"]["rules"][0].update(threshold=140), "default.rules[0]"),
    ("scaling", lambda d: d["default"]["rules"][1].update(threshold=-1), "default.rules[1].threshold"),
    ("scaling", lambda d: d["default"].update(min_nodes=10, max_nodes=2), "default.max_nodes"),
    ("scaling", lambda d: d["default"]["predictive"].update(horizon_min=0), "default.predictive.horizon_min"),
    ("scaling", lambda d: d["pools"].update({"Bad Pool": d["default"]}), "pools['Bad Pool']"),
    ("priorities", lambda d: d.update(default_class="vip"), "$"),
    ("priorities", lambda d: d["classes"][2].update(queue_limit=-5), "classes[2].queue_limit"),
    ("priorities", lambda d: d["classes"][0].pop("sheddable"), "classes[0].sheddable"),
    ("power", lambda d: d["default"].update(mode="cap"), "default"),
    ("power", lambda d: d["default"].update(mode="cap", cap_w=10), "default.cap_w"),
    ("alerts", lambda d: d["rules"][0].update(metric="nope"), "rules[0].metric"),
    ("alerts", lambda d: d["rules"][0].update(comparison="~"), "rules[0].comparison"),
]


@pytest.mark.parametrize(("kind", "mutate", "path"), BAD, ids=[f"{k}-{p}" for k, _, p in BAD])
def test_invalid_documents_get_400_with_the_path_and_nothing_is_stored(
        api: Callable[..., Any], kind: str, mutate: Callable[[dict[str, Any]], None], path: str) -> None:
    current = active(api, kind)
    doc = copy.deepcopy(current["document"])
    mutate(doc)
    before = snapshot()
    response = api("operator").post(f"{BASE}/{kind}/revisions/", {"document": doc, "reason": "bad",
                                    "parent": current["id"]}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert set(body) == {"error", "fields"}
    assert path in body["fields"], body
    assert body["error"].startswith("invalid document")
    assert snapshot() == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_document_that_is_not_an_object_is_refused_for_every_kind(api: Callable[..., Any], kind: str) -> None:
    current = active(api, kind)
    before = snapshot()
    for doc in ([], "x", 3, None):
        response = api("operator").post(f"{BASE}/{kind}/revisions/", {"document": doc, "reason": "bad",
                                        "parent": current["id"]}, format="json")
        assert response.status_code == 400, (doc, response.content)
        assert response.json()["fields"]
    assert snapshot() == before


@pytest.mark.parametrize("reason", [None, "", "   ", 42])
def test_a_reason_is_required(api: Callable[..., Any], reason: Any) -> None:
    current = active(api)
    before = snapshot()
    payload = {"document": current["document"], "parent": current["id"]}
    if reason is not None:
        payload["reason"] = reason
    response = api("operator").post(f"{BASE}/scheduler/revisions/", payload, format="json")
    assert response.status_code == 400 and "reason" in response.json()["fields"]
    rollback = api("operator").post(f"{BASE}/scheduler/rollback/", {"revision": current["id"]}, format="json")
    assert rollback.status_code == 400 and "reason" in rollback.json()["fields"]
    assert snapshot() == before


def test_hostile_input(api: Callable[..., Any]) -> None:
    op = api("operator")
    current = active(api)
    before = snapshot()
    url = f"{BASE}/scheduler/revisions/"
    not_json = op.post(url, data="{not json", content_type="application/json")
    assert not_json.status_code == 400 and "JSON parse error" in not_json.json()["error"]
    nan = op.post(url, data='{"document": {"x": NaN}, "reason": "r", "parent": 1}', content_type="application/json")
    assert nan.status_code == 400
    deep = op.post(url, data="[" * 50_000 + "]" * 50_000, content_type="application/json")
    assert deep.status_code == 400
    form = op.post(url, data={"document": "{}", "reason": "r"})
    assert form.status_code == 415
    huge_doc = {"scorers": [{"metric": "gpu_free", "weight": 0.5, "note": "x" * MAX_BODY_BYTES}]}
    huge = op.post(url, {"document": huge_doc, "reason": "r", "parent": current["id"]}, format="json")
    assert huge.status_code == 413 and "limit" in huge.json()["error"]
    array = op.post(url, [1, 2], format="json")
    assert array.status_code == 400 and array.json()["fields"] == {"$": "expected an object, got list"}
    wrong = op.post(url, {"document": current["document"], "reason": "r", "parent": "latest"}, format="json")
    assert wrong.status_code == 400 and "parent" in wrong.json()["fields"]
    wrong = op.post(url, {"document": current["document"], "reason": "r", "parent": [1]}, format="json")
    assert wrong.status_code == 400
    nul = op.post(url, {"document": current["document"], "reason": "a\x00b", "parent": current["id"]}, format="json")
    assert nul.status_code == 400 and "reason" in nul.json()["fields"]
    unknown = op.post(url, {"document": current["document"], "reason": "r", "parent": current["id"], "x": 1},
                      format="json")
    assert unknown.status_code == 400 and "x" in unknown.json()["fields"]
    assert snapshot() == before


@pytest.mark.parametrize("path", ["/api/v1/policies/nope/", "/api/v1/policies/nope/revisions/",
                                  "/api/v1/policies/nope/diff/?a=1&b=2", "/api/v1/policies/%00/"])
def test_unknown_kind_is_404(api: Callable[..., Any], path: str) -> None:
    response = api("viewer").get(path)
    assert response.status_code == 404 and "unknown policy kind" in response.json()["error"]
    response = api("operator").post("/api/v1/policies/nope/rollback/", {"revision": 1, "reason": "r"}, format="json")
    assert response.status_code == 404
