"""The request log (contract 1): one entry per routed request on the Redis stream `sy:reqlog`.

Requests append to an in-memory buffer; a writer thread sends the buffer as one pipelined batch of XADDs a few
times a second, so the request path never waits for Redis. (Encoding a batch costs ~50 us an entry: done on the
event loop it stalled every request in flight for 10+ ms at 500 req/s, the gateway's whole p99.) When Redis is down the buffer is bounded: the oldest
entries are dropped (and counted) rather than letting memory grow.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

STREAM = "sy:reqlog"
MAXLEN = 200_000
BUFFER_MAX = 100_000
log = logging.getLogger(__name__)


class RequestLog:
    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.buffer: deque[dict[str, str]] = deque(maxlen=BUFFER_MAX)
        self.dropped = 0

    def add(self, *, ts: float, node: str, pool: str, model: str, cls: str, status: int, ttft_ms: float | None,
            latency_ms: float, prompt_tokens: int | None, completion_tokens: int | None, cache: str, retries: int,
            stream: bool, error: str = "", arm: str = "", canary: int | None = None,
            filtered: str = "") -> None:
        if len(self.buffer) == BUFFER_MAX:
            self.dropped += 1
        entry = {
            "ts": f"{ts:.6f}", "gateway": self.gateway_id, "node": node, "pool": pool, "model": model,
            "class": cls, "status": str(status), "ttft_ms": "" if ttft_ms is None else f"{ttft_ms:.3f}",
            "latency_ms": f"{latency_ms:.3f}", "prompt_tokens": "" if prompt_tokens is None else str(prompt_tokens),
            "completion_tokens": "" if completion_tokens is None else str(completion_tokens), "cache": cache,
            "retries": str(retries), "stream": "1" if stream else "0", "error": error[:200],
            "filtered": filtered[:300],  # nodes skipped for the request and why (length.py)
        }
        if arm:  # only while a canary runs: which arm of canary `canary` routed the request
            entry["arm"] = arm
            entry["canary"] = str(canary)
        self.buffer.append(entry)

    def flush(self, redis: Any, max_batch: int = 5000) -> int:
        """Write what is buffered with a synchronous client (call on a thread); on failure the entries go back to
        the front of the buffer and are retried on the next flush. deque append/popleft are thread-safe."""
        batch: list[dict[str, str]] = []
        while self.buffer and len(batch) < max_batch:
            batch.append(self.buffer.popleft())
        if not batch:
            return 0
        pipe = redis.pipeline(transaction=False)
        for entry in batch:
            pipe.xadd(STREAM, entry, maxlen=MAXLEN, approximate=True)
        try:
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis down: keep the entries, try again later
            log.warning("request log: %d entries not written yet: %s", len(batch), exc)
            self.buffer.extendleft(reversed(batch))
            return 0
        return len(batch)
