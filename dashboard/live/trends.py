"""The overview's trend panels: the fleet over a range, from the fleet's minutes, and what changed (the audit).

One call answers every panel of a range: fleet minutes (dashboard.metrics.fleet_rollup) and gateway totals
(control.routing RequestTotal), both one row per minute, bucketed to the range's step; plus the audit events worth a
vertical marker (policy activations and rollbacks, guard rollbacks, canary verdicts, scaling actions).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Q

from control.routing.models import RequestTotal
from core import ranges
from core.audit.models import AuditEvent
from core.ranges import RangeError  # noqa: F401 - the views catch it from here
from dashboard.metrics import fleet_rollup


@dataclass(frozen=True)
class Range:
    name: str
    seconds: int
    step: int  # seconds per point: whole minutes, since the sources are per minute


RANGES: dict[str, Range] = {r.name: r for r in (
    Range("15m", 900, 60),
    Range("1h", 3600, 60),
    Range("6h", 6 * 3600, 120),
    Range("24h", 86400, 600),
    Range("7d", 7 * 86400, 3600),
)}
DEFAULT_RANGE = "1h"


def parse_range(value: str | None) -> Range:
    return ranges.parse_range(value, RANGES, DEFAULT_RANGE)


# Series of the response, in panel order: name -> (label, unit). The CSV has one column per series.
SERIES: dict[str, tuple[str, str]] = {
    "gpu_util_mean": ("GPU util, mean", "%"),
    "gpu_util_max": ("GPU util, max", "%"),
    "requests_s": ("gateway requests", "req/s"),
    "rejected_429_s": ("gateway 429s", "req/s"),
    "ttft_p95_s": ("p95 TTFT, worst node", "s"),
    "e2e_p95_s": ("p95 end-to-end, worst node", "s"),
    "queue": ("queued requests", ""),
    "power_kw": ("power draw", "kW"),
    "energy_per_token_j": ("energy per generated token", "J"),
    "tokens_s": ("tokens generated", "tok/s"),
}

# Audit actions drawn as markers: exact names, and prefixes. A canary's start and its verdict (promote or abort)
# are changes the fleet sees; its intermediate steps and pauses would only crowd the panels.
MARKER_ACTIONS = ("policy.create", "policy.activate", "policy.rollback", "guard.rollback", "canary.start",
                  "canary.promote", "canary.abort")
MARKER_PREFIXES = ("scaling.",)
MAX_MARKERS = 300


def marker_kind(action: str) -> str:
    if action in ("policy.rollback", "guard.rollback"):
        return "rollback"
    return action.split(".", 1)[0]  # policy, canary, scaling


def _fleet_rows(start: datetime, end: datetime, step: int) -> dict[datetime, dict[str, float | None]]:
    # Levels average the minutes of a point; the max keeps the highest. Energy per token is total energy over total
    # tokens (not a mean of per-minute ratios, which quiet minutes would skew).
    sql = (
        "SELECT date_bin(%s, bucket, TIMESTAMPTZ '2000-01-01') AS t, avg(gpu_util_mean), max(gpu_util_max), "
        "avg(ttft_p95_max_s), avg(e2e_p95_max_s), avg(queue), avg(power_w), "
        "sum(power_w) FILTER (WHERE tokens_s > 0) / NULLIF(sum(tokens_s) FILTER (WHERE power_w IS NOT NULL), 0), "
        "avg(tokens_s) "
        f"FROM {fleet_rollup.TABLE} WHERE bucket >= %s AND bucket < %s GROUP BY t ORDER BY t"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [timedelta(seconds=step), start, end])
        rows = cur.fetchall()
    out: dict[datetime, dict[str, float | None]] = {}
    for t, util, util_max, ttft, e2e, queue, power, ept, tokens in rows:
        out[t] = {"gpu_util_mean": util, "gpu_util_max": util_max, "ttft_p95_s": ttft, "e2e_p95_s": e2e,
                  "queue": queue, "power_kw": None if power is None else power / 1000.0,
                  "energy_per_token_j": ept, "tokens_s": tokens}
    return out


def _gateway_rows(start: datetime, end: datetime, step: int) -> dict[datetime, dict[str, float | None]]:
    sql = (
        "SELECT date_bin(%s, minute, TIMESTAMPTZ '2000-01-01') AS t, sum(requests), sum(status_429), count(*) "
        f"FROM {RequestTotal._meta.db_table} WHERE minute >= %s AND minute < %s GROUP BY t ORDER BY t"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [timedelta(seconds=step), start, end])
        rows = cur.fetchall()
    # A rate over the minutes that have a row: a minute with no row had no requests, but the current minute may not
    # be folded in yet, so dividing by the whole step would understate the last point.
    return {t: {"requests_s": float(req) / (60.0 * minutes), "rejected_429_s": float(shed) / (60.0 * minutes)}
            for t, req, shed, minutes in rows}


def markers(start: datetime, end: datetime) -> list[dict[str, Any]]:
    wanted = Q(action__in=MARKER_ACTIONS)
    for prefix in MARKER_PREFIXES:
        wanted |= Q(action__startswith=prefix)
    # A revision created without being activated changed nothing the fleet saw.
    wanted &= ~Q(action="policy.create", details__activated=False)
    # Only the keys the hover shows, extracted in SQL: policy events carry whole documents in before/after.
    events = (AuditEvent.objects.filter(wanted, time__gte=start, time__lt=end)
              .order_by("-time", "-id")
              .values_list("id", "time", "actor", "action", "target", "reason", "details__version",
                           "details__rule", "before__size", "after__size")
              [:MAX_MARKERS])
    return [{"id": pk, "ts": t.isoformat(), "kind": marker_kind(action), "action": action, "actor": actor,
             "target": target, "reason": reason, "what": _what(action, target, version, rule, before, after)}
            for pk, t, actor, action, target, reason, version, rule, before, after in reversed(list(events))]


def _what(action: str, target: str, version: Any, rule: Any, before: Any, after: Any) -> str:
    """The change in a few words for the hover: the revision a policy event made active, a scaling step."""
    if action.startswith("scaling."):
        return f"{target} {before} → {after}" + (f" ({rule})" if rule else "")
    if action.startswith("canary."):
        return f"{target} canary {action.split('.', 1)[1]}"
    if version is not None:
        return f"{target} revision {version}"
    return target


def trends(rng: Range, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    step = timedelta(seconds=rng.step)
    # Align the end to the step so that successive calls put points on the same times.
    end = datetime.fromtimestamp((now.timestamp() // rng.step + 1) * rng.step, UTC)
    start = end - timedelta(seconds=rng.seconds)
    fleet = _fleet_rows(start, end, rng.step)
    gateway = _gateway_rows(start, end, rng.step)
    times = sorted(set(fleet) | set(gateway))
    series: dict[str, list[float | None]] = {name: [] for name in SERIES}
    for t in times:
        row = {**fleet.get(t, {}), **gateway.get(t, {})}
        if t in fleet and t not in gateway:
            row.update(requests_s=0.0, rejected_429_s=0.0)  # the fleet reported and nothing was routed
        for name in SERIES:
            v = row.get(name)
            series[name].append(None if v is None else round(float(v), 4))
    return {
        "range": rng.name, "from": start.isoformat(), "to": end.isoformat(), "step": int(step.total_seconds()),
        "now": now.isoformat(),
        "t": [t.isoformat() for t in times],
        "series": series,
        "labels": {name: {"label": label, "unit": unit} for name, (label, unit) in SERIES.items()},
        "markers": markers(start, now),
    }


def to_csv(doc: dict[str, Any]) -> str:
    """One row per point: time, then every series (empty where there was no data)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(doc["series"])
    w.writerow(["time", *names])
    for i, t in enumerate(doc["t"]):
        w.writerow([t, *("" if doc["series"][n][i] is None else doc["series"][n][i] for n in names)])
    return buf.getvalue()
