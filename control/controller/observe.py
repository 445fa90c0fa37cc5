"""What the controller observes of a pool: metric means over a window, reporting nodes, in-flight work, demand.

Everything reads what the agents and the gateway already store (raw samples, 1-minute rollups, the gateway's
per-minute request log, the latest snapshot in Redis); the controller has no collection of its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
from django.db import connection

from dashboard.metrics.latest import all_latest, redis_client

# metric -> (table, SQL expression per node, how nodes combine into the pool's value)
_NODE_METRICS = {
    "queue_length": ("node_sample", "requests_waiting", "sum"),
    "kv_cache_usage_pct": ("node_sample", "kv_cache_usage_pct", "avg"),
    "ttft_p95_s": ("node_sample", "ttft_p95_s", "avg"),
    "e2e_p95_s": ("node_sample", "e2e_p95_s", "avg"),
    "cpu_util_pct": ("node_sample", "cpu_util_pct", "avg"),
    "requests_running": ("node_sample", "requests_running", "sum"),
}
GATEWAY_STATE_PATTERN = "sy:gw:state:*"
# A node whose latest sample is older than this is not counted as reporting.
FRESH_S = 30


def pool_metric(pool_id: int, metric: str, window_s: int, now: datetime) -> float | None:
    """The pool's value of `metric` over (now - window_s, now]: a mean per node, combined over the pool's nodes
    (summed for queue length, averaged otherwise). None when no node reported in the window."""
    start = now - timedelta(seconds=window_s)
    if metric == "gpu_util_pct":
        sql = ("SELECT avg(g.gpu_util_pct) FROM gpu_sample g JOIN fleet_node n ON n.id = g.node_id "
               "WHERE n.pool_id = %s AND n.state <> 'removed' AND g.ts > %s AND g.ts <= %s")
        args: list[Any] = [pool_id, start, now]
    elif metric in _NODE_METRICS:
        table, column, combine = _NODE_METRICS[metric]
        sql = (f"SELECT {combine}(v) FROM (SELECT avg(s.{column}) AS v FROM {table} s "
               "JOIN fleet_node n ON n.id = s.node_id WHERE n.pool_id = %s AND n.state <> 'removed' "
               "AND s.ts > %s AND s.ts <= %s GROUP BY s.node_id) per_node")
        args = [pool_id, start, now]
    else:
        raise ValueError(f"unknown scaling metric {metric!r}")
    with connection.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])


def latest_by_pool(pool: str, now: datetime) -> dict[str, dict[str, Any]]:
    """The fresh latest snapshots of the pool's nodes (node name -> snapshot)."""
    return {name: snap for name, snap in all_latest_fresh(now).items() if snap.get("pool") == pool}


def all_latest_fresh(now: datetime) -> dict[str, dict[str, Any]]:
    """Every node's latest snapshot taken within FRESH_S of `now`."""
    out = {}
    for name, snap in all_latest().items():
        try:
            ts = datetime.fromisoformat(snap["ts"])
        except (KeyError, TypeError, ValueError):
            continue
        if (now - ts).total_seconds() <= FRESH_S:
            out[name] = snap
    return out


def gateway_in_flight() -> dict[str, int]:
    """Requests each node has in flight according to every live gateway (summed over gateways)."""
    client = redis_client()
    totals: dict[str, int] = {}
    keys = list(client.scan_iter(GATEWAY_STATE_PATTERN, count=100))
    for raw in client.mget(keys) if keys else []:
        if not raw:
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        for n in doc.get("nodes", []):
            if isinstance(n, dict) and isinstance(n.get("node"), str):
                totals[n["node"]] = totals.get(n["node"], 0) + int(n.get("in_flight") or 0)
    return totals


def node_work(name: str, snap: dict[str, Any] | None, in_flight: dict[str, int],
              since: datetime | None = None) -> int | None:
    """Requests a node still has: running + waiting on the node (its snapshot) plus in flight at the gateways.
    With `since` (a drain's start) only a sample taken after it counts: None when there is none yet, so nothing is
    known. A snapshot without inference metrics counts the gateways' requests alone."""
    gw = in_flight.get(name, 0)
    if snap is None:
        return None if since is not None else gw
    if since is not None:
        try:
            if datetime.fromisoformat(snap["ts"]) <= since:
                return None
        except (KeyError, TypeError, ValueError):
            return None
    inf = snap.get("inference") or {}
    return int(inf.get("requests_running") or 0) + int(inf.get("requests_waiting") or 0) + gw


def demand_series(pool: str, metric: str, start: datetime, end: datetime) -> list[tuple[datetime, float | None]]:
    """The pool's demand per minute in [start, end): request rate (req/s, from the gateway's request log) or queue
    length (summed 1-minute node averages). Minutes without data are None."""
    if metric == "request_rate":
        sql = ("SELECT minute, sum(requests)::float / 60 FROM routing_requestminute WHERE pool = %s "
               "AND minute >= %s AND minute < %s GROUP BY minute")
        args: list[Any] = [pool, start, end]
    elif metric == "queue_length":
        sql = ("SELECT s.bucket, sum(s.requests_waiting_avg) FROM node_sample_1m s JOIN fleet_node n "
               "ON n.id = s.node_id JOIN fleet_pool p ON p.id = n.pool_id WHERE p.name = %s "
               "AND s.bucket >= %s AND s.bucket < %s GROUP BY s.bucket")
        args = [pool, start, end]
    else:
        raise ValueError(f"unknown demand metric {metric!r}")
    with connection.cursor() as cur:
        cur.execute(sql, args)
        found = {row[0]: (None if row[1] is None else float(row[1])) for row in cur.fetchall()}
    out = []
    minute = start.replace(second=0, microsecond=0)
    while minute < end:
        out.append((minute, found.get(minute)))
        minute += timedelta(minutes=1)
    return out


def nodes_per_minute(pool: str, start: datetime, end: datetime) -> dict[datetime, tuple[int, float]]:
    """Per minute: how many of the pool's nodes reported, and their summed mean queue (for learning per-node demand)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT s.bucket, count(DISTINCT s.node_id), coalesce(sum(s.requests_waiting_avg), 0) "
            "FROM node_sample_1m s JOIN fleet_node n ON n.id = s.node_id JOIN fleet_pool p ON p.id = n.pool_id "
            "WHERE p.name = %s AND s.bucket >= %s AND s.bucket < %s GROUP BY s.bucket", [pool, start, end])
        return {row[0]: (int(row[1]), float(row[2])) for row in cur.fetchall()}
