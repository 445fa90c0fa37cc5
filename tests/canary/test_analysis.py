"""Canary analysis: verdicts (pass, fail, inconclusive) and what follows (next step, promote, abort, pause), from
request-log entries written to the real Redis stream."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from control.canary import analysis, spec
from control.canary.models import AnalysisRun, Canary
from control.controller import guard
from control.controller.models import GuardWatch
from control.policy import service as policy
from core.audit.models import AuditEvent
from tests.canary.helpers import candidate, classic, start

DEFAULTS = spec.analysis({"latency_against": "arms"})
BEFORE = spec.analysis({})


def figures(n: int, p95: float = 100.0, ttft: float = 50.0, err: float = 0.0, r429: float = 0.0,
            good: float = 1.0) -> dict[str, Any]:
    return {"requests": n, "p95_latency_ms": p95, "p95_ttft_ms": ttft, "error_rate": err, "rate_429": r429,
            "goodput": good}


def test_judge_passes_arms_that_are_alike() -> None:
    verdict, checks = analysis.judge(figures(500), figures(200, p95=110), DEFAULTS)
    assert verdict == "pass" and all(c["ok"] for c in checks)
    assert {c["metric"] for c in checks} == {"latency_p95_ratio", "ttft_p95_ratio", "error_rate_diff",
                                             "rate_429_diff", "goodput_ratio"}


@pytest.mark.parametrize(("canary", "metric"), [
    (figures(200, p95=130), "latency_p95_ratio"),
    (figures(200, ttft=80), "ttft_p95_ratio"),
    (figures(200, err=0.05), "error_rate_diff"),
    (figures(200, r429=0.03), "rate_429_diff"),
    (figures(200, good=0.8), "goodput_ratio"),
])
def test_judge_fails_on_each_bound(canary: dict[str, Any], metric: str) -> None:
    verdict, checks = analysis.judge(figures(500), canary, DEFAULTS)
    assert verdict == "fail"
    assert [c["metric"] for c in checks if c["ok"] is False] == [metric]


def test_against_before_the_whole_fleet_is_compared_with_the_stable_policy_alone() -> None:
    """A greedy candidate takes the fast nodes: its own arm looks better than the stable arm it crowds out, while
    the whole fleet got slower than the stable policy alone. Against `before`, that fails on latency; a request's
    own failure (5xx, 429) is still judged arm against arm."""
    stable, greedy, whole, alone = figures(500, p95=400), figures(200, p95=150), figures(700, p95=300), figures(600)
    assert analysis.judge(stable, greedy, DEFAULTS, whole, alone)[0] == "pass"  # arm against arm: looks fine
    verdict, checks = analysis.judge(stable, greedy, BEFORE, whole, alone)
    assert verdict == "fail" and [c["metric"] for c in checks if c["ok"] is False] == ["latency_p95_ratio"]
    assert next(c for c in checks if c["metric"] == "latency_p95_ratio")["value"] == 3.0
    # A cooperative candidate whose arm looks worse beside a greedy stable arm, with the whole no worse: pass.
    assert analysis.judge(figures(500, p95=100), figures(200, p95=300), BEFORE, figures(700, p95=110),
                          figures(600, p95=100))[0] == "pass"
    verdict, checks = analysis.judge(figures(500), figures(200, err=0.05), BEFORE, figures(700), figures(600))
    assert verdict == "fail" and [c["metric"] for c in checks if c["ok"] is False] == ["error_rate_diff"]
    verdict, checks = analysis.judge(figures(500), figures(200), BEFORE, figures(700), figures(20))
    assert verdict == "inconclusive" and "stable policy alone before the canary" in checks[0]["note"]


def test_too_little_traffic_is_inconclusive_whatever_the_figures() -> None:
    verdict, checks = analysis.judge(figures(500), figures(99, p95=900, err=1.0), DEFAULTS)
    assert verdict == "inconclusive" and "too few requests on canary" in checks[0]["note"]


def test_p95_is_nearest_rank() -> None:
    assert analysis.p95(list(map(float, range(1, 101)))) == 95.0
    assert analysis.p95([]) is None


# --- the controller's tick, on the real stream --------------------------------------------------------------------

def log_requests(redis: Any, canary_id: int, arm: str, n: int, latency_ms: float, status: int = 200,
                 at: float | None = None) -> None:
    """n entries that arrived at `at` (default: now) and ended latency_ms later: that is their stream id, as the
    gateway's writer logs an entry when its request ends."""
    ts = at if at is not None else time.time()
    ms = int((ts + latency_ms / 1000) * 1000)
    top = redis.xrevrange("sy:reqlog", count=1)
    top_ms, top_seq = (int(x) for x in top[0][0].decode().split("-")) if top else (0, -1)
    ms, seq = (ms, 0) if ms > top_ms else (top_ms, top_seq + 1)  # ids only grow
    pipe = redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("sy:reqlog", id=f"{ms}-{seq + i}", fields={
            "ts": f"{ts:.6f}", "gateway": "gw", "node": "n1", "pool": "p", "model": "m", "class": "standard",
            "status": str(status), "ttft_ms": f"{latency_ms / 4:.3f}", "latency_ms": f"{latency_ms:.3f}",
            "prompt_tokens": "5", "completion_tokens": "8", "cache": "off", "retries": "0", "stream": "0",
            "error": "", "arm": arm, "canary": str(canary_id)})
    pipe.execute()


