"""Routing tests: request-log entries written the way the gateway writes them (contract 1), gateway state keys."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from control.routing import reqlog
from tests.browser.conftest import chromium, page, server  # noqa: F401  (fixtures)
from tests.control.conftest import _fast_passwords, api, browser, tokens  # noqa: F401  (fixtures)


def entry(ts: float | None = None, node: str = "gpu-a-1", pool: str = "pool-a", cls: str = "standard",
          status: int = 200, latency_ms: float = 100.0, ttft_ms: float | None = 20.0, cache: str = "miss",
          retries: int = 0, prompt: int = 10, completion: int = 20, error: str = "") -> dict[str, str]:
    return {"ts": f"{time.time() if ts is None else ts:.6f}", "gateway": "gw-1", "node": node, "pool": pool,
            "model": "deepseek-r1", "class": cls, "status": str(status),
            "ttft_ms": "" if ttft_ms is None else f"{ttft_ms:.3f}", "latency_ms": f"{latency_ms:.3f}",
            "prompt_tokens": str(prompt), "completion_tokens": str(completion), "cache": cache,
            "retries": str(retries), "stream": "0", "error": error}


def xadd(client: Any, fields: dict[str, str]) -> str:
    return client.xadd(reqlog.STREAM, fields, maxlen=200_000, approximate=True).decode()


def gw_state(client: Any, gw: str, nodes: list[dict[str, Any]], ts: float | None = None,
             counters: dict[str, int] | None = None, saturated: bool = False, ttl_s: int = 10) -> None:
    state = {"id": gw, "ts": time.time() if ts is None else ts, "policy": {"scheduler": 1, "priorities": 1},
             "nodes": nodes, "queues": {"realtime": 0, "standard": 2, "batch": 5}, "saturated": saturated,
             "counters": counters or {"requests": 10, "shed_429": 1, "retries": 2, "quarantines": 1,
                                      "cache_hits": 3, "cache_misses": 4, "errors": 0}}
    client.set(f"{reqlog.STATE_PREFIX}{gw}", orjson.dumps(state), ex=ttl_s)


@pytest.fixture
def stream(redis_db: Any) -> Any:
    return redis_db
