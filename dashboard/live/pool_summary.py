"""Pools with node counts and aggregate load, from the latest samples in Redis and each node's liveness.

Load figures come from nodes that are up only: a stale node's last numbers are history, and summing them would
show a pool as busier (or calmer) than it is right now.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db.models import Count

from dashboard.fleet.liveness import status_of
from dashboard.fleet.models import Node, Pool
from dashboard.metrics.latest import all_latest

STATUSES = ("up", "stale", "down")
# Removed nodes (scaled in by the controller) are not part of a pool any more.
STATES = tuple(s for s in Node.State.values if s != Node.State.REMOVED)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _total(values: list[float]) -> float | None:
    # None, not 0, when no up node reported the metric: "no data" must not read as "idle".
    return round(sum(values), 2) if values else None


def _node_row(node: Node, snap: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    status = status_of(snap, node.interval_s, now)
    live = snap if status == "up" else None
    utils = [g["gpu_util_pct"] for g in (live or {}).get("gpus", []) if g.get("gpu_util_pct") is not None]
    powers = [g["power_w"] for g in (live or {}).get("gpus", []) if g.get("power_w") is not None]
    inference = (live or {}).get("inference", {})
    return {
        "name": node.name,
        "url": f"/nodes/{node.name}/",
        "status": status,
        "state": node.state,
        "gpus": node.gpu_count,
        "gpu_util_pct": _mean(utils),
        "queue": inference.get("requests_waiting"),
        "tokens_s": inference.get("generation_tokens_s"),
        "power_w": _total(powers),
        "last_seen": snap["ts"] if snap else (node.last_seen.isoformat() if node.last_seen else None),
        "_utils": utils,
    }


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    utils = [u for r in rows for u in r["_utils"]]
    return {
        "nodes": len(rows),
        "status": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
        "state": {s: sum(r["state"] == s for r in rows) for s in STATES},
        "gpus": sum(r["gpus"] for r in rows),
        # Mean over GPUs, not over node means, so a 2-GPU node does not weigh as much as an 8-GPU one.
        "gpu_util_pct": _mean(utils),
        "queue": _total([r["queue"] for r in rows if r["queue"] is not None]),
        "tokens_s": _total([r["tokens_s"] for r in rows if r["tokens_s"] is not None]),
        "power_w": _total([r["power_w"] for r in rows if r["power_w"] is not None]),
    }


def summary(now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    snaps = all_latest()
    nodes = Node.objects.exclude(state=Node.State.REMOVED).select_related("pool").annotate(gpu_count=Count("gpus")).order_by("name")
    by_pool: dict[int, list[dict[str, Any]]] = {}
    for node in nodes:
        by_pool.setdefault(node.pool_id, []).append(_node_row(node, snaps.get(node.name), now))
    pools = []
    every: list[dict[str, Any]] = []
    for pool in Pool.objects.order_by("name"):
        rows = by_pool.get(pool.id, [])
        every.extend(rows)
        pools.append({"name": pool.name, "description": pool.description, **_aggregate(rows),
                      "node_list": [{k: v for k, v in r.items() if k != "_utils"} for r in rows]})
    return {"ts": now.isoformat(), "pools": pools, "totals": _aggregate(every)}
