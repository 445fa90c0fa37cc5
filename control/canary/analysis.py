"""Canary analysis, every interval. A scheduler canary: the two arms, and the whole fleet against the stable
policy alone before the canary or, with a switchback control, in the "off" periods of the same window
(latency_against), over the requests that arrived in one settled window of the request log (and, with
early_settle_s, a later window whose open requests count at their age: control.canary.early). A scaling canary: its pool against the same pool before it (control.canary.scaling).

A run's verdict follows Argo Rollouts' AnalysisRun semantics: *inconclusive* while either arm has fewer than
`min_requests` requests in the window (too little traffic to say), else *fail* when any check is past its bound,
else *pass*. Failed runs are counted over the whole canary and more than `failure_limit` of them abort it; more
than `inconclusive_limit` inconclusive runs in a row pause it for a person. A step is done when its pause has
elapsed and the latest run (its window inside the step, so at the step's weight) passed; after the last step the
candidate is promoted. Pure functions (`measure`, `judge`) hold the arithmetic; `tick` does the I/O.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from control.canary import ranktest, scaling, service
from control.canary.models import AnalysisRun, Canary
from control.canary.split import CANARY, STABLE, period_index, period_on, switched_on
from control.routing import reqlog
from core.audit.context import Origin
from core.audit.record import record
from dashboard.metrics.latest import redis_client

log = logging.getLogger(__name__)
READ_BATCH = 5000
OFF = "off"  # switchback: the canary's requests that arrived in an "off" period (the stable policy alone)
# Switchback: a ratio past its bound fails only when the whole periods of the span agree, the on periods ranking
# worse than the off periods with at most this probability under "no effect" (ranktest.p_worse). The periods are
# switched on and off at random (split.period_on), so that probability is a true randomization test. With the
# default 4 on and 4 off periods it allows one off period to rank above one on period, no more (p 2/70).
SWITCHBACK_ALPHA = 0.05
EPS = 1e-6  # of a period: datetime keeps microseconds, so a period's edge read back from one may be off by that
Periods = dict[int, dict[str, "Arm"]]  # switchback period index -> arm name -> its requests in that period


@dataclass
class Arm:
    requests: int = 0
    errors: int = 0
    throttled: int = 0
    good: int = 0
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)

    open_ms: list[float] = field(default_factory=list)  # requests not ended yet: their age (a latency lower bound)

    def add(self, status: int, latency_ms: float | None, ttft_ms: float | None, goodput_ttft_ms: float) -> None:
        self.requests += 1
        cls = reqlog.status_class(status)
        self.errors += cls == "5xx"
        self.throttled += cls == "429"
        if latency_ms is not None:
            self.latency_ms.append(latency_ms)
        if ttft_ms is not None:
            self.ttft_ms.append(ttft_ms)
        if cls == "2xx" and (ttft_ms if ttft_ms is not None else latency_ms or 0.0) <= goodput_ttft_ms:
            self.good += 1

    @classmethod
    def both(cls, arms: dict[str, Arm]) -> Arm:
        """The two arms together: the whole fleet's requests of the window."""
        out = cls()
        for arm in arms.values():
            out.requests += arm.requests
            out.errors += arm.errors
            out.throttled += arm.throttled
            out.good += arm.good
            out.latency_ms += arm.latency_ms
            out.ttft_ms += arm.ttft_ms
            out.open_ms += arm.open_ms
        return out

    def figures(self) -> dict[str, Any]:
        n = self.requests
        return {"requests": n, "p95_latency_ms": p95(self.latency_ms), "p95_ttft_ms": p95(self.ttft_ms),
                "error_rate": self.errors / n if n else None, "rate_429": self.throttled / n if n else None,
                "goodput": self.good / n if n else None}


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile (exact: the window's entries are all here)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 3)


def read_window(canary_id: int, start: float, end: float, goodput_ttft_ms: float,
                read_until: float | None = None, anchor: float = 0.0, switchback_s: float = 0.0,
                periods: Periods | None = None) -> dict[str, Arm]:
    """Both arms of canary `canary_id`: the requests that *arrived* between unix times start and end, read from
    the log up to `read_until` (default: now). With a switchback period (`switchback_s` from `anchor`) the arms
    hold the "on" periods' requests and OFF those of the "off" periods (the same function the gateways split by,
    on the arrival time the gateway logged), and `periods` (when given) the same split by switchback period. By
    arrival, so both arms are judged on requests of the same period,
    each with its slow requests as well as its fast ones; the caller leaves a settle lag between `end` and
    `read_until` so that every request of the window has ended and been logged (the log holds a request from its
    end: a window of endings compares requests that started at different times, and early in a step holds only
    the fast ones)."""
    wanted = str(canary_id).encode()
    arms = {STABLE: Arm(), CANARY: Arm(), OFF: Arm()}

    def arm_of(fields: dict[bytes, bytes], ts: float) -> list[Arm]:
        if fields.get(b"canary") != wanted:
            return []
        name = fields.get(b"arm", b"").decode() if switched_on(ts, anchor, switchback_s, canary_id) else OFF
        if name not in arms:
            return []
        if periods is None or switchback_s <= 0:
            return [arms[name]]
        return [arms[name], periods.setdefault(period_index(ts, anchor, switchback_s), {}).setdefault(name, Arm())]

    _read(start, end, goodput_ttft_ms, read_until, arm_of)
    return arms


def read_before(start: float, end: float, goodput_ttft_ms: float, read_until: float | None = None) -> Arm:
    """The requests that arrived between start and end outside any canary: the stable policy alone."""
    alone = Arm()
    _read(start, end, goodput_ttft_ms, read_until, lambda fields, ts: [] if fields.get(b"arm") else [alone])
    return alone


def _read(start: float, end: float, goodput_ttft_ms: float, read_until: float | None,
          arm_of: Callable[[dict[bytes, bytes], float], list[Arm]]) -> None:
    """Add each logged request that arrived in [start, end] to the Arms `arm_of` gives it (none: skip). Answers
    served from the answer cache are left out: they say nothing about the routing policy."""
    r = redis_client()
    # An entry's stream id is when it ended, never before it arrived.
    low, high = reqlog.stream_id_at(start), reqlog.stream_id_at(read_until if read_until is not None else time.time())
    while True:
        batch = r.xrange(reqlog.STREAM, min=low, max=high, count=READ_BATCH)
        for eid, fields in batch:
            if fields.get(b"cache") == b"hit":
                continue
            try:
                e = reqlog.parse(eid, fields)
            except (ValueError, OverflowError):
                continue
            if start <= e.ts <= end:
                for arm in arm_of(fields, e.ts):
                    arm.add(e.status, e.latency_ms, e.ttft_ms, goodput_ttft_ms)
        if len(batch) < READ_BATCH:
            return
        low = "(" + batch[-1][0].decode()


def window(c: Canary, now: datetime, settle_s: float | None = None) -> tuple[datetime, datetime] | None:
    """The arrivals a run at `now` judges: the last `window_s` seconds before the settle lag (`settle_s`, default
    the analysis's), inside the current step (never a request routed at an earlier weight). None until that much
    of the step (or all of it, for a step shorter than the window) has settled."""
    a = c.analysis
    end = now - timedelta(seconds=a.get("settle_s", 0) if settle_s is None else settle_s)
    # A whole window, or the whole step when it is shorter: the first seconds of a step are too few to judge it on.
    need = timedelta(seconds=min(a["window_s"], c.steps[c.step]["pause_s"]))
    if end <= c.step_started or end - c.step_started < need:
        return None
    start = max(c.step_started, end - timedelta(seconds=a["window_s"]))
    period = switchback_s(c)
    if period:
        begins = switchback_start(c.pk, c.created.timestamp(), period, a.get("switchback_periods", 4),
                                  c.step_started.timestamp(), end.timestamp())
        start = min(start, datetime.fromtimestamp(begins, tz=start.tzinfo))
    return start, end


def switchback_start(canary_id: int, anchor: float, period_s: float, need: int, floor: float, end: float) -> float:
    """Switchback: where the compared span must begin so that [begin, end] holds `need` whole on periods and
    `need` whole off periods, but never before `floor` (the step's start: never at an earlier weight). The periods
    are the units that were switched and one window of a few periods cannot tell a candidate from the fleet's own
    swings; a span that does not reach `need` of each is judged inconclusive (judge)."""
    k = math.floor((end - anchor) / period_s + EPS) - 1  # the last period that has ended by `end`
    on = off = 0
    while anchor + k * period_s >= floor - EPS * period_s:
        if period_on(canary_id, k):
            on += 1
        else:
            off += 1
        if on >= need and off >= need:
            return anchor + k * period_s
        k -= 1
    return floor


def judge(stable: dict[str, Any], canary: dict[str, Any], a: dict[str, Any], whole: dict[str, Any] | None = None,
          before: dict[str, Any] | None = None, off: dict[str, Any] | None = None,
          periods: dict[str, list[dict[str, Any]]] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(verdict, checks) from the two arms' figures and the analysis settings. With latency_against=before, the
    latency, TTFT and goodput checks compare `whole` (both arms) with `before` (the stable policy alone before the
    canary); with switchback, `whole` (both arms in the on periods) with `off` (the stable policy alone in the off
    periods of the same window), and the canary arm's own p95 latency with `off` too (at 5 % the candidate's
    harm to the whole is diluted twenty-fold; its own requests show it undiluted, against the same minutes); such a
    check past its bound fails only when `periods` (the window's whole periods' figures, {"on": [...], "off":
    [...]}) agree (period_guard). The 5xx and 429 checks are always arm against arm (a request's own failure is its
    arm's doing)."""
    checks: list[dict[str, Any]] = []
    short = [name for name, arm in ((STABLE, stable), (CANARY, canary)) if arm["requests"] < a["min_requests"]]
    against = a.get("latency_against", "arms")
    if against == "before" and (before is None or before["requests"] < a["min_requests"]):
        short.append("the stable policy alone before the canary")
    if against == "switchback" and (off is None or off["requests"] < a["min_requests"]):
        short.append("the stable policy alone in the off periods")
    if short:
        checks.append({"metric": "min_requests", "value": min(stable["requests"], canary["requests"]),
                       "threshold": a["min_requests"], "ok": None,
                       "note": f"too few requests on {', '.join(short)}"})
    few = few_periods(periods, a) if against == "switchback" and periods is not None else None
    if few is not None:
        checks.append(few)
    if checks:
        return AnalysisRun.Verdict.INCONCLUSIVE, checks

    base, tried = {"before": (before, whole), "switchback": (off, whole)}.get(against, (stable, canary))
    assert base is not None and tried is not None

    def ratio(metric: str, key: str, bound: float, over: dict[str, Any] | None = None) -> None:
        s, c = base[key], (tried if over is None else over)[key]
        if s is None or c is None or s <= 0:
            checks.append({"metric": metric, "value": None, "threshold": bound, "ok": None, "note": "no data"})
            return
        value = c / s
        checks.append({"metric": metric, "value": round(value, 4), "threshold": bound, "ok": value <= bound})

    def diff(metric: str, key: str, bound: float) -> None:
        value = canary[key] - stable[key]
        checks.append({"metric": metric, "value": round(value, 5), "threshold": bound, "ok": value <= bound})

    ratio("latency_p95_ratio", "p95_latency_ms", a["max_latency_p95_ratio"])
    ratio("ttft_p95_ratio", "p95_ttft_ms", a["max_ttft_p95_ratio"])
    if against == "switchback":
        ratio("canary_latency_p95_ratio", "p95_latency_ms", a["max_latency_p95_ratio"], canary)
    diff("error_rate_diff", "error_rate", a["max_error_rate_diff"])
    diff("rate_429_diff", "rate_429", a["max_429_rate_diff"])
    if base["goodput"] > 0:
        value = tried["goodput"] / base["goodput"]
        checks.append({"metric": "goodput_ratio", "value": round(value, 4), "threshold": a["min_goodput_ratio"],
                       "ok": value >= a["min_goodput_ratio"]})
    else:  # nothing good on stable: the canary cannot be worse by this measure
        checks.append({"metric": "goodput_ratio", "value": None, "threshold": a["min_goodput_ratio"], "ok": None,
                       "note": "the compared goodput is 0"})
    if against == "switchback" and periods is not None:
        period_guard(checks, periods)
    failed = [c for c in checks if c["ok"] is False]
    return (AnalysisRun.Verdict.FAIL if failed else AnalysisRun.Verdict.PASS), checks


def few_periods(periods: dict[str, list[dict[str, Any]]], a: dict[str, Any]) -> dict[str, Any] | None:
    """Switchback: the inconclusive check when the span holds fewer than switchback_periods whole on or off periods
    (None when it holds enough). A verdict from a few periods is the luck of which ones the fleet's queues peaked in."""
    need = a.get("switchback_periods", 4)
    on, off = len(periods["on"]), len(periods["off"])
    if on >= need and off >= need:
        return None
    return {"metric": "switchback_periods", "value": min(on, off), "threshold": need, "ok": None,
            "note": f"too few switchback periods: {on} on and {off} off whole periods in the step so far, "
                    f"{need} of each needed"}


# check -> (the on periods' figure, the off periods' figure, True when higher is worse)
PERIOD_FIGURES = {
    "latency_p95_ratio": ("p95_latency_ms", "p95_latency_ms", True),
    "ttft_p95_ratio": ("p95_ttft_ms", "p95_ttft_ms", True),
    "goodput_ratio": ("goodput", "goodput", False),
    "canary_latency_p95_ratio": ("canary_p95_latency_ms", "p95_latency_ms", True),
    "early_latency_p95_ratio": ("p95_latency_ms_low", "p95_latency_ms_high", True),
    "early_canary_latency_p95_ratio": ("canary_p95_latency_ms_low", "p95_latency_ms_high", True),
}


def period_guard(checks: list[dict[str, Any]], periods: dict[str, list[dict[str, Any]]]) -> None:
    """Switchback: a check past its bound over the pooled window fails only when the window's whole periods agree
    (the on periods rank worse than the off periods, ranktest.p_worse <= SWITCHBACK_ALPHA); otherwise it is left
    undecided (ok None, with the rank p in its note). The pooled figure of a window of a few periods is mostly the
    luck of which periods the fleet's queues peaked in."""
    for check in checks:
        if check["ok"] is not False or check["metric"] not in PERIOD_FIGURES:
            continue
        on_key, off_key, higher_worse = PERIOD_FIGURES[check["metric"]]
        sign = 1.0 if higher_worse else -1.0
        on = [sign * p[on_key] for p in periods["on"] if p.get(on_key) is not None]
        # An off period without the figure ranks as the worst: it can only keep the check from failing.
        off = [sign * p[off_key] if p.get(off_key) is not None else math.inf for p in periods["off"]]
        p = ranktest.p_worse(on, off)
        check["periods"] = {"on": len(on), "off": len(off), "p": round(p, 4)}
        if p > SWITCHBACK_ALPHA:
            check["ok"] = None
            check["note"] = (f"{check['value']} is past {check['threshold']}, but the on periods are not "
                             f"consistently worse than the off periods (rank p {p:.2f} over {len(on)} on / "
                             f"{len(off)} off periods)")


def _summary(verdict: str, checks: list[dict[str, Any]]) -> str:
    if verdict == AnalysisRun.Verdict.INCONCLUSIVE:
        return checks[0].get("note", "inconclusive")
    bad = [c for c in checks if c["ok"] is False]
    if not bad:
        # A pass with a check past its bound that the switchback periods did not agree on says so: it is how close
        # the run came to failing (bench run 10: p 0.057 against 0.05), not "within its bound".
        undecided = [c for c in checks if c["ok"] is None and "periods" in c]
        if not undecided:
            return "every check within its bound"
        return "no check failed; past its bound but the periods do not agree: " + "; ".join(
            f"{c['metric']} {c['value']} (rank p {c['periods']['p']:g})" for c in undecided)
    return "; ".join(f"{c['metric']} {c['value']} past {c['threshold']}" for c in bad)


def measure(c: Canary, now: datetime, span: tuple[datetime, datetime]) -> AnalysisRun:
    """One analysis run of canary `c` at `now` over the arrivals in `span` (stored)."""
    a = c.analysis
    start, end = span
    figures = window_figures(c, start.timestamp(), end.timestamp(), now.timestamp())
    if a.get("latency_against") == "before":
        if c.baseline is None:
            c.baseline = before_figures(c, now)
            c.save(update_fields=["baseline"])
        figures["before"] = c.baseline
    verdict, checks = judge(figures[STABLE], figures[CANARY], a, figures["whole"], figures.get("before"),
                            figures.get(OFF), figures.get("periods"))
    return AnalysisRun.objects.create(canary=c, ts=now, step=c.step, weight=c.weight, window_from=start,
                                      window_to=end, verdict=verdict, arms=figures, checks=checks,
                                      summary=_summary(verdict, checks))


def switchback_s(c: Canary) -> float:
    """The canary's switchback period in seconds; 0 when it has none (split.switched_on is then always on)."""
    a = c.analysis
    return float(a.get("switchback_s", 0)) if a.get("latency_against") == "switchback" else 0.0


def window_figures(c: Canary, start: float, end: float, read_until: float) -> dict[str, Any]:
    """Each arm's figures over the arrivals in [start, end], the whole's (both arms: with a switchback, of the on
    periods) and, with a switchback, OFF's (with the share of the window's time each side had)."""
    period, anchor = switchback_s(c), c.created.timestamp()
    periods: Periods = {}
    arms = read_window(c.pk, start, end, c.analysis["goodput_ttft_ms"], read_until, anchor, period, periods)
    off = arms.pop(OFF)
    figures: dict[str, Any] = {name: arm.figures() for name, arm in arms.items()}
    figures["whole"] = Arm.both(arms).figures()
    if period:
        figures[OFF] = off.figures()
        figures["control"] = {"latency_against": "switchback", "switchback_s": period}
        figures["periods"] = period_figures(periods, start, end, anchor, period, c.pk, lambda arm: arm.figures(),
                                            lambda arm: {"canary_p95_latency_ms": p95(arm.latency_ms)})
    return figures


def period_figures(periods: Periods, start: float, end: float, anchor: float, period_s: float, canary_id: int,
                   figures: Callable[[Arm], dict[str, Any]], canary: Callable[[Arm], dict[str, Any]]
                   ) -> dict[str, list[dict[str, Any]]]:
    """{"on": [...], "off": [...]}: each whole switchback period inside [start, end] (a period cut by the window's
    edge is left out: its figures would be of a few seconds), the on periods' whole (both arms) with `canary`'s
    figures of their canary arm, the off periods' stable policy alone."""
    out: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    # (the epsilon: a span that starts at a period's beginning, through datetime's microseconds, still holds it)
    first = math.ceil((start - anchor) / period_s - EPS)
    last = math.floor((end - anchor) / period_s + EPS) - 1
    for k in range(first, last + 1):  # every whole period, also one without a request (it counts as switched)
        arms = periods.get(k, {})
        if period_on(canary_id, k):
            both = Arm.both({name: arms[name] for name in (STABLE, CANARY) if name in arms})
            out["on"].append({"period": k, **figures(both), **canary(arms.get(CANARY, Arm()))})
        else:
            out["off"].append({"period": k, **figures(arms.get(OFF, Arm()))})
    return out


def before_figures(c: Canary, now: datetime) -> dict[str, Any]:
    """The stable policy alone over the baseline_s before the canary started (every request of it has settled by
    the canary's first run, which waits settle_s). Read once and kept on the canary: the log is trimmed."""
    a = c.analysis
    started = c.created.timestamp()
    return read_before(started - a["baseline_s"], started, a["goodput_ttft_ms"], now.timestamp()).figures()


def measure_pool(c: Canary, now: datetime) -> AnalysisRun:
    """One analysis run of a scaling canary: its pool now against the same pool before the canary (stored)."""
    figures, verdict, checks, (start, end) = scaling.measure(c, now)
    return AnalysisRun.objects.create(canary=c, ts=now, step=c.step, weight=c.weight, window_from=start,
                                      window_to=end, verdict=verdict, arms=figures, checks=checks,
                                      summary=_summary(verdict, checks))


def tick(now: datetime | None = None) -> list[str]:
    """Every live canary whose interval has passed: one analysis run and what follows from it. Returns what
    happened, one line per canary (for the beat task's result)."""
    now = now or timezone.now()
    out = []
    for pk in Canary.objects.filter(state=Canary.State.RUNNING).values_list("pk", flat=True):
        try:
            with transaction.atomic():
                c = Canary.objects.select_for_update(skip_locked=True).filter(
                    pk=pk, state=Canary.State.RUNNING).select_related("revision").first()
                if c is None:
                    continue
                if c.last_analysis and now - c.last_analysis < timedelta(seconds=c.analysis["interval_s"]):
                    continue
                if c.kind == "scaling":
                    run = measure_pool(c, now)
                else:
                    if now - c.step_started < timedelta(seconds=c.analysis.get("initial_delay_s", 0)):
                        continue
                    run = _early(c, now)
                    if run is None:
                        span = window(c, now)
                        if span is None:  # nothing of this step has settled yet
                            continue
                        run = measure(c, now, span)
                out.append(_advance(c, now, run))
        except Exception:
            log.exception("canary %s: analysis failed", pk)
            out.append(f"canary {pk}: error")
    return out


def _early(c: Canary, now: datetime) -> AnalysisRun | None:
    """The early window's run when it fails (control.canary.early), else None. Imported here: early builds on
    this module's readers."""
    from control.canary import early

    span = early.window(c, now)
    if span is None:
        return None
    run = early.measure(c, now, span)
    if run is None and window(c, now) is None:  # checked, nothing to say yet: wait an interval as after a run
        c.last_analysis = now
        c.save(update_fields=["last_analysis"])
    return run


def _advance(c: Canary, now: datetime, run: AnalysisRun) -> str:
    origin = Origin.system(service.ACTOR)
    c.last_analysis = now
    a = c.analysis
    if run.verdict == AnalysisRun.Verdict.FAIL:
        c.failures += 1
        c.inconclusive = 0
        c.save(update_fields=["last_analysis", "failures", "inconclusive"])
        if c.failures > a["failure_limit"]:
            service.abort_locked(c, f"analysis failed {c.failures} time(s) (failure limit {a['failure_limit']}); "
                                    f"last: {run.summary}", origin, run)
            return f"canary {c.pk}: aborted"
        return f"canary {c.pk}: failed run {c.failures}"
    if run.verdict == AnalysisRun.Verdict.INCONCLUSIVE:
        c.inconclusive += 1
        c.save(update_fields=["last_analysis", "inconclusive"])
        limit = a["inconclusive_limit"]
        if limit and c.inconclusive > limit:
            c.state = Canary.State.PAUSED
            c.save(update_fields=["state"])
            record(origin, "canary.pause", f"canary:{c.kind}",
                   f"{c.inconclusive} inconclusive analysis runs in a row ({run.summary}); waiting for a person",
                   details={"canary": c.pk, "step": c.step, "weight": c.weight, "analysis_run": run.pk})
            return f"canary {c.pk}: paused (inconclusive)"
        return f"canary {c.pk}: inconclusive"
    c.inconclusive = 0
    c.save(update_fields=["last_analysis", "inconclusive"])
    step = c.steps[c.step]
    if now - c.step_started < timedelta(seconds=step["pause_s"]):
        return f"canary {c.pk}: pass (step {c.step})"
    if c.step + 1 >= len(c.steps):
        service.promote_locked(c, f"all {len(c.steps)} steps passed analysis", origin)
        return f"canary {c.pk}: promoted"
    before = c.weight
    c.step += 1
    c.weight = c.steps[c.step]["weight"]
    c.step_started = now
    c.save(update_fields=["step", "weight", "step_started"])
    record(origin, "canary.step", f"canary:{c.kind}", f"step {c.step - 1} passed analysis: {run.summary}",
           before={"weight": before}, after={"weight": c.weight},
           details={"canary": c.pk, "step": c.step, "analysis_run": run.pk})
    service._announce(c.kind)
    return f"canary {c.pk}: step {c.step} at {c.weight:g} %"
