"""The switchback control (latency_against=switchback): every gateway switches the candidate on and off on the same
schedule, derived from the canary's creation time; the analysis compares the on periods with the off periods of the
same window, so a drift of the whole fleet cancels where a comparison with before the canary fails on it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from control.canary import analysis, spec
from control.canary.models import AnalysisRun, Canary
from control.canary.split import BLOCK, period_on, switched_on
from tests.canary.helpers import candidate, start
from tests.canary.test_analysis import figures, log_plain, log_requests
from tests.scheduler.conftest import MODEL, Fleet
from tests.scheduler.test_gateway import reqlog

SWITCHBACK = spec.analysis({"latency_against": "switchback", "min_requests": 50})
BEFORE = spec.analysis({"min_requests": 50})


def test_the_schedule_is_a_function_of_the_time_and_the_canary_alone() -> None:
    anchor = 1_700_000_000.25
    on = [period_on(7, k) for k in range(6)]
    # Constant within a period, from the period's index counted from the anchor.
    assert [switched_on(anchor + t, anchor, 10, 7) for t in (0, 9.99, 10, 19.99, 20, 35, 59.99)] == [
        on[0], on[0], on[1], on[1], on[2], on[3], on[5]]
    assert all(switched_on(anchor + t, anchor, 0, 7) for t in (0, 10, 25))  # no switchback: always on
    assert [switched_on(anchor + t / 3, anchor, 2, 7) for t in range(60)] == [
        period_on(7, int((t / 3) // 2)) for t in range(60)]


def test_periods_are_on_at_random_half_of_each_block_not_in_turn() -> None:
    """Each block of four periods holds two on and two off in a random order (no streak longer than four, so a
    verdict never waits long for periods of one kind), not strictly alternating, and another canary has another
    schedule: nothing periodic for the fleet's own cycles to line up with."""
    n = 10_000
    on = [period_on(42, k) for k in range(n)]
    assert [period_on(42, k) for k in range(n)] == on  # deterministic
    assert all(sum(on[b:b + BLOCK]) == BLOCK // 2 for b in range(0, n, BLOCK))
    assert max(len(run) for run in "".join("1" if x else "0" for x in on).replace("10", "1 0")
               .replace("01", "0 1").split()) <= BLOCK
    # every balanced arrangement occurs, about equally often: an order drawn per block, not a fixed pattern
    blocks = [tuple(on[b:b + BLOCK]) for b in range(0, n, BLOCK)]
    counts = {a: blocks.count(a) for a in set(blocks)}
    assert len(counts) == 6 and all(abs(c / len(blocks) - 1 / 6) <= 0.03 for c in counts.values()), counts
    alternations = sum(on[k] != on[k + 1] for k in range(n - 1))
    assert 0.55 <= alternations / (n - 1) <= 0.70, alternations  # ~0.625, far from "on, off, on, off" (1.0)
    other = [period_on(43, k) for k in range(n)]
    assert 0.45 <= sum(a == b for a, b in zip(on, other, strict=True)) / n <= 0.55


def test_another_process_computes_the_same_schedule() -> None:
    """What two gateways (two processes, each with its own hash seed) do at the same times."""
    import subprocess
    import sys

    code = ("from control.canary.split import BLOCK, period_on, switched_on;"
            "print(''.join('1' if switched_on(1e9 + t * 0.7, 1e9, 5, 11) else '0' for t in range(2000)))")
    here = "".join("1" if switched_on(1e9 + t * 0.7, 1e9, 5, 11) else "0" for t in range(2000))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "999", "PATH": ""}, cwd=".").stdout.strip()
    assert out == here and "0" in here and "1" in here


def test_judge_compares_the_on_periods_with_the_off_periods() -> None:
    stable, canary = figures(500, p95=300), figures(100, p95=300)
    whole, off = figures(600, p95=300), figures(600, p95=290)
    drifted_before = figures(600, p95=100)  # the fleet was 3 x faster before the canary: a drift, not the candidate
    assert analysis.judge(stable, canary, BEFORE, whole, drifted_before)[0] == "fail"
    verdict, checks = analysis.judge(stable, canary, SWITCHBACK, whole, drifted_before, off)
    assert verdict == "pass"
    assert {c["metric"] for c in checks} >= {"latency_p95_ratio", "canary_latency_p95_ratio"}
    # A candidate that slows the whole in its on periods fails; one whose own requests are slow fails too.
    verdict, checks = analysis.judge(stable, canary, SWITCHBACK, figures(600, p95=400), None, off)
    assert verdict == "fail" and [c["metric"] for c in checks if c["ok"] is False] == ["latency_p95_ratio"]
    verdict, checks = analysis.judge(stable, figures(100, p95=500), SWITCHBACK, whole, None, off)
    assert verdict == "fail" and [c["metric"] for c in checks if c["ok"] is False] == ["canary_latency_p95_ratio"]
    verdict, checks = analysis.judge(stable, canary, SWITCHBACK, whole, None, figures(20))
    assert verdict == "inconclusive" and "stable policy alone in the off periods" in checks[0]["note"]


