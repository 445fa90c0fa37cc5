"""The predictive part of the runtime: refit each predictive pool's demand forecast and keep it for the loop.

Fitting Holt-Winters on days of minutes takes a noticeable fraction of a second, so it runs every few minutes
(`control.controller.tasks.forecast`), not on every tick. The latest curve goes to Redis for the decision; each
minute's FIRST forecast also goes to PostgreSQL (ForecastPoint), so the page can compare what was forecast a lead
time ahead with what happened, and show the error (MAPE).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.db import connection
from django.utils import timezone

from control.controller import actions, autoscaler, forecast, observe
from control.controller.loop import FORECAST_KEY
from control.controller.models import ForecastPoint, PoolProvider
from control.policy import schemas
from dashboard.metrics.latest import redis_client

log = logging.getLogger(__name__)

HISTORY_DAYS = 7
MIN_HISTORY_MIN = 30  # below this there is nothing to forecast from


def refit(now: datetime | None = None) -> dict[str, Any]:
    now = (now or timezone.now()).replace(second=0, microsecond=0)
    doc = actions.scaling_document()
    done: dict[str, Any] = {}
    for binding in PoolProvider.objects.select_related("pool").filter(enabled=True):
        policy = schemas.for_pool(doc, binding.pool.name)
        if not policy["predictive"]["enabled"]:
            continue
        try:
            done[binding.pool.name] = refit_pool(binding.pool, policy, now)
        except Exception as exc:  # noqa: BLE001 - a pool with odd data must not stop the others
            log.exception("forecast for pool %s failed", binding.pool.name)
            done[binding.pool.name] = {"error": str(exc)}
    return done


def refit_pool(pool: Any, policy: dict[str, Any], now: datetime) -> dict[str, Any]:
    metric = policy["predictive"]["metric"]
    series = observe.demand_series(pool.name, metric, now - timedelta(days=HISTORY_DAYS), now)
    # Leading minutes before the pool had any data are not history.
    values = [v for _, v in series]
    first = next((i for i, v in enumerate(values) if v is not None), None)
    if first is None or len(values) - first < MIN_HISTORY_MIN:
        return {"skipped": f"less than {MIN_HISTORY_MIN} minutes of {metric} history"}
    values = values[first:]
    lead = autoscaler.lead_minutes(policy)
    horizon = lead + policy["predictive"]["horizon_min"]
    curve = forecast.forecast(values, step_s=60, horizon_steps=horizon)
    per_node = policy["predictive"]["per_node"] or learned_per_node(pool, series, now)
    redis_client().set(FORECAST_KEY.format(pool.name), orjson.dumps({
        "made": now.isoformat(), "start": now.timestamp(), "step_s": 60, "metric": metric,
        "values": [round(v, 4) for v in curve], "per_node": per_node,
    }), ex=3600)
    _keep_first(pool.id, metric, now, curve)
    return {"points": len(curve), "peak": max(curve) if curve else None, "per_node": per_node}


def learned_per_node(pool: Any, series: list[tuple[datetime, float | None]], now: datetime) -> float | None:
    start = now - timedelta(days=HISTORY_DAYS)
    nodes = observe.nodes_per_minute(pool.name, start, now)
    samples = []
    for minute, demand in series:
        if demand is None or minute not in nodes:
            continue
        count, queue = nodes[minute]
        if count:
            samples.append((demand, count, queue < 5 * count))
    return autoscaler.learn_per_node(samples)


def _keep_first(pool_id: int, metric: str, now: datetime, curve: list[float]) -> None:
    rows = [(pool_id, metric, now + timedelta(minutes=i), now, float(v))
            for i, v in enumerate(curve) if math.isfinite(v)]
    if not rows:
        return
    with connection.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {ForecastPoint._meta.db_table} (pool_id, metric, ts, made, value) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (pool_id, metric, ts) DO NOTHING", rows)
    ForecastPoint.objects.filter(pool_id=pool_id, ts__lt=now - timedelta(days=HISTORY_DAYS)).delete()


def accuracy(pool: Any, metric: str, since: datetime, now: datetime) -> dict[str, Any]:
    """Forecast versus actual per minute over [since, now] (the chart) and the MAPE of what has happened."""
    points = list(ForecastPoint.objects.filter(pool=pool, metric=metric, ts__gte=since).values_list("ts", "value",
                                                                                                 "made"))
    actual = dict(observe.demand_series(pool.name, metric, since, now))
    pairs = [(actual.get(ts), v) for ts, v, _ in points if ts < now and actual.get(ts) is not None]
    return {
        "forecast": [{"ts": ts.isoformat(), "value": v, "lead_min": round((ts - made).total_seconds() / 60)}
                     for ts, v, made in points],
        "actual": [{"ts": ts.isoformat(), "value": v} for ts, v in actual.items() if v is not None],
        "mape": forecast.mape([a for a, _ in pairs], [p for _, p in pairs]) if pairs else None,
    }
