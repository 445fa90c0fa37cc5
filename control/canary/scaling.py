"""The pool-scoped scaling canary: which pool runs a candidate scaling revision, and how that pool is judged.

While a scaling canary is live (running or paused), the controller applies the candidate's entry for the canary's
pool to that pool only (`trial`, read by control.controller.actions.pool_policy, the controller's one way to a pool's
rules); every other pool keeps the active revision's.

The analysis compares the pool with itself: the last `window_s` of the canary against the `baseline_s` right before
it started, on two figures an operator already reasons in, each normalised so that a busier or quieter hour does
not pass for a better or worse policy:

* SLO-violation minutes as a share of the minutes with traffic (a minute violates the SLO when the pool's p95
  latency, from the gateway's minute histograms, is above `slo_p95_latency_ms` or its 5xx rate above
  `slo_error_rate`);
* GPU-hours per 1000 requests (GPU-minutes are the per-GPU 1-minute rollup rows of the pool's nodes).

Not against the other pools: they differ in hardware, models and traffic, so a difference between pools says little
about the rule being tried, while the same pool just before the change differs only by the change and the hour.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from control.canary.models import AnalysisRun, Canary
from control.policy import schemas
from control.routing import histogram

BASELINE = "baseline"
CANARY = "canary"


def trial(pool: str) -> dict[str, Any] | None:
    """The candidate's scaling entry for `pool` while a scaling canary tries it there, else None."""
    c = (Canary.objects.filter(kind="scaling", pool=pool, state__in=Canary.LIVE).select_related("revision")
         .first())
    if c is None:
        return None
    return schemas.for_pool(schemas.validate("scaling", c.revision.document), pool)


def live() -> Canary | None:
    """The scaling canary now running or paused (at most one per kind), for pages that mark its pool."""
    return Canary.objects.filter(kind="scaling", state__in=Canary.LIVE).first()


def windows(c: Canary, now: datetime) -> dict[str, tuple[datetime, datetime]]:
    a = c.analysis
    started = c.created
    return {BASELINE: (started - timedelta(seconds=a["baseline_s"]), started),
            CANARY: (max(started, now - timedelta(seconds=a["window_s"])), now)}


def pool_figures(pool: str, start: datetime, end: datetime, a: dict[str, Any]) -> dict[str, Any]:
    """One window of the pool: minutes with traffic, requests, SLO-violation minutes and their share, GPU-hours and
    GPU-hours per 1000 requests. Whole minutes only: a minute row counts when it starts inside [start, end)."""
    with connection.cursor() as cur:
        cur.execute("SELECT minute, sum(requests), sum(status_5xx), array_agg(latency_buckets) "
                    "FROM routing_requestminute WHERE pool = %s AND minute >= %s AND minute < %s "
                    "GROUP BY minute", [pool, start, end])
        rows = cur.fetchall()
        cur.execute("SELECT count(*) FROM gpu_sample_1m s JOIN fleet_node n ON n.id = s.node_id "
                    "JOIN fleet_pool p ON p.id = n.pool_id WHERE p.name = %s AND s.bucket >= %s AND s.bucket < %s",
                    [pool, start, end])
        gpu_minutes = int(cur.fetchone()[0])
    minutes = requests = violations = 0
    for _minute, n, errors, buckets in rows:
        if not n:
            continue
        minutes += 1
        requests += int(n)
        p95 = histogram.percentile(histogram.merge(buckets), 0.95)
        if (p95 is not None and p95 > a["slo_p95_latency_ms"]) or int(errors) / int(n) > a["slo_error_rate"]:
            violations += 1
    gpu_hours = gpu_minutes / 60
    return {"from": start.isoformat(), "to": end.isoformat(), "minutes": minutes, "requests": requests,
            "violation_minutes": violations, "violation_share": violations / minutes if minutes else None,
            "gpu_hours": round(gpu_hours, 4),
            "gpu_hours_per_1k": round(gpu_hours / requests * 1000, 6) if requests else None}


def judge(baseline: dict[str, Any], canary: dict[str, Any], a: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(verdict, checks): inconclusive while either window is short of minutes or requests or has no GPU-hours."""
    short = [name for name, w in ((BASELINE, baseline), (CANARY, canary))
             if w["minutes"] < a["min_minutes"] or w["requests"] < a["min_requests"]]
    if short:
        return AnalysisRun.Verdict.INCONCLUSIVE, [{
            "metric": "min_minutes", "value": min(baseline["minutes"], canary["minutes"]),
            "threshold": a["min_minutes"], "ok": None,
            "note": f"too little traffic in the {' and '.join(short)} window (at least {a['min_minutes']} minutes "
                    f"and {a['min_requests']} requests each)"}]
    checks: list[dict[str, Any]] = []
    diff = canary["violation_share"] - baseline["violation_share"]
    checks.append({"metric": "slo_violation_share_diff", "value": round(diff, 4),
                   "threshold": a["max_slo_violation_share_diff"], "ok": diff <= a["max_slo_violation_share_diff"]})
    if not baseline["gpu_hours_per_1k"]:
        return AnalysisRun.Verdict.INCONCLUSIVE, [*checks, {
            "metric": "gpu_hours_ratio", "value": None, "threshold": a["max_gpu_hours_ratio"], "ok": None,
            "note": "no GPU samples in the baseline window"}]
    ratio = (canary["gpu_hours_per_1k"] or 0.0) / baseline["gpu_hours_per_1k"]
    checks.append({"metric": "gpu_hours_ratio", "value": round(ratio, 4), "threshold": a["max_gpu_hours_ratio"],
                   "ok": ratio <= a["max_gpu_hours_ratio"]})
    failed = [c for c in checks if c["ok"] is False]
    return (AnalysisRun.Verdict.FAIL if failed else AnalysisRun.Verdict.PASS), checks


def measure(c: Canary, now: datetime) -> tuple[dict[str, Any], str, list[dict[str, Any]], tuple[datetime, datetime]]:
    """(figures of both windows, verdict, checks, the canary window) for a run at `now`."""
    spans = windows(c, now)
    figures = {name: pool_figures(c.pool, start, end, c.analysis) for name, (start, end) in spans.items()}
    verdict, checks = judge(figures[BASELINE], figures[CANARY], c.analysis)
    return figures, verdict, checks, spans[CANARY]
