"""The early window (analysis.early_settle_s): requests still open at the gateways count as at least as slow as
their age, so a candidate whose requests pile up fails before its slowest requests have ended; the early window
never passes a run (the settled window does)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from control.canary import analysis, early
from control.canary.models import AnalysisRun, Canary
from control.scheduler.canary_arm import OPEN_KEY
from tests.canary.helpers import candidate, start
from tests.canary.test_analysis import log_requests
from tests.scheduler.conftest import MODEL, Fleet

A = {"max_latency_p95_ratio": 1.25, "min_requests": 50}


def test_p95_bounds_with_requests_still_open() -> None:
    done = [100.0] * 95
    assert early.p95_bounds(done, [5000.0] * 5) == (100.0, 100.0)  # the open ones are past the p95's rank
    low, high = early.p95_bounds(done[:94], [5000.0] * 6)
    assert low == 5000.0 and high is None  # they reach it: at least 5 s, no upper bound yet
    assert early.p95_bounds([], []) == (None, None)


def test_the_early_checks_fail_or_wait_never_pass() -> None:
    def side(n: int, low: float, high: float | None) -> dict[str, Any]:
        return {"requests": n, "p95_latency_ms_low": low, "p95_latency_ms_high": high}

    fail = early.judge([("m", side(60, 5000, None), side(300, 100, 100))], A)
    assert fail[0]["ok"] is False and fail[0]["value"] == 50.0
    fine = early.judge([("m", side(60, 110, 110), side(300, 100, 100))], A)
    assert fine[0]["ok"] is None and fine[0]["value"] == 1.1  # within the bound: the settled window decides
    few = early.judge([("m", side(10, 5000, None), side(300, 100, 100))], A)
    assert few[0]["ok"] is None and few[0]["note"] == "too few requests"
    unbounded = early.judge([("m", side(60, 5000, None), side(300, 100, None))], A)
    assert unbounded[0]["ok"] is None and "not bounded" in unbounded[0]["note"]


def publish_open(redis: Any, gateway_id: str, canary_id: int, at: float, arrivals: list[tuple[float, str]]) -> None:
    doc = {"canary": canary_id, "at": at, "open": [[ts, arm] for ts, arm in arrivals]}
    redis.set(OPEN_KEY.format(gateway_id), orjson.dumps(doc), ex=60)


def early_canary(api: Any) -> Canary:
    op = api("operator")
    r = start(op, candidate(op), interval_s=1, min_requests=50, settle_s=60, early_settle_s=5, window_s=30,
              initial_delay_s=0, failure_limit=0, latency_against="arms")
    assert r.status_code == 201, r.content
    return Canary.objects.get(pk=r.json()["id"])


def test_requests_still_open_fail_the_candidate_before_the_settle_lag(api: Any, redis_db: Any) -> None:
    c = early_canary(api)
    t0 = c.step_started.timestamp()
    log_requests(redis_db, c.pk, "stable", 300, 100.0, at=t0 + 1)
    log_requests(redis_db, c.pk, "canary", 10, 100.0, at=t0 + 1)  # its few fast ones have ended ...
    publish_open(redis_db, "gw-a", c.pk, t0 + 20, [(t0 + 1, "canary")] * 40)  # ... the rest are open at 19 s
    publish_open(redis_db, "gw-b", c.pk, t0 + 20, [(t0 + 1.5, "canary")] * 20)
    assert analysis.tick(datetime.fromtimestamp(t0 + 21, UTC)) == [f"canary {c.pk}: aborted"]
    run = AnalysisRun.objects.get()
    assert run.verdict == "fail" and run.summary.startswith("early window")
    assert run.arms["canary"]["open"] == 60 and run.arms["canary"]["requests"] == 70
    assert run.arms["control"]["early_settle_s"] == 5
    assert [x["metric"] for x in run.checks if x["ok"] is False] == ["early_latency_p95_ratio"]


def test_without_open_requests_the_early_window_waits_for_the_settled_one(api: Any, redis_db: Any) -> None:
    c = early_canary(api)
    t0 = c.step_started.timestamp()
    log_requests(redis_db, c.pk, "stable", 300, 100.0, at=t0 + 1)
    log_requests(redis_db, c.pk, "canary", 70, 100.0, at=t0 + 1)
    publish_open(redis_db, "gw-a", c.pk + 1000, t0 + 20, [(t0 + 1, "canary")] * 60)  # another canary's
    assert analysis.tick(datetime.fromtimestamp(t0 + 21, UTC)) == []  # not a fail; a pass waits 60 s
    assert AnalysisRun.objects.count() == 0
    c.refresh_from_db()
    assert c.state == "running" and c.last_analysis is not None  # checked: the next check waits an interval
    assert analysis.tick(datetime.fromtimestamp(t0 + 62, UTC)) == [f"canary {c.pk}: step 1 at 25 %"]


def test_a_gateway_publishes_the_canarys_open_requests(
        fleet: Fleet, upstreams: Any, gateway: Any, user_token: str, api: Any, redis_db: Any) -> None:
    (slow,) = upstreams(1, delay=4.0)
    fleet.add(slow.name, slow.url)
    op = api("operator")
    r = start(op, candidate(op), steps=[{"weight": 100, "pause_s": 3600}])
    assert r.status_code == 201, r.content
    canary_id = r.json()["id"]
    gw = gateway()
    gw.wait(lambda: gw.app.canary is not None and len(gw.eligible()) == 1, what="canary core loaded")
    sent = time.time()

    def ask() -> None:
        with httpx.Client(timeout=30) as client:
            client.post(f"{gw.url}/v1/chat/completions",
                        json={"model": MODEL, "messages": [{"role": "user", "content": "slow"}]},
                        headers={"Authorization": f"Bearer {user_token}", "Cache-Control": "no-cache"})

    t = threading.Thread(target=ask)
    t.start()

    def published() -> list[Any]:
        raw = redis_db.get(OPEN_KEY.format(gw.app.id))
        doc = orjson.loads(raw) if raw else {}
        return doc.get("open", []) if doc.get("canary") == canary_id else []

    gw.wait(lambda: len(published()) == 1, what="the open request published")
    ts, arm = published()[0]
    assert arm == "canary" and sent - 1 <= ts <= time.time()
    t.join(30)
    gw.wait(lambda: published() == [], what="the ended request no longer open")


def switchback_canary(api: Any) -> Canary:
    op = api("operator")
    r = start(op, candidate(op), interval_s=1, min_requests=50, settle_s=60, early_settle_s=5, window_s=40,
              switchback_s=5, initial_delay_s=0, failure_limit=0, latency_against="switchback")
    assert r.status_code == 201, r.content
    return Canary.objects.get(pk=r.json()["id"])


def test_under_switchback_the_early_window_compares_on_periods_with_off_periods(api: Any, redis_db: Any) -> None:
    from control.canary.split import switched_on

    c = switchback_canary(api)
    t0 = c.created.timestamp()
    opened: list[tuple[float, str]] = []
    for i in range(640):  # one arrival every 0.25 s over 160 s (32 periods: at least 4 on and 4 off)
        t = t0 + i * 0.25
        if switched_on(t, t0, 5, c.pk):
            log_requests(redis_db, c.pk, "stable", 4, 100.0, at=t)
            opened.append((t, "canary"))  # the candidate's requests pile up: still open
        else:
            log_requests(redis_db, c.pk, "stable", 5, 100.0, at=t)
    publish_open(redis_db, "gw-a", c.pk, t0 + 164, opened)
    assert analysis.tick(datetime.fromtimestamp(t0 + 165, UTC)) == [f"canary {c.pk}: aborted"]
    run = AnalysisRun.objects.get()
    failed = [x for x in run.checks if x["ok"] is False]
    assert [x["metric"] for x in failed] == ["early_canary_latency_p95_ratio"], run.checks
    guard = failed[0]["periods"]
    assert guard["on"] >= 4 and guard["off"] >= 4 and guard["p"] <= analysis.SWITCHBACK_ALPHA
    assert run.arms["off"]["open"] == 0 and run.arms["canary"]["open"] > 0


def test_under_switchback_the_stable_arms_open_requests_do_not_fail_the_early_window(
        api: Any, redis_db: Any) -> None:
    """A herding stable policy (bench runs 7-8: the classic formula) keeps its own requests open for 10-30 s. In
    the on periods they are most of the whole fleet's open requests; judging the whole fleet at their age aborted a
    candidate whose own requests were fast. The early window judges the candidate arm's own requests only; the
    whole fleet waits for the settled window, where every request has ended."""
    from control.canary.split import switched_on

    c = switchback_canary(api)
    t0 = c.created.timestamp()
    opened: list[tuple[float, str]] = []
    for i in range(640):
        t = t0 + i * 0.25
        if switched_on(t, t0, 5, c.pk):
            log_requests(redis_db, c.pk, "canary", 1, 100.0, at=t)  # the candidate's own: fast, ended
            opened += [(t, "stable")] * 4  # the stable arm's: still open
        else:
            log_requests(redis_db, c.pk, "stable", 5, 100.0, at=t)
    publish_open(redis_db, "gw-a", c.pk, t0 + 164, opened)
    assert analysis.tick(datetime.fromtimestamp(t0 + 165, UTC)) == [f"canary {c.pk}: inconclusive"]
    assert not AnalysisRun.objects.filter(verdict="fail").exists()
    c.refresh_from_db()
    assert c.state == "running" and c.failures == 0
