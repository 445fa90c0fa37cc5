"""The answer cache: deterministic requests (temperature 0) answered from Redis.

Key: sha256 over the tenant, the endpoint and the whole request body with sorted keys (model, messages or prompt,
every sampling parameter, and `stream`, so a streamed answer is replayed as the same stream and a plain one as
JSON); fields that do not change the answer (`user`) are left out. Only an explicit `temperature: 0` with one
choice is cached: a missing temperature means 1.0 on vLLM, i.e. sampled text that must not be repeated.

The tenant is the calling user (the token's owner) unless the scheduler policy says `cache.shared: true`: a hit is
fast, so a shared cache would let anyone learn by timing whether someone else asked the same question.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from control.scheduler.auth import Caller

PREFIX = "sy:cache:"
IGNORED_FIELDS = ("user",)
SHARED = ""  # the tenant of a shared cache, and of every caller when the gateway runs without authentication
log = logging.getLogger(__name__)


def cacheable(body: dict[str, Any]) -> bool:
    t = body.get("temperature")
    n = body.get("n", 1)
    return isinstance(t, int | float) and not isinstance(t, bool) and t == 0 and n in (1, None)


ON_BEHALF_HEADER = "x-switchyard-on-behalf-of"  # the job runner: the user id of the job's owner


def tenant(caller: Caller | None, shared: bool, on_behalf_of: str = "") -> str:
    """Whose answers a request may be served: its user's, or everyone's when the cache is shared. The internal
    token (the job runner) names the job's owner in X-Switchyard-On-Behalf-Of, so one user's job is never answered
    from another's; the header means nothing from anyone else."""
    if shared or caller is None:
        return SHARED
    if caller.internal:
        return f"user:{on_behalf_of}" if on_behalf_of.isdigit() else "internal"
    return f"user:{caller.user_id}"


def key(path: str, body: dict[str, Any], tenant: str = SHARED) -> str:
    material = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    raw = tenant.encode() + b"\n" + path.encode() + b"\n" + orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    return PREFIX + hashlib.sha256(raw).hexdigest()


@dataclass
class Entry:
    status: int
    content_type: str
    node: str
    body: bytes

    def encode(self) -> bytes:
        meta = orjson.dumps({"status": self.status, "content_type": self.content_type, "node": self.node})
        return meta + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        meta, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            m = orjson.loads(meta)
            return cls(int(m["status"]), str(m["content_type"]), str(m["node"]), body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


class AnswerCache:
    """The answers in Redis. A cache that is down is a miss, never an error: the request goes to a node."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def get(self, ckey: str) -> Entry | None:
        try:
            raw = await self.redis.get(ckey)
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            log.debug("cache read failed: %s", exc)
            return None
        return Entry.decode(raw) if raw else None

    async def put(self, ckey: str, entry: Entry, ttl_s: int) -> None:
        try:
            await self.redis.set(ckey, entry.encode(), ex=ttl_s)
        except Exception as exc:  # noqa: BLE001 - caching is best effort: the answer goes out either way
            log.debug("cache write failed: %s", exc)