def periods(c: Canary, start: float, end: float, on: bool) -> list[float]:
    """Arrival times, one every 0.25 s in [start, end), inside the canary's on (or off) periods."""
    anchor, period = c.created.timestamp(), c.analysis["switchback_s"]
    out, t = [], start
    while t < end:
        if switched_on(t, anchor, period, c.pk) == on:
            out.append(t)
        t += 0.25
    return out


def log_drifting_fleet(redis: Any, c: Canary, t0: float, seconds: float, candidate_ms: float) -> None:
    """The fleet's latency drifts from 100 to 400 ms over `seconds`, in on and off periods alike; in the on
    periods 20 % of the requests are the candidate's, taking `candidate_ms` on top of the drift."""
    for on in (True, False):
        for t in periods(c, t0, t0 + seconds, on):
            drift = 100.0 + 300.0 * (t - t0) / seconds
            log_requests(redis, c.pk, "stable", 4, drift, at=t)
            log_requests(redis, c.pk, "canary" if on else "stable", 1, drift + (candidate_ms if on else 0), at=t)


def drifting_switchback(api: Any, redis: Any, window_s: int, min_requests: int, seconds: float,
                        candidate_ms: float) -> tuple[Canary, float]:
    """An operator's switchback canary (5-s periods) on a drifting fleet (log_drifting_fleet), and its start."""
    op = api("operator")
    assert start(op, candidate(op), interval_s=1, min_requests=min_requests, settle_s=2, window_s=window_s,
                 switchback_s=5, initial_delay_s=0, failure_limit=0, latency_against="switchback").status_code == 201
    c = Canary.objects.get()
    t0 = c.created.timestamp()
    log_drifting_fleet(redis, c, t0, seconds, candidate_ms=candidate_ms)
    return c, t0


def test_a_drift_cancels_under_switchback_and_fails_a_comparison_with_before(api: Any, redis_db: Any) -> None:
    op = api("operator")
    for against in ("before", "switchback"):
        Canary.objects.filter(state__in=Canary.LIVE).update(state="aborted")
        assert start(op, candidate(op), interval_s=1, min_requests=50, settle_s=2, window_s=40, baseline_s=30,
                     switchback_s=5, initial_delay_s=0, failure_limit=0,
                     latency_against=against).status_code == 201
        c = Canary.objects.get(state="running")
        t0 = c.created.timestamp()
        log_plain(redis_db, 300, 100.0, t0 - 10)  # the stable policy alone before the canary: 100 ms
        # A harmless candidate on a drifting fleet; 160 s of 5-s periods hold at least 4 on and 4 off ones.
        log_drifting_fleet(redis_db, c, t0, 160, candidate_ms=0.0)
        outcome = analysis.tick(datetime.fromtimestamp(t0 + 163, UTC))
        run = AnalysisRun.objects.filter(canary=c).get()
        if against == "before":
            assert outcome == [f"canary {c.pk}: aborted"] and "latency_p95_ratio" in run.summary  # a false abort
        else:
            assert outcome == [f"canary {c.pk}: promoted"] or outcome == [f"canary {c.pk}: step 1 at 25 %"], (
                outcome, run.summary)
            assert run.verdict == "pass" and run.arms["control"] == {"latency_against": "switchback",
                                                                     "switchback_s": 5.0}
            assert run.arms["off"]["requests"] > 300 and run.arms["whole"]["requests"] > 300


def test_a_slow_candidate_fails_under_switchback_on_the_same_drifting_fleet(api: Any, redis_db: Any) -> None:
    c, t0 = drifting_switchback(api, redis_db, window_s=40, min_requests=50, seconds=160, candidate_ms=1000.0)
    assert analysis.tick(datetime.fromtimestamp(t0 + 163, UTC)) == [f"canary {c.pk}: aborted"]
    run = AnalysisRun.objects.get()
    failed = {x["metric"] for x in run.checks if x["ok"] is False}
    assert "canary_latency_p95_ratio" in failed, run.summary


