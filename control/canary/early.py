"""The early window of a scheduler canary's analysis (`early_settle_s`): fail a herding candidate before its
slowest requests have ended.

The settled window (analysis.window) ends `settle_s` ago, so that every request of it has ended and is in the log;
set to the longest a request can take, that lag is most of the time to a verdict. The early window ends only
`early_settle_s` ago. Its requests that have not ended yet are not in the log, but every gateway publishes the
arrival time of each canary request it still has open (canary_arm.OPEN_KEY, every second), so the analysis counts
them too, each as at least as slow as its age: a *censored* latency. From those lower bounds the p95 is bounded:
below by putting each open request at its age, above by putting it past every ended one (no upper bound when the
open requests reach the p95's rank). The early window can only fail a run, never pass one, and only when the check
fails on the bounds that favour the candidate (its side's lower bound over the reference's upper bound); a pass,
and every other check, wait for the settled window.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import orjson

from control.canary import analysis
from control.canary.models import AnalysisRun, Canary
from control.canary.split import CANARY, STABLE, period_index, switched_on
from control.scheduler.canary_arm import OPEN_KEY
from dashboard.metrics.latest import redis_client

OPEN_PATTERN = OPEN_KEY.format("*")


def open_requests(canary_id: int, now: float) -> tuple[list[tuple[float, str, float]], float]:
    """([(arrival ts, arm, age in ms when published)], the oldest publication time) of canary `canary_id`'s
    requests open at the gateways. The log is read up to that oldest time: a request that ended after it may be
    both open in a gateway's list and in the log, and would count twice."""
    r = redis_client()
    keys = list(r.scan_iter(match=OPEN_PATTERN, count=100))
    out: list[tuple[float, str, float]] = []
    oldest = now
    for raw in r.mget(keys) if keys else []:
        try:
            doc = orjson.loads(raw) if raw else None
            if not isinstance(doc, dict) or doc.get("canary") != canary_id:
                continue
            at = float(doc["at"])
            entries = [(float(ts), str(arm), max(0.0, (at - float(ts)) * 1000)) for ts, arm in doc["open"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a gateway's half-written or foreign document: its open requests are unknown, not zero
        out += entries
        oldest = min(oldest, at)
    return out, oldest


def p95_bounds(done: list[float], ages: list[float]) -> tuple[float | None, float | None]:
    """(low, high) bounds of the nearest-rank p95 of ended latencies `done` and open requests known only to take
    at least `ages`; high is None when it is unbounded (the open ones reach the p95's rank)."""
    n = len(done) + len(ages)
    if n == 0:
        return None, None
    rank = max(0, math.ceil(0.95 * n) - 1)
    low = sorted(done + ages)[rank]
    ordered = sorted(done)
    high = ordered[rank] if rank < len(ordered) else None
    return round(low, 3), None if high is None else round(high, 3)


def figures(arm: analysis.Arm) -> dict[str, Any]:
    low, high = p95_bounds(arm.latency_ms, arm.open_ms)
    return {"requests": arm.requests + len(arm.open_ms), "open": len(arm.open_ms), "p95_latency_ms": low,
            "p95_latency_ms_low": low, "p95_latency_ms_high": high}


def judge(pairs: list[tuple[str, dict[str, Any], dict[str, Any]]], a: dict[str, Any]) -> list[dict[str, Any]]:
    """The early checks: for each (metric, tried, reference), the tried side's p95 lower bound over the
    reference's upper bound; ok=False only when even that is past max_latency_p95_ratio, None when it cannot be
    told yet (too few requests, or the reference unbounded)."""
    bound = a["max_latency_p95_ratio"]
    checks: list[dict[str, Any]] = []
    for metric, tried, ref in pairs:
        low, high = tried.get("p95_latency_ms_low"), ref.get("p95_latency_ms_high")
        if min(tried["requests"], ref["requests"]) < a["min_requests"]:
            checks.append({"metric": metric, "value": None, "threshold": bound, "ok": None,
                           "note": "too few requests"})
        elif low is None or high is None or high <= 0:
            checks.append({"metric": metric, "value": None, "threshold": bound, "ok": None,
                           "note": "the reference's p95 is not bounded yet"})
        else:
            value = low / high
            checks.append({"metric": metric, "value": round(value, 4), "threshold": bound,
                           "ok": False if value > bound else None})
    return checks


def window(c: Canary, now: datetime) -> tuple[datetime, datetime] | None:
    """The early window: like the settled one, ending early_settle_s ago; None when the analysis has none."""
    settle = c.analysis.get("early_settle_s", 0)
    return analysis.window(c, now, settle) if settle else None


def measure(c: Canary, now: datetime, span: tuple[datetime, datetime]) -> AnalysisRun | None:
    """The early window's run of canary `c`: stored (verdict fail) only when a check fails on the bounds; None
    otherwise (the settled window decides)."""
    a = c.analysis
    start, end = span[0].timestamp(), span[1].timestamp()
    period = analysis.switchback_s(c)
    anchor = c.created.timestamp()
    opens, read_until = open_requests(c.pk, now.timestamp())
    periods: analysis.Periods = {}
    arms = analysis.read_window(c.pk, start, end, a["goodput_ttft_ms"], read_until, anchor, period, periods)
    for ts, arm_name, age_ms in opens:
        if start <= ts <= end:
            name = arm_name if switched_on(ts, anchor, period, c.pk) else analysis.OFF
            if name in arms:
                arms[name].open_ms.append(age_ms)
                if period:
                    periods.setdefault(period_index(ts, anchor, period), {}).setdefault(
                        name, analysis.Arm()).open_ms.append(age_ms)
    off = arms.pop(analysis.OFF)
    figs: dict[str, Any] = {name: figures(arm) for name, arm in arms.items()}
    figs["whole"] = figures(analysis.Arm.both(arms))
    against = a.get("latency_against", "arms")
    if against == "switchback":
        figs[analysis.OFF] = figures(off)
        figs["periods"] = analysis.period_figures(
            periods, start, end, anchor, period, c.pk, figures,
            lambda arm: {"canary_p95_latency_ms_low": p95_bounds(arm.latency_ms, arm.open_ms)[0]})
        if analysis.few_periods(figs["periods"], a) is not None:
            return None  # too few periods to fail on: the settled window says inconclusive
        # Only the candidate arm's own requests. The early window exists to catch a candidate whose requests pile
        # up, before they end; the whole fleet's open requests in the on periods are mostly the stable arm's,
        # which a herding stable policy leaves open for as long in any period (bench run 8's false abort: 40
        # classic-arm requests open). The whole fleet is judged on settled windows, where every request has ended.
        pairs = [("early_canary_latency_p95_ratio", figs[CANARY], figs[analysis.OFF])]
    elif against == "before":
        if c.baseline is None:
            return None  # the settled window's first run reads it
        before = c.baseline
        figs["before"] = before
        ref = {"requests": before["requests"], "p95_latency_ms_high": before["p95_latency_ms"]}
        pairs = [("early_latency_p95_ratio", figs["whole"], ref)]
    else:
        pairs = [("early_latency_p95_ratio", figs[CANARY], figs[STABLE])]
    checks = judge(pairs, a)
    if against == "switchback":
        analysis.period_guard(checks, figs["periods"])
    failed = [x for x in checks if x["ok"] is False]
    if not failed:
        return None
    figs["control"] = {"latency_against": against, "switchback_s": period, "early_settle_s": a["early_settle_s"]}
    summary = "early window (open requests at their age): " + "; ".join(
        f"{x['metric']} {x['value']} past {x['threshold']}" for x in failed)
    return AnalysisRun.objects.create(canary=c, ts=now, step=c.step, weight=c.weight, window_from=span[0],
                                      window_to=span[1], verdict=AnalysisRun.Verdict.FAIL, arms=figs,
                                      checks=checks, summary=summary)
