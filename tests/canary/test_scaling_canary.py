"""The pool-scoped scaling canary (issue 16, item 6): a scaling revision tried on one pool, judged on that pool's
SLO-violation minutes and GPU-hours against its own period before the canary, promoted or aborted like the scheduler
canary. The pool's figures are real rows in the tables the gateway's aggregator and the metric rollups write."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from django.db import connection
from django.test import Client

from control.canary import analysis
from control.canary.models import AnalysisRun, Canary
from control.controller import actions, loop
from control.controller.models import PoolProvider
from control.policy import service as policy
from control.policy.defaults import default_document
from control.routing import histogram
from control.routing.models import RequestMinute
from core.audit.models import AuditEvent
from dashboard.fleet.models import Node, Pool
from dashboard.metrics.partitions import ensure_partitions
from tests.control.conftest import PASSWORD

URL = "/api/v1/policies/scaling/canary/"
POOL, OTHER = "trial", "steady"


def bind(name: str) -> Pool:
    """A pool the controller scales; its provider answers nothing (port 9), which the loop reports per pool."""
    pool = Pool.objects.create(name=name)
    PoolProvider.objects.create(pool=pool, kind="local", config={"url": "http://127.0.0.1:9", "timeout_s": 0.5})
    return pool


def candidate_document(**changes: Any) -> dict[str, Any]:
    """The active scaling document with pool POOL given its own, different entry."""
    doc = copy.deepcopy(policy.active("scaling").document)
    entry = copy.deepcopy(default_document("scaling")["default"])
    entry.update({"min_nodes": 2, "max_nodes": 7, **changes})
    entry["rules"] = [dict(r, threshold=70.0) if r["metric"] == "gpu_util_pct" else r for r in entry["rules"]]
    doc["pools"] = {**doc.get("pools", {}), POOL: entry}
    return doc


def store(client: Any, document: dict[str, Any] | None = None) -> int:
    active = client.get("/api/v1/policies/scaling/").json()
    r = client.post("/api/v1/policies/scaling/revisions/", {
        "document": document or candidate_document(), "reason": "try a lower GPU threshold", "parent": active["id"],
        "activate": False}, format="json")
    assert r.status_code == 201, r.content
    return int(r.json()["id"])


def body(revision: int, **changes: Any) -> dict[str, Any]:
    return {"revision": revision, "pool": POOL, "duration_s": 60, "reason": "lower threshold on one pool first",
            "analysis": {"interval_s": 1, "window_s": 300, "baseline_s": 600, "min_minutes": 3, "min_requests": 30,
                         "failure_limit": 0}, **changes}


@pytest.fixture
def pools(db: None) -> tuple[Pool, Pool]:
    return bind(POOL), bind(OTHER)


def minute_floor(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def traffic(pool: Pool, minutes: list[datetime], *, requests: int = 100, latency_ms: float = 200.0,
            errors: int = 0, gpus: int = 4) -> None:
    """Per minute: the gateway's aggregate row for the pool and `gpus` per-GPU rollup rows of its nodes."""
    node, _ = Node.objects.get_or_create(name=f"{pool.name}-1", defaults={"pool": pool})
    for day in {m.date() for m in minutes}:
        ensure_partitions(day, 0)
    with connection.cursor() as cur:
        for m in minutes:
            RequestMinute.objects.create(minute=m, node=node.name, pool=pool.name, request_class="standard",
                                         requests=requests, status_2xx=requests - errors, status_5xx=errors,
                                         latency_buckets=histogram.of([latency_ms] * requests))
            for g in range(gpus):
                cur.execute("INSERT INTO gpu_sample_1m (bucket, node_id, gpu, n) VALUES (%s, %s, %s, 12)",
                            [m, node.pk, g])


def before(c: Canary, n: int = 8) -> list[datetime]:
    return [minute_floor(c.created) - timedelta(minutes=i) for i in range(1, n + 1)]


def after(c: Canary, n: int = 5) -> list[datetime]:
    return [minute_floor(c.created) + timedelta(minutes=i) for i in range(1, n + 1)]


def later(c: Canary) -> datetime:
    """A run after the five canary minutes of `after`, with all of them inside its 300-s window."""
    return minute_floor(c.created) + timedelta(minutes=5, seconds=50)


