"""Time-series reads: pick raw, 1-minute or 1-hour data by the step asked for, bucket to that step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection

from agents.catalogue import BY_NAME, Metric
from dashboard.metrics import schema

MAX_POINTS = 11_000  # per series, as Prometheus' query_range allows
MAX_SERIES = 2_000


class QueryError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Query:
    metric: Metric
    start: datetime
    end: datetime
    step: int
    node_ids: list[int] | None = None
    gpu: int | None = None
    agg: str = "avg"


def parse_time(value: str | None, field: str, default: datetime, now: datetime) -> datetime:
    """ISO 8601, unix seconds, or relative to now ('-1h', '-15m', '-7d', 'now')."""
    if not value:
        return default
    value = value.strip()
    if value == "now":
        return now
    if value.startswith("-") and value[-1:] in "smhd" and value[1:-1].isdigit():
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]
        try:
            return now - timedelta(seconds=int(value[1:-1]) * unit)
        except OverflowError as exc:
            raise QueryError(field, f"{value!r} reaches before year 1") from exc
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError):
        pass
    try:
        ts = datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError as exc:
        raise QueryError(field, f"{value!r} is not a time (ISO 8601, unix seconds, or relative like -1h)") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def choose_source(metric: Metric, step: int, start: datetime, now: datetime) -> tuple[schema.Table, int]:
    """The coarsest table whose resolution fits the step, falling back to coarser ones past their retention."""
    per_gpu = metric.scope == "gpu"
    raw_ok = start >= now - timedelta(days=settings.RETENTION_RAW_DAYS)
    minute_ok = start >= now - timedelta(days=settings.RETENTION_1M_DAYS)
    if step < 60 and raw_ok:
        return (schema.RAW_GPU if per_gpu else schema.RAW_NODE), step
    if step < 3600 and minute_ok:
        return schema.ROLLUPS[("gpu" if per_gpu else "node", "1m")], max(step, 60)
    return schema.ROLLUPS[("gpu" if per_gpu else "node", "1h")], max(step, 3600)


def run(q: Query, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    table, step = choose_source(q.metric, q.step, q.start, now)
    per_gpu = q.metric.scope == "gpu"
    name = q.metric.name
    if table.resolution == "raw":
        value = f"{q.agg}({name})"
    elif q.agg == "max":
        value = f"max({name}_max)"
    else:
        # Buckets hold averages over n samples: weight them so the result equals the average of the samples.
        value = f"sum({name}_avg * n) / NULLIF(sum(CASE WHEN {name}_avg IS NULL THEN 0 ELSE n END), 0)"
    keys = "node_id, gpu" if per_gpu else "node_id"
    where = [f"{table.time_col} >= %s", f"{table.time_col} < %s"]
    params: list[Any] = [q.start, q.end]
    if q.node_ids is not None:
        where.append("node_id = ANY(%s)")
        params.append(q.node_ids)
    if per_gpu and q.gpu is not None:
        where.append("gpu = %s")
        params.append(q.gpu)
    sql = (
        f"SELECT {keys}, date_bin(%s, {table.time_col}, TIMESTAMPTZ '2000-01-01') AS t, {value} "
        f"FROM {table.name} WHERE {' AND '.join(where)} GROUP BY {keys}, t ORDER BY {keys}, t"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [timedelta(seconds=step), *params])
        rows = cur.fetchall()
        cur.execute("SELECT id, name FROM fleet_node WHERE id = ANY(%s)", [list({r[0] for r in rows})])
        names = dict(cur.fetchall())
    series: dict[tuple[int, ...], dict[str, Any]] = {}
    for row in rows:
        key = row[:2] if per_gpu else row[:1]
        t, v = row[-2], row[-1]
        s = series.get(key)
        if s is None:
            if len(series) >= MAX_SERIES:
                break
            s = series[key] = {"node": names.get(row[0], str(row[0])), "points": []}
            if per_gpu:
                s["gpu"] = row[1]
        s["points"].append([t.isoformat(), None if v is None else float(v)])
    return {
        "metric": name,
        "unit": q.metric.unit,
        "scope": q.metric.scope,
        "source": table.resolution,
        "step": step,
        "agg": q.agg,
        "from": q.start.isoformat(),
        "to": q.end.isoformat(),
        "series": list(series.values()),
    }


def build(params: dict[str, str], now: datetime | None = None) -> Query:
    now = now or datetime.now(UTC)
    metric_name = params.get("metric") or ""
    metric = BY_NAME.get(metric_name)
    if metric is None:
        raise QueryError("metric", f"{metric_name!r} is not a catalogue metric (see /api/v1/metrics/catalogue)")
    end = parse_time(params.get("to"), "to", now, now)
    start = parse_time(params.get("from"), "from", end - timedelta(hours=1), now)
    if start >= end:
        raise QueryError("from", "must be before 'to'")
    step_raw = params.get("step")
    if step_raw:
        if not step_raw.isdigit() or not 1 <= int(step_raw) <= 31 * 86400:
            raise QueryError("step", f"{step_raw!r} is not a step in seconds (1 to 2678400)")
        step = int(step_raw)
    else:
        step = max(1, int((end - start).total_seconds() // 300))  # about 300 points by default
    if (end - start).total_seconds() / step > MAX_POINTS:
        raise QueryError("step", f"{step} s over this range gives more than {MAX_POINTS} points; raise the step")
    gpu = params.get("gpu")
    if gpu is not None and gpu != "":
        if metric.scope != "gpu":
            raise QueryError("gpu", f"{metric.name} is a per-node metric; drop the gpu parameter")
        if not gpu.isdigit() or int(gpu) > 255:
            raise QueryError("gpu", f"{gpu!r} is not a GPU index (0-255)")
    agg = params.get("agg", "avg")
    if agg not in ("avg", "max"):
        raise QueryError("agg", f"{agg!r} is not avg or max")
    return Query(metric, start, end, step, None, int(gpu) if gpu else None, agg)