@pytest.fixture
def running(api: Any, redis_db: Any) -> Canary:
    op = api("operator")
    r = start(op, candidate(op), steps=[{"weight": 5, "pause_s": 0}, {"weight": 50, "pause_s": 0}],
              interval_s=1, min_requests=50, failure_limit=1, inconclusive_limit=2, initial_delay_s=0, settle_s=0,
              latency_against="arms")
    assert r.status_code == 201, r.content
    return Canary.objects.get(pk=r.json()["id"])


def tick_later(c: Canary, seconds: float = 2.0) -> list[str]:
    """One controller pass `seconds` after the canary's last analysis (its interval has passed)."""
    c.refresh_from_db()
    return analysis.tick((c.last_analysis or timezone.now()) + timedelta(seconds=seconds))


def test_passing_every_step_promotes_the_candidate(running: Canary, redis_db: Any, db: None) -> None:
    stable_before = policy.active("scheduler")
    log_requests(redis_db, running.pk, "stable", 300, 100.0)
    log_requests(redis_db, running.pk, "canary", 100, 101.0)
    assert tick_later(running) == [f"canary {running.pk}: step 1 at 50 %"]
    running.refresh_from_db()
    assert (running.step, running.weight, running.state) == (1, 50.0, "running")
    step_event = AuditEvent.objects.get(action="canary.step")
    assert step_event.actor == "controller" and step_event.after == {"weight": 50.0}
    # The next window starts at the new step: the entries logged before it do not count for it.
    at = running.step_started.timestamp() + 0.5
    log_requests(redis_db, running.pk, "canary", 300, 99.0, at=at)
    log_requests(redis_db, running.pk, "stable", 300, 100.0, at=at)
    assert tick_later(running, 3.0) == [f"canary {running.pk}: promoted"]
    running.refresh_from_db()
    active = policy.active("scheduler")
    assert running.state == "promoted" and running.promoted_to_id == active.pk and active.pk != stable_before.pk
    assert active.document == classic() and active.author == "controller" and active.parent_id == stable_before.pk
    promote = AuditEvent.objects.get(action="canary.promote")
    assert promote.actor == "controller" and promote.details["revision"] == active.pk
    assert [r.verdict for r in running.runs.order_by("ts")] == ["pass", "pass"]
    # The guard watches what became active, as after any change.
    guard.open_watches()
    assert GuardWatch.objects.filter(revision=active).exists()


