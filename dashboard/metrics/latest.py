"""The latest sample of every node, kept in Redis for the live view, the scheduler and /metrics/fleet.

One hash (`sy:latest`, field = node name, value = JSON) so that a reader gets the whole fleet in one HGETALL.
Every ingest also publishes the node's name on `sy:ingest` so live readers can react without polling (a commit group
publishes one message with its nodes' names, one per line).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
import redis
from django.conf import settings

LATEST_KEY = "sy:latest"
INGEST_CHANNEL = "sy:ingest"
# Minutes (hours) that received samples after their rollup may have run, as epoch seconds; the rollup tasks redo
# them (dashboard/metrics/rollups.py).
LATE_MINUTES_KEY = "sy:rollup:late-minutes"
LATE_HOURS_KEY = "sy:rollup:late-hours"


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2,
                                health_check_interval=30)


def store_latest(node: str, snapshot: dict[str, Any], late_minutes: set[int] | None = None) -> None:
    p = redis_client().pipeline(transaction=False)
    p.hset(LATEST_KEY, node, orjson.dumps(snapshot))
    p.publish(INGEST_CHANNEL, node)
    if late_minutes:
        p.sadd(LATE_MINUTES_KEY, *late_minutes)
    p.execute()


def store_latest_many(snapshots: dict[str, bytes], late_minutes: set[int] | None = None) -> None:
    """store_latest for a group of pushes (already encoded), in one round trip: one HSET, and one message naming
    every node of the group, one per line (node names hold no newline: fleet.models.NAME_RE), rather than a
    command per push that the server packs and Redis fans out while, most of the time, nobody listens."""
    if not snapshots:
        return
    p = redis_client().pipeline(transaction=False)
    p.hset(LATEST_KEY, mapping=snapshots)
    p.publish(INGEST_CHANNEL, "\n".join(snapshots))
    if late_minutes:
        p.sadd(LATE_MINUTES_KEY, *late_minutes)
    p.execute()


def all_latest() -> dict[str, dict[str, Any]]:
    raw = redis_client().hgetall(LATEST_KEY)
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


def latest_of(nodes: list[str]) -> dict[str, dict[str, Any]]:
    """The latest snapshots of these nodes (one HMGET); nodes that never reported are left out."""
    if not nodes:
        return {}
    raw = redis_client().hmget(LATEST_KEY, nodes)
    return {n: orjson.loads(v) for n, v in zip(nodes, raw, strict=True) if v}


def latest(node: str) -> dict[str, Any] | None:
    raw = redis_client().hget(LATEST_KEY, node)
    return orjson.loads(raw) if raw else None


def forget(node: str) -> None:
    redis_client().hdel(LATEST_KEY, node)