def test_two_gateways_apply_the_same_on_off_schedule(
        fleet: Fleet, upstreams: Any, gateway: Any, user_token: str, api: Any, redis_db: Any) -> None:
    """At weight 100 the candidate takes every request in an on period and none in an off period, on both
    gateways, by the schedule counted from the canary's creation; the off periods' requests still carry the
    canary's id (the analysis reads them as the stable policy alone)."""
    (up,) = upstreams(1, delay=0.0)
    fleet.add(up.name, up.url)
    op = api("operator")
    r = start(op, candidate(op), steps=[{"weight": 100, "pause_s": 3600}], latency_against="switchback",
              switchback_s=2)
    assert r.status_code == 201, r.content
    c = Canary.objects.get(pk=r.json()["id"])
    gws = [gateway(), gateway()]
    for gw in gws:
        gw.wait(lambda gw=gw: gw.app.canary is not None and gw.app.canary.switchback_s == 2 and len(gw.eligible()),
                what="canary core with its switchback loaded")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    sent = 0
    answered: set[tuple[int, str]] = set()  # (gateway, arm header)
    deadline = time.time() + 60
    with httpx.Client(timeout=30) as client:
        # Until each gateway has answered in an on and an off period (the coin can give a few of a kind in a row).
        while time.time() < deadline and (sent < 120 or len(answered) < 4):
            for i, gw in enumerate(gws):
                resp = client.post(f"{gw.url}/v1/chat/completions", json=chat,
                                   headers={"Authorization": f"Bearer {user_token}", "Cache-Control": "no-cache"})
                assert resp.status_code == 200, resp.text
                answered.add((i, resp.headers["x-switchyard-arm"]))
                sent += 1
            time.sleep(0.05)
    gws[0].wait(lambda: len(reqlog(redis_db)) >= sent, what="every request logged")
    anchor = c.created.timestamp()
    seen: dict[tuple[str, bool], int] = {}
    for e in reqlog(redis_db):
        ts = float(e["ts"])
        on = switched_on(ts, anchor, 2, c.pk)
        assert e["canary"] == str(c.pk)
        assert e["arm"] == ("canary" if on else "stable"), (e, ts - anchor)
        seen[(e["gateway"], on)] = seen.get((e["gateway"], on), 0) + 1
    assert len(seen) == 4, seen  # each gateway served in on and in off periods


def test_the_settings_are_accepted_and_stored_with_defaults(api: Any) -> None:
    op = api("operator")
    r = start(op, candidate(op), latency_against="switchback", switchback_s=20, window_s=40, early_settle_s=15)
    assert r.status_code == 201, r.content
    a = Canary.objects.get().analysis
    assert (a["latency_against"], a["switchback_s"], a["window_s"], a["early_settle_s"]) == ("switchback", 20, 40, 15)
    Canary.objects.update(state="aborted")
    assert start(op, candidate(op)).status_code == 201
    a = Canary.objects.get(state="running").analysis
    assert (a["switchback_s"], a["early_settle_s"]) == (15, 0)  # defaults; switchback_s unused unless chosen


def test_the_rank_test_over_periods() -> None:
    from control.canary import ranktest

    assert ranktest.p_worse([3.0, 4.0, 5.0], [1.0, 2.0]) == 0.1  # every on period worse: 1 labelling in 10
    assert ranktest.p_worse([3.0, 1.5, 5.0], [1.0, 2.0]) == 0.2
    assert ranktest.p_worse([1.0, 1.0], [1.0, 1.0]) == 1.0  # ties: no evidence
    assert ranktest.p_worse([], [1.0]) == 1.0
    assert ranktest.p_worse([float(x) for x in range(100, 130)], [float(x) for x in range(30)]) < 1e-6  # normal
    assert ranktest.p_worse([float(x) for x in range(30)], [float(x) for x in range(100, 130)]) > 0.99


def period(p95: float, good: float = 1.0, canary_p95: float | None = None) -> dict[str, Any]:
    return {**figures(150, p95=p95, good=good), "canary_p95_latency_ms": canary_p95 if canary_p95 else p95}