def test_failed_runs_past_the_limit_abort(running: Canary, redis_db: Any, db: None) -> None:
    from control.webhooks.models import Delivery, Receiver

    Receiver.objects.create(name="oncall", url="https://hooks.example.com/am", secret="s" * 32,
                            events=["rollback", "alert"])
    stable = policy.active("scheduler")
    log_requests(redis_db, running.pk, "stable", 300, 100.0)
    log_requests(redis_db, running.pk, "canary", 60, 400.0)
    assert tick_later(running) == [f"canary {running.pk}: failed run 1"]  # failure_limit 1: one is tolerated
    assert tick_later(running) == [f"canary {running.pk}: aborted"]
    running.refresh_from_db()
    assert (running.state, running.weight, running.failures) == ("aborted", 0.0, 2)
    assert policy.active("scheduler").pk == stable.pk  # nothing was promoted
    run = running.runs.order_by("-ts").first()
    assert run.verdict == "fail" and run.arms["canary"]["p95_latency_ms"] == 400.0
    assert "latency_p95_ratio 4.0 past 1.25" in run.summary
    abort = AuditEvent.objects.get(action="canary.abort")
    assert abort.actor == "controller" and abort.details["analysis_run"] == run.pk
    assert "analysis failed 2 time(s)" in abort.reason
    assert sorted(Delivery.objects.values_list("event", flat=True)) == ["alert", "rollback"]
    alert = Delivery.objects.get(event="alert").payload["alerts"][0]
    assert alert["labels"]["alertname"] == "switchyard_controller_canary_aborted"
    assert analysis.tick(timezone.now() + timedelta(hours=1)) == []  # an ended canary is left alone


def test_inconclusive_runs_pause_the_canary_for_a_person(running: Canary, redis_db: Any) -> None:
    log_requests(redis_db, running.pk, "stable", 300, 100.0)
    log_requests(redis_db, running.pk, "canary", 10, 100.0)  # below min_requests 50
    assert tick_later(running) == [f"canary {running.pk}: inconclusive"]
    assert tick_later(running) == [f"canary {running.pk}: inconclusive"]
    assert tick_later(running) == [f"canary {running.pk}: paused (inconclusive)"]
    running.refresh_from_db()
    assert running.state == "paused" and running.weight == 5.0  # paused keeps its share; nothing promoted
    assert AuditEvent.objects.filter(action="canary.pause", actor="controller").count() == 1
    assert analysis.tick(timezone.now() + timedelta(hours=1)) == []  # a paused canary is not analysed


def test_the_interval_is_respected_and_other_canaries_entries_ignored(running: Canary, redis_db: Any) -> None:
    log_requests(redis_db, running.pk, "stable", 300, 100.0)
    log_requests(redis_db, running.pk, "canary", 100, 100.0)
    log_requests(redis_db, running.pk + 1000, "canary", 300, 900.0)  # another canary's entries
    now = timezone.now() + timedelta(seconds=1)  # after the logged requests ended
    assert analysis.tick(now) == [f"canary {running.pk}: step 1 at 50 %"]
    assert analysis.tick(now + timedelta(seconds=0.5)) == []  # interval_s 1 not passed yet
    assert AnalysisRun.objects.count() == 1


def test_each_run_judges_the_arrivals_of_a_settled_window(api: Any, redis_db: Any) -> None:
    """The log holds a request from its end, so a window of endings would compare a slow arm's few fast requests
    with the other arm's all. A run judges the requests that *arrived* in a window ending settle_s ago: the slow
    canary requests count with their real latency, and the fast ones that arrived after the window wait their turn
    instead of flattering the arm."""
    op = api("operator")
    assert start(op, candidate(op), interval_s=1, min_requests=50, settle_s=6, window_s=30,
                 initial_delay_s=0, latency_against="arms").status_code == 201
    c = Canary.objects.get()
    t = c.step_started.timestamp() + 0.1
    log_requests(redis_db, c.pk, "stable", 300, 100.0, at=t)
    log_requests(redis_db, c.pk, "canary", 60, 5000.0, at=t)  # ends 5 s later
    log_requests(redis_db, c.pk, "canary", 200, 10.0, at=t + 3)  # after the judged window: not in this run
    assert analysis.tick(datetime.fromtimestamp(t + 1, UTC)) == []  # nothing of the step has settled yet
    assert analysis.tick(datetime.fromtimestamp(t + 8, UTC)) == [f"canary {c.pk}: failed run 1"]
    run = AnalysisRun.objects.get()
    assert run.arms["canary"]["requests"] == 60 and run.arms["canary"]["p95_latency_ms"] == 5000.0
    assert run.arms["stable"]["requests"] == 300
    assert run.window_from == c.step_started and run.window_to == datetime.fromtimestamp(t + 2, UTC)