def test_only_the_canary_pool_runs_the_candidate_rules(api: Any, pools: tuple[Pool, Pool], redis_db: Any) -> None:
    op = api("operator")
    stable = actions.pool_policy(POOL)
    r = op.post(URL, body(store(op)), format="json")
    assert r.status_code == 201, r.content
    assert r.json()["pool"] == POOL and r.json()["steps"] == [{"weight": 100.0, "pause_s": 60}]
    assert (actions.pool_policy(POOL)["min_nodes"], actions.pool_policy(POOL)["max_nodes"]) == (2, 7)
    assert actions.pool_policy(OTHER) == stable  # every other pool keeps the active rules
    assert policy.active("scaling").document.get("pools", {}).get(POOL) is None  # nothing activated

    # The reconcile loop decides each pool under what pool_policy gives it (the published min/max show which).
    result = loop.tick()
    assert set(result.errors) == {POOL, OTHER}  # no provider answers here; the loop still publishes the bounds
    published = {k.decode(): orjson.loads(v) for k, v in redis_db.hgetall(loop.POOLS_KEY).items()}
    assert (published[POOL]["min"], published[POOL]["max"]) == (2, 7)
    assert (published[OTHER]["min"], published[OTHER]["max"]) == (stable["min_nodes"], stable["max_nodes"])

    assert op.post(f"{URL}abort/", {"reason": "not now"}, format="json").status_code == 200
    assert actions.pool_policy(POOL) == stable  # the pool is back on the stable rules


def test_a_pool_that_keeps_its_slo_and_gpu_hours_is_promoted(api: Any, pools: tuple[Pool, Pool]) -> None:
    op = api("operator")
    candidate = store(op)
    assert op.post(URL, body(candidate), format="json").status_code == 201
    c = Canary.objects.get()
    pool = pools[0]
    traffic(pool, before(c), requests=100, gpus=4)
    traffic(pool, after(c), requests=110, gpus=4)  # busier, same GPUs: cheaper per request
    assert analysis.tick(later(c)) == [f"canary {c.pk}: promoted"]
    run = AnalysisRun.objects.get(canary=c)
    assert run.verdict == "pass" and run.arms["baseline"]["minutes"] == 8 and run.arms["canary"]["minutes"] == 5
    assert run.arms["canary"]["violation_minutes"] == 0
    assert {ch["metric"]: ch["ok"] for ch in run.checks} == {"slo_violation_share_diff": True,
                                                             "gpu_hours_ratio": True}
    c.refresh_from_db()
    active = policy.active("scaling")
    assert c.state == "promoted" and c.promoted_to_id == active.pk and active.author == "controller"
    assert active.document["pools"][POOL]["max_nodes"] == 7  # now everywhere: the new active revision
    event = AuditEvent.objects.get(action="canary.promote")
    assert event.actor == "controller" and event.target == "canary:scaling"


@pytest.mark.parametrize(("canary_traffic", "failed"), [
    ({"gpus": 8}, "gpu_hours_ratio"),  # twice the GPU-hours per request
    ({"latency_ms": 20_000.0}, "slo_violation_share_diff"),  # every minute's p95 above the 10 s SLO
    ({"errors": 20}, "slo_violation_share_diff"),  # 20 % 5xx, above the 5 % SLO
])
def test_a_worse_pool_is_aborted_with_rollback_and_alert(api: Any, pools: tuple[Pool, Pool],
                                                         canary_traffic: dict[str, Any], failed: str) -> None:
    from control.webhooks.models import Delivery, Receiver

    Receiver.objects.create(name="oncall", url="https://hooks.example.com/am", secret="s" * 32,
                            events=["rollback", "alert"])
    op = api("operator")
    stable = actions.pool_policy(POOL)
    assert op.post(URL, body(store(op)), format="json").status_code == 201
    c = Canary.objects.get()
    traffic(pools[0], before(c))
    traffic(pools[0], after(c), **canary_traffic)
    assert analysis.tick(later(c)) == [f"canary {c.pk}: aborted"]  # failure_limit 0
    run = AnalysisRun.objects.get(canary=c)
    assert run.verdict == "fail" and [ch["metric"] for ch in run.checks if ch["ok"] is False] == [failed]
    c.refresh_from_db()
    assert c.state == "aborted" and actions.pool_policy(POOL) == stable
    abort = AuditEvent.objects.get(action="canary.abort")
    assert abort.actor == "controller" and abort.details["pool"] == POOL and abort.details["analysis_run"] == run.pk
    assert sorted(Delivery.objects.values_list("event", flat=True)) == ["alert", "rollback"]
    rollback = Delivery.objects.get(event="rollback").payload
    assert (rollback["kind"], rollback["scope"], rollback["pool"]) == ("scaling", "pool", POOL)
    alert = Delivery.objects.get(event="alert").payload["alerts"][0]
    assert alert["labels"]["alertname"] == "switchyard_controller_canary_aborted" and alert["labels"]["pool"] == POOL


