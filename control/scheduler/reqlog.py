"""The request log (contract 1): one entry per routed request on the Redis stream `sy:reqlog`.

Requests append to an in-memory buffer; a background task writes the buffer with one pipelined batch of XADDs a few
times a second, so the request path never waits for Redis. When Redis is down the buffer is bounded: the oldest
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
            stream: bool, error: str = "") -> None:
        if len(self.buffer) == BUFFER_MAX:
            self.dropped += 1
        self.buffer.append({
            "ts": f"{ts:.6f}", "gateway": self.gateway_id, "node": node, "pool": pool, "model": model,
            "class": cls, "status": str(status), "ttft_ms": "" if ttft_ms is None else f"{ttft_ms:.3f}",
            "latency_ms": f"{latency_ms:.3f}", "prompt_tokens": "" if prompt_tokens is None else str(prompt_tokens),
            "completion_tokens": "" if completion_tokens is None else str(completion_tokens), "cache": cache,
            "retries": str(retries), "stream": "1" if stream else "0", "error": error[:200],
        })

    async def flush(self, redis: Any) -> int:
        """Write what is buffered; entries stay buffered when Redis fails (retried on the next flush)."""
        if not self.buffer:
            return 0
        batch = list(self.buffer)
        pipe = redis.pipeline(transaction=False)
        for entry in batch:
            pipe.xadd(STREAM, entry, maxlen=MAXLEN, approximate=True)
        try:
            await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis down: keep the entries, try again later
            log.warning("request log: %d entries not written yet: %s", len(batch), exc)
            return 0
        for _ in range(len(batch)):
            self.buffer.popleft()
        return len(batch)