def test_a_pooled_difference_the_periods_do_not_agree_on_does_not_fail() -> None:
    """One off period with far better goodput than the rest makes the pooled on/off ratio look bad; the periods
    do not agree (on periods better than some off periods), so the check is left undecided and the run passes. The
    same pooled figures with every on period worse fail."""
    stable, canary, whole = figures(500), figures(100), figures(600, good=0.6)
    off = figures(600, good=0.8)
    mixed = {"on": [period(100, good=0.7), period(100, good=0.5), period(100, good=0.66), period(100, good=0.55)],
             "off": [period(100, good=0.6), period(100, good=0.65), period(100, good=1.0), period(100, good=0.68)]}
    verdict, checks = analysis.judge(stable, canary, SWITCHBACK, whole, None, off, mixed)
    assert verdict == "pass", checks
    goodput = next(c for c in checks if c["metric"] == "goodput_ratio")
    assert goodput["ok"] is None and "not consistently worse" in goodput["note"]
    assert goodput["periods"]["p"] > analysis.SWITCHBACK_ALPHA
    # The stored summary says how close it came rather than "every check within its bound".
    assert analysis._summary(verdict, checks) == (
        f"no check failed; past its bound but the periods do not agree: goodput_ratio 0.75 "
        f"(rank p {goodput['periods']['p']:g})")
    agree = {"on": [period(100, good=0.5), period(100, good=0.55), period(100, good=0.52), period(100, good=0.6)],
             "off": [period(100, good=0.7), period(100, good=0.8), period(100, good=0.9), period(100, good=0.75)]}
    verdict, checks = analysis.judge(stable, canary, SWITCHBACK, whole, None, off, agree)
    assert verdict == "fail" and [c["metric"] for c in checks if c["ok"] is False] == ["goodput_ratio"]
    # The candidate's own latency: every on period's canary p95 above every off period's p95.
    slow = {"on": [period(100, canary_p95=300), period(100, canary_p95=250), period(100, canary_p95=280),
                   period(100, canary_p95=260)],
            "off": [period(100), period(110), period(105), period(100)]}
    verdict, checks = analysis.judge(stable, figures(100, p95=280), SWITCHBACK, figures(600), None, figures(600),
                                     slow)
    assert verdict == "fail" and [c["metric"] for c in checks if c["ok"] is False] == ["canary_latency_p95_ratio"]


def test_fewer_periods_than_switchback_periods_are_inconclusive_however_they_look() -> None:
    """Three on and three off periods, the on ones all far worse: one window of a few periods cannot tell a
    candidate from the fleet's own swings (bench run 7's good candidate was aborted on five), so no verdict."""
    few = {"on": [period(900), period(950), period(990)], "off": [period(100), period(110), period(105)]}
    verdict, checks = analysis.judge(figures(500), figures(100), SWITCHBACK, figures(600, p95=950), None,
                                     figures(600), few)
    assert verdict == "inconclusive"
    assert checks == [{"metric": "switchback_periods", "value": 3, "threshold": 4, "ok": None,
                       "note": "too few switchback periods: 3 on and 3 off whole periods in the step so far, "
                               "4 of each needed"}]
    enough = {"on": [*few["on"], period(920)], "off": [*few["off"], period(100)]}
    assert analysis.judge(figures(500), figures(100), SWITCHBACK, figures(600, p95=950), None, figures(600),
                          enough)[0] == "fail"


def test_the_span_reaches_back_for_enough_periods_within_the_step() -> None:
    """switchback_start: the latest period start from which the span holds `need` whole on and off periods, never
    before the step's start (then the run is inconclusive)."""
    anchor, p = 1_000_000.0, 10.0
    for canary_id in range(1, 30):
        end = anchor + 400.0 + 3.0  # period 40 is not whole yet
        begins = analysis.switchback_start(canary_id, anchor, p, 4, anchor, end)
        k = round((begins - anchor) / p)
        states = [period_on(canary_id, i) for i in range(k, 40)]
        assert sum(states) >= 4 and len(states) - sum(states) >= 4
        # the latest such start: one period later there are too few of one kind
        later = states[1:]
        assert sum(later) < 4 or len(later) - sum(later) < 4
        # never before the floor: with the step started at period 36 there cannot be 4 of each
        floor = anchor + 36 * p
        assert analysis.switchback_start(canary_id, anchor, p, 4, floor, end) == floor


def test_the_run_window_extends_back_in_the_step_for_enough_periods(api: Any, redis_db: Any) -> None:
    """A 20-s window of 5-s periods holds four periods; the run's window reaches back within the step until it holds
    four on and four off ones, and its stored span says so."""
    c, t0 = drifting_switchback(api, redis_db, window_s=20, min_requests=20, seconds=200, candidate_ms=0.0)
    analysis.tick(datetime.fromtimestamp(t0 + 203, UTC))
    run = AnalysisRun.objects.get()
    on, off = run.arms["periods"]["on"], run.arms["periods"]["off"]
    assert len(on) >= 4 and len(off) >= 4 and run.verdict == "pass", run.summary
    assert (run.window_to - run.window_from).total_seconds() >= 20
    assert run.window_from.timestamp() == pytest.approx(t0 + 5 * min(p["period"] for p in on + off), abs=1e-3)