def test_no_run_in_a_steps_initial_delay(api: Any, redis_db: Any) -> None:
    op = api("operator")
    start(op, candidate(op), interval_s=1, initial_delay_s=30, settle_s=0, latency_against="arms")
    c = Canary.objects.get()
    log_requests(redis_db, c.pk, "stable", 300, 100.0)
    log_requests(redis_db, c.pk, "canary", 300, 100.0)
    assert analysis.tick(c.step_started + timedelta(seconds=29)) == []
    assert AnalysisRun.objects.count() == 0
    assert analysis.tick(c.step_started + timedelta(seconds=31)) == [f"canary {c.pk}: step 1 at 25 %"]


def log_plain(redis: Any, n: int, latency_ms: float, at: float) -> None:
    """n requests routed outside any canary (no arm), arrived at `at`."""
    log_requests(redis, 0, "", n, latency_ms, at=at)


def test_a_run_against_before_reads_the_stable_policy_alone_once(api: Any, redis_db: Any) -> None:
    op = api("operator")
    assert start(op, candidate(op), interval_s=1, min_requests=50, settle_s=5, window_s=30, baseline_s=60,
                 initial_delay_s=0, failure_limit=0).status_code == 201
    c = Canary.objects.get()
    t = c.created.timestamp()
    log_plain(redis_db, 200, 100.0, t - 30)  # the stable policy alone, in the 60 s before the canary
    log_plain(redis_db, 200, 900.0, t - 90)  # before the baseline window: not in it
    log_requests(redis_db, c.pk, "stable", 300, 300.0, at=t + 1)  # crowded out by the candidate's arm ...
    log_requests(redis_db, c.pk, "canary", 100, 150.0, at=t + 1)  # ... which looks better than it
    assert analysis.tick(datetime.fromtimestamp(t + 8, UTC)) == [f"canary {c.pk}: aborted"]
    run = AnalysisRun.objects.get()
    assert run.arms["before"]["requests"] == 200 and run.arms["before"]["p95_latency_ms"] == 100.0
    assert run.arms["whole"]["requests"] == 400 and run.arms["whole"]["p95_latency_ms"] == 300.0
    assert "latency_p95_ratio 3.0 past 1.25" in run.summary
    c.refresh_from_db()
    assert c.baseline == run.arms["before"]  # kept: the log is trimmed, later runs compare with the same


def test_no_traffic_before_the_canary_is_inconclusive(api: Any, redis_db: Any) -> None:
    op = api("operator")
    assert start(op, candidate(op), interval_s=1, min_requests=50, settle_s=5, initial_delay_s=0).status_code == 201
    c = Canary.objects.get()
    t = c.created.timestamp()
    log_requests(redis_db, c.pk, "stable", 300, 100.0, at=t + 1)
    log_requests(redis_db, c.pk, "canary", 100, 100.0, at=t + 1)
    assert analysis.tick(datetime.fromtimestamp(t + 8, UTC)) == [f"canary {c.pk}: inconclusive"]
    assert "stable policy alone before the canary" in AnalysisRun.objects.get().summary


def test_a_step_is_judged_on_a_whole_window_not_its_first_seconds(api: Any, redis_db: Any) -> None:
    op = api("operator")
    assert start(op, candidate(op), steps=[{"weight": 5, "pause_s": 60}], interval_s=1, min_requests=50,
                 settle_s=0, window_s=30, initial_delay_s=0, latency_against="arms").status_code == 201
    c = Canary.objects.get()
    t = c.step_started.timestamp()
    log_requests(redis_db, c.pk, "stable", 300, 100.0, at=t + 1)
    log_requests(redis_db, c.pk, "canary", 100, 900.0, at=t + 1)  # enough requests, but 10 s of the step
    assert analysis.tick(datetime.fromtimestamp(t + 10, UTC)) == []
    assert analysis.tick(datetime.fromtimestamp(t + 31, UTC)) == [f"canary {c.pk}: failed run 1"]