def test_too_little_traffic_is_inconclusive(api: Any, pools: tuple[Pool, Pool]) -> None:
    op = api("operator")
    assert op.post(URL, body(store(op)), format="json").status_code == 201
    c = Canary.objects.get()
    traffic(pools[0], before(c))
    traffic(pools[0], after(c, 2))  # 2 minutes with traffic; min_minutes is 3
    assert analysis.tick(later(c)) == [f"canary {c.pk}: inconclusive"]
    run = AnalysisRun.objects.get(canary=c)
    assert run.verdict == "inconclusive" and "canary window" in run.summary
    c.refresh_from_db()
    assert c.state == "running" and policy.active("scaling").document.get("pools", {}).get(POOL) is None


def test_manual_controls_and_roles(api: Any, pools: tuple[Pool, Pool]) -> None:
    op, viewer = api("operator"), api("viewer")
    revision = store(op)
    assert viewer.post(URL, body(revision), format="json").status_code == 403
    assert Canary.objects.count() == 0
    assert op.post(URL, body(revision), format="json").status_code == 201
    assert op.post(URL, body(revision), format="json").status_code == 409  # one scaling canary at a time
    for action in ("pause", "resume", "promote", "abort"):
        assert viewer.post(f"{URL}{action}/", {"reason": "x"}, format="json").status_code == 403
    assert viewer.get(URL).json()["pool"] == POOL
    assert op.post(f"{URL}pause/", {"reason": "look first"}, format="json").json()["state"] == "paused"
    assert actions.pool_policy(POOL)["max_nodes"] == 7  # paused keeps the candidate on its pool
    assert op.post(f"{URL}resume/", {"reason": "go on"}, format="json").json()["state"] == "running"
    assert op.post(f"{URL}promote/", {"reason": "looks right"}, format="json").json()["state"] == "promoted"
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="canary.").order_by("pk")] == [
        "canary.start", "canary.pause", "canary.resume", "canary.promote"]
    assert AuditEvent.objects.get(action="canary.start").details["pool"] == POOL


def test_a_scheduler_canary_and_a_scaling_canary_run_side_by_side(api: Any, pools: tuple[Pool, Pool]) -> None:
    from tests.canary.helpers import candidate, start

    op = api("operator")
    assert start(op, candidate(op)).status_code == 201
    assert op.post(URL, body(store(op)), format="json").status_code == 201
    assert Canary.objects.filter(state="running").count() == 2


@pytest.mark.parametrize(("change", "field"), [
    ({"revision": None}, "revision"),
    ({"revision": "abc"}, "revision"),
    ({"revision": 999_999}, "revision"),
    ({"pool": None}, "pool"),
    ({"pool": ""}, "pool"),
    ({"pool": 5}, "pool"),
    ({"pool": "nowhere"}, "pool"),
    ({"duration_s": 0}, "duration_s"),
    ({"duration_s": "long"}, "duration_s"),
    ({"duration_s": 1.5}, "duration_s"),
    ({"duration_s": 8 * 86400}, "duration_s"),
    ({"steps": [{"pause_s": 60}]}, "duration_s"),  # both duration_s and steps
    ({"reason": ""}, "reason"),
    ({"reason": None}, "reason"),
    ({"analysis": []}, "analysis"),
    ({"analysis": {"window_s": 10}}, "analysis.window_s"),
    ({"analysis": {"baseline_s": 10}}, "analysis.baseline_s"),
    ({"analysis": {"min_minutes": 0}}, "analysis.min_minutes"),
    ({"analysis": {"min_requests": -1}}, "analysis.min_requests"),
    ({"analysis": {"failure_limit": 1001}}, "analysis.failure_limit"),
    ({"analysis": {"inconclusive_limit": "x"}}, "analysis.inconclusive_limit"),
    ({"analysis": {"interval_s": 0}}, "analysis.interval_s"),
    ({"analysis": {"slo_p95_latency_ms": 0}}, "analysis.slo_p95_latency_ms"),
    ({"analysis": {"slo_error_rate": 2}}, "analysis.slo_error_rate"),
    ({"analysis": {"max_slo_violation_share_diff": -0.1}}, "analysis.max_slo_violation_share_diff"),
    ({"analysis": {"max_gpu_hours_ratio": 0}}, "analysis.max_gpu_hours_ratio"),
    ({"analysis": {"max_latency_p95_ratio": 2}}, "analysis.max_latency_p95_ratio"),  # a scheduler field
    ({"weight": 5}, "weight"),
])
def test_bad_input_names_the_field_and_starts_nothing(api: Any, pools: tuple[Pool, Pool], change: dict[str, Any],
                                                     field: str) -> None:
    op = api("operator")
    revision = store(op)
    events = AuditEvent.objects.count()
    r = op.post(URL, {**body(revision), **change}, format="json")
    assert r.status_code in (400, 404), r.content
    assert field in r.json()["fields"], r.json()
    assert Canary.objects.count() == 0 and AuditEvent.objects.count() == events


