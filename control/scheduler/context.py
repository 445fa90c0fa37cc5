"""What one request carries through routing, and the one place it is written to the request log and the metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from control.scheduler.core import Node
from control.scheduler.prom import GatewayMetrics
from control.scheduler.reqlog import RequestLog


@dataclass
class RequestContext:
    ts: float
    t0: float  # perf_counter() when the request arrived
    model: str
    cls: str
    stream: bool
    cache: str  # off | miss | hit | bypass
    ckey: str | None
    path: str
    raw: bytes
    request_id: str
    node: Node | None = None
    status: int = 0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Times the gateway sent this request again: to another node after a failure before the first byte, or on a
    # new connection when the pooled one was dead before the request could reach the node.
    retries: int = 0
    error: str = ""
    receive: Any = None  # the ASGI receive channel: tells a stream that its client went away
    prefix: tuple[int, ...] = ()  # the prompt's block keys when the policy routes by cache affinity (prefix_index)
    # While a canary runs: which arm routes this request (canary / stable), the canary's id, and that arm's
    # admission (None: the gateway's own).
    arm: str = ""
    canary_id: int | None = None
    admission: Any = None
    need_tokens: int = 0  # prompt + completion, estimated (length.py); 0: not checked
    answer_tokens: int = 0  # the answer length asked for (max_tokens); 0: not given (the slo rule routes by it)
    filtered: str = ""  # nodes skipped for this request and why (too short a max_model_len)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """What every completion answer says about how the gateway handled it."""
        out = [(b"x-switchyard-cache", self.cache.encode()), (b"x-switchyard-retries", str(self.retries).encode())]
        if self.arm:
            out.append((b"x-switchyard-arm", self.arm.encode()))
        return out


def account(ctx: RequestContext, reqlog: RequestLog, prom: GatewayMetrics) -> None:
    """One request-log entry and the metrics for a request that is over."""
    latency = time.perf_counter() - ctx.t0
    name = ctx.node.name if ctx.node is not None else ""
    pool = ctx.node.spec.pool if ctx.node is not None else ""
    reqlog.add(ts=ctx.ts, node=name, pool=pool, model=ctx.model, cls=ctx.cls, status=ctx.status,
               ttft_ms=None if ctx.ttft_s is None else ctx.ttft_s * 1000, latency_ms=latency * 1000,
               prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens, cache=ctx.cache,
               retries=ctx.retries, stream=ctx.stream, error=ctx.error, arm=ctx.arm, canary=ctx.canary_id,
               filtered=ctx.filtered)
    prom.requests.labels(ctx.cls, str(ctx.status), ctx.cache).inc()
    prom.latency.labels(ctx.cls).observe(latency)
    if ctx.ttft_s is not None:
        prom.ttft.labels(ctx.cls).observe(ctx.ttft_s)
