"""The answer cache: deterministic requests (temperature 0) answered from Redis.

Key: sha256 over the endpoint and the whole request body with sorted keys (model, messages or prompt, every
sampling parameter, and `stream`, so a streamed answer is replayed as the same stream and a plain one as JSON);
fields that do not change the answer (`user`) are left out. Only an explicit `temperature: 0` with one choice is
cached: a missing temperature means 1.0 on vLLM, i.e. sampled text that must not be repeated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

PREFIX = "sy:cache:"
IGNORED_FIELDS = ("user",)


def cacheable(body: dict[str, Any]) -> bool:
    t = body.get("temperature")
    n = body.get("n", 1)
    return isinstance(t, int | float) and not isinstance(t, bool) and t == 0 and n in (1, None)


def key(path: str, body: dict[str, Any]) -> str:
    material = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    raw = path.encode() + b"\n" + orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
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
