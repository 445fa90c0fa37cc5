"""A pool's scaling timeline: desired / actual / reporting nodes per minute against each rule's metric, the
forecast (predictive pools) and the scaling actions, for the scaling page and GET /api/v1/scaling/pools/<p>/timeline/.

Desired and actual sizes are not sampled anywhere; they change only through scaling actions, so they are rebuilt
from the action log: desired steps to an action's target when the action is created (unless it failed or was
cancelled), actual when a done action finishes. Before the first action the pool was at that action's starting
size. Reporting nodes and metrics come from the 1-minute rollups, as the controller itself observes them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from control.controller import actions, observe, predict
from control.controller.models import ScalingAction
from core import ranges
from core.ranges import RangeError  # noqa: F401 - the views catch it from here
from dashboard.fleet.models import Pool
from dashboard.metrics import rollups

MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Range:
    name: str
    seconds: int


RANGES: dict[str, Range] = {r.name: r for r in (Range("1h", 3600), Range("6h", 6 * 3600), Range("24h", 86400))}
DEFAULT_RANGE = "6h"


def parse_range(value: str | None) -> Range:
    return ranges.parse_range(value, RANGES, DEFAULT_RANGE)


def metric_per_minute(pool: Pool, metric: str, start: datetime, end: datetime) -> dict[datetime, float | None]:
    """The pool's value of a scaling metric per minute, combined over nodes the way the controller combines it."""
    in_pool = "JOIN fleet_node n ON n.id = s.node_id WHERE n.pool_id = %s AND s.bucket >= %s AND s.bucket < %s"
    if metric == "gpu_util_pct":
        sql = ("SELECT s.bucket, sum(s.gpu_util_pct_avg * s.n) / NULLIF(sum(CASE WHEN s.gpu_util_pct_avg IS NULL "
               f"THEN 0 ELSE s.n END), 0) FROM gpu_sample_1m s {in_pool} GROUP BY s.bucket")
    elif metric in observe._NODE_METRICS:
        _table, column, combine = observe._NODE_METRICS[metric]
        sql = f"SELECT s.bucket, {combine}(s.{column}_avg) FROM node_sample_1m s {in_pool} GROUP BY s.bucket"
    else:
        return {}
    with connection.cursor() as cur:
        cur.execute(sql, [pool.pk, start, end])
        return {t: (None if v is None else round(float(v), 4)) for t, v in cur.fetchall()}


def _sizes(pool: Pool, minutes: list[datetime], end: datetime) -> tuple[list[int | None], list[int | None],
                                                                       list[ScalingAction]]:
    log = list(ScalingAction.objects.filter(pool=pool, created__lt=end).order_by("created", "id"))
    if not log:
        return [None] * len(minutes), [None] * len(minutes), []
    desired_steps = [(a.created, a.to_size) for a in log if a.state not in ("failed", "cancelled")]
    actual_steps = sorted((a.finished, a.to_size) for a in log if a.state == "done" and a.finished is not None)

    def at(steps: list[tuple[datetime, int]], t: datetime, initial: int) -> int:
        value = initial
        for when, size in steps:
            if when > t:
                break
            value = size
        return value

    first = log[0].from_size
    # Each minute shows the size at its end, so an action made during a minute shows in that minute.
    desired = [at(desired_steps, m + MINUTE, first) for m in minutes]
    actual = [at(actual_steps, m + MINUTE, first) for m in minutes]
    start = minutes[0] if minutes else end
    return desired, actual, [a for a in log if a.created >= start]


def _rolled_up_until() -> datetime | None:
    with connection.cursor() as cur:
        cur.execute("SELECT done_until FROM metrics_rollup_state WHERE name = '1m'")
        row = cur.fetchone()
    return row[0] if row else None


def timeline(pool: Pool, rng: Range, now: datetime) -> dict[str, Any]:
    end = rollups.floor_to(now, MINUTE) + MINUTE
    start = end - timedelta(seconds=rng.seconds)
    minutes = [start + i * MINUTE for i in range(int(rng.seconds // 60))]
    policy = actions.pool_policy(pool.name)
    reporting = observe.nodes_per_minute(pool.name, start, end)
    rolled_until = _rolled_up_until()
    desired, actual, log = _sizes(pool, minutes, end)
    rules = []
    watched: dict[str, dict[datetime, float | None]] = {}
    for rule in policy["rules"]:
        metric = rule["metric"]
        if metric not in watched:
            watched[metric] = metric_per_minute(pool, metric, start, end)
        rules.append({"metric": metric, "threshold": rule["threshold"], "step": rule["step"],
                      "values": [watched[metric].get(m) for m in minutes]})
    down = policy.get("scale_down") or {}
    if down.get("gpu_util_below_pct") is not None:
        if "gpu_util_pct" not in watched:
            watched["gpu_util_pct"] = metric_per_minute(pool, "gpu_util_pct", start, end)
        rules.append({"metric": "gpu_util_pct", "threshold": down["gpu_util_below_pct"], "step": -down.get("step", 1),
                      "scale_down": True, "values": [watched["gpu_util_pct"].get(m) for m in minutes]})
    predictive = policy["predictive"]
    forecast = None
    if predictive["enabled"]:
        acc = predict.accuracy(pool, predictive["metric"], start, now)
        forecast = {"metric": predictive["metric"], "forecast": acc["forecast"], "actual": acc["actual"],
                    "mape": acc["mape"]}
    return {
        "pool": pool.name, "range": rng.name, "from": start.isoformat(), "to": end.isoformat(), "step": 60,
        "min": policy["min_nodes"], "max": policy["max_nodes"],
        "t": [m.isoformat() for m in minutes],
        "desired": desired, "actual": actual,
        # Minutes the rollup has not reached yet are unknown, not "no node reported".
        "reporting": [reporting[m][0] if m in reporting else (0 if rolled_until and m < rolled_until else None)
                      for m in minutes],
        "rules": rules,
        "forecast": forecast,
        "actions": [{"id": a.pk, "ts": a.created.isoformat(), "finished": a.finished.isoformat() if a.finished else None,
                     "kind": a.kind, "rule": a.rule, "from_size": a.from_size, "to_size": a.to_size, "state": a.state,
                     "actor": a.actor, "reason": a.reason} for a in log],
    }


def to_csv(doc: dict[str, Any]) -> str:
    """One row per minute: sizes, then each rule's metric (named metric>threshold or metric<threshold)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [f"{r['metric']}{'<' if r.get('scale_down') else '>'}{r['threshold']:g}" for r in doc["rules"]]
    w.writerow(["time", "desired", "actual", "reporting", *names])
    for i, t in enumerate(doc["t"]):
        w.writerow([t, *("" if v is None else v for v in (doc["desired"][i], doc["actual"][i], doc["reporting"][i])),
                    *("" if r["values"][i] is None else r["values"][i] for r in doc["rules"])])
    return buf.getvalue()