@pytest.mark.parametrize(("steps", "field"), [
    ([], "steps"),
    ([{"weight": 5, "pause_s": 60}], "steps[0].weight"),
    ([{"pause_s": 0}], "steps[0].pause_s"),
    ([{}], "steps[0].pause_s"),
    ("60", "steps"),
])
def test_bad_steps_name_the_step(api: Any, pools: tuple[Pool, Pool], steps: Any, field: str) -> None:
    op = api("operator")
    data = body(store(op), steps=steps)
    del data["duration_s"]
    r = op.post(URL, data, format="json")
    assert r.status_code == 400 and field in r.json()["fields"], r.json()
    assert Canary.objects.count() == 0


def test_steps_instead_of_a_duration(api: Any, pools: tuple[Pool, Pool]) -> None:
    op = api("operator")
    data = body(store(op), steps=[{"pause_s": 600}, {"pause_s": 1800}])
    del data["duration_s"]
    r = op.post(URL, data, format="json")
    assert r.status_code == 201 and [s["pause_s"] for s in r.json()["steps"]] == [600, 1800]


def test_a_pool_without_a_provider_or_a_candidate_that_changes_nothing_is_refused(
        api: Any, pools: tuple[Pool, Pool]) -> None:
    op = api("operator")
    Pool.objects.create(name="unbound")
    r = op.post(URL, body(store(op), pool="unbound"), format="json")
    assert r.status_code == 400 and "enabled provider" in r.json()["fields"]["pool"]
    same = store(op, candidate_document())
    r = op.post(URL, body(same, pool=OTHER), format="json")  # the candidate changes POOL only
    assert r.status_code == 400 and "does not change" in r.json()["fields"]["pool"]
    assert Canary.objects.count() == 0


def test_the_canary_page_has_a_scaling_section(api: Any, pools: tuple[Pool, Pool]) -> None:
    viewer = Client()
    assert viewer.login(username="viewer", password=PASSWORD)
    page = viewer.get("/policies/scheduler/canary/").content.decode()
    assert 'id="scaling-canary"' in page and "No scaling canary has run yet" in page
    assert viewer.get("/policies/scaling/canary/")["Location"] == "/policies/scheduler/canary/#scaling-canary"
    op = api("operator")
    assert op.post(URL, body(store(op)), format="json").status_code == 201
    page = viewer.get("/policies/scheduler/canary/").content.decode()
    assert f"pool <strong>{POOL}</strong>" in page and 'id="scaling-canary-runs"' in page
    assert 'id="scaling-canary-controls"' not in page  # viewers see no controls
    operator = Client()
    assert operator.login(username="operator", password=PASSWORD)
    page = operator.get("/policies/scheduler/canary/").content.decode()
    assert 'id="scaling-canary-controls"' in page and 'data-api="/api/v1/policies/scaling/canary/"' in page


def test_the_scaling_page_and_the_pools_api_mark_the_pool_on_trial(api: Any, pools: tuple[Pool, Pool],
                                                                   redis_db: Any) -> None:
    """An on-call engineer on the scaling page sees which pool runs a candidate's rules, and scripts see it too."""
    viewer = api("viewer")
    assert {p["pool"]: p["canary"] for p in viewer.get("/api/v1/scaling/pools/").json()} == {POOL: None, OTHER: None}
    op = api("operator")
    revision = store(op)
    assert op.post(URL, body(revision), format="json").status_code == 201
    c = Canary.objects.get()
    marks = {p["pool"]: p["canary"] for p in viewer.get("/api/v1/scaling/pools/").json()}
    assert marks == {POOL: {"id": c.pk, "revision": revision, "state": "running"}, OTHER: None}
    browser = Client()
    assert browser.login(username="viewer", password=PASSWORD)
    page = browser.get("/scaling/").content.decode()
    assert page.count('class="canary-mark"') == 1 and f"scaling revision {revision}</a> (running)" in page
    assert op.post(f"{URL}abort/", {"reason": "not now"}, format="json").status_code == 200
    assert 'class="canary-mark"' not in browser.get("/scaling/").content.decode()


def test_window_figures_are_whole_minutes_of_the_pool_only(pools: tuple[Pool, Pool]) -> None:
    from control.canary import scaling, spec

    a = spec.analysis({}, spec.SCALING_ANALYSIS)
    t0 = minute_floor(datetime.now(UTC)) - timedelta(minutes=30)
    traffic(pools[0], [t0 + timedelta(minutes=i) for i in range(3)], requests=50, gpus=2)
    traffic(pools[1], [t0 + timedelta(minutes=i) for i in range(3)], requests=500, gpus=6)
    f = scaling.pool_figures(POOL, t0, t0 + timedelta(minutes=3), a)
    assert (f["minutes"], f["requests"], f["gpu_hours"]) == (3, 150, 0.1)
    assert f["gpu_hours_per_1k"] == pytest.approx(0.1 / 150 * 1000, rel=1e-3)
