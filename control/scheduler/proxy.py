"""Proxying a request to the fleet: send it to the chosen node, retry on the next-best node on a failure before the
first byte, then pass the node's answer through (whole, or streamed as it arrives) and cache it when it may be.

A request goes to each node at most once (upstream.py never resends what a node may have read); every further
attempt is counted in `RequestContext.retries`, which the answer's `X-Switchyard-Retries` and the request log show.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from control.scheduler import answers, length
from control.scheduler.admission import Admission
from control.scheduler.context import RequestContext
from control.scheduler.core import Node
from control.scheduler.intake import usage
from control.scheduler.prom import GatewayMetrics
from control.scheduler.replies import Reply
from control.scheduler.upstream import Response, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a non-streamed answer is buffered (so a failure mid-body can still retry)
# Not passed on from the node: hop-by-hop, or rewritten by the gateway's own server or the gateway itself.
DROP_UPSTREAM = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
                           "server", "date", "x-switchyard-node", "x-switchyard-cache", "x-switchyard-retries"})
# An SSE event that carries generated text (chat `delta.content` or completion `text`, non-empty). A stream's
# first event can be a role-only delta sent before prefill ends; time to first token is measured at this one,
# as vLLM's own benchmark does.
_TOKEN_EVENT = re.compile(rb'"(?:content|text)":\s*"(?!")')


class Retryable(Exception):
    """A failure before the first byte reached the client: the request may go to the next-best node."""

    def __init__(self, error: str, node_fault: bool = True) -> None:
        super().__init__(error)
        self.error = error
        self.node_fault = node_fault  # False for a node's 429 (busy, not broken): no quarantine count


@dataclass
class Upstream:
    status: int
    headers: list[tuple[bytes, bytes]]
    content_type: str
    body: bytes | None  # the whole answer (non-streamed)
    first: bytes  # the first chunk (streamed)
    rest: AsyncIterator[bytes] | None
    response: Response
    ttft_s: float | None  # streamed: None until an event carrying generated text has passed
    started: float  # perf_counter() when the request was sent


class Proxy:
    def __init__(self, gateway_id: str, admission: Admission, client: UpstreamClient, cache: answers.AnswerCache,
                 counters: dict[str, int], prom: GatewayMetrics) -> None:
        self.gateway_id = gateway_id
        self.admission = admission
        self.sched = admission.sched
        self.client = client
        self.cache = cache
        self.counters = counters
        self.prom = prom
        self._rid = 0

    async def route(self, send: Any, ctx: RequestContext) -> None:
        admission = ctx.admission or self.admission  # a canary's arm routes with its own core
        sched = admission.sched
        cfg = sched.config
        exclude: set[str] = set()
        if ctx.need_tokens:
            exclude, ctx.filtered = length.exclude_for(self.sched, ctx.model, ctx.need_tokens,
                                                       "messages" if ctx.path.endswith("chat/completions") else
                                                       "prompt")
        # the prompt's share of the estimate (length.need_tokens: prompt + the answer asked for, else 1)
        prompt = max(0, ctx.need_tokens - (ctx.answer_tokens or 1)) if ctx.need_tokens else 0
        for attempt in range(cfg.max_attempts):
            self._rid += 1
            rid = self._rid
            try:
                node = await admission.acquire(ctx.model, ctx.cls, frozenset(exclude), rid, ctx.prefix, ctx.stream,
                                               ctx.answer_tokens, prompt)
            except Reply as reply:
                if attempt and reply.status in (404, 503) and reply.code in ("model_not_found", "no_node"):
                    raise Reply(502, f"{ctx.error}; no other node was available", type_="server_error",
                                code="upstream_failed", headers=admission.retry_after()) from None
                raise
            if attempt:  # sent again, to another node
                ctx.retries += 1
                self.counters["retries"] += 1
                self.prom.retries.inc()
            ctx.node = node
            try:
                up = await self._attempt(node, ctx)
            except Retryable as exc:
                admission.finish(node, rid, None, ok=False)
                if exc.node_fault and sched.failed(node, time.time()):
                    self.counters["quarantines"] += 1
                    self.prom.quarantines.inc()
                    log.warning("gateway %s: node %s quarantined for %g s after %d failures (last: %s)",
                                self.gateway_id, node.name, cfg.quarantine_cooldown_s, node.failures, exc.error)
                exclude.add(node.name)
                ctx.error = f"node {node.name}: {exc.error}"
                continue
            sched.succeeded(node)
            try:
                await self._deliver(send, ctx, up)
            finally:
                admission.finish(node, rid, up.ttft_s, ok=up.status < 400, stream=ctx.stream)
            return
        raise Reply(502, f"{ctx.error} (tried {len(exclude)} node(s))", type_="server_error",
                    code="upstream_failed", headers=admission.retry_after())

    async def _attempt(self, node: Node, ctx: RequestContext) -> Upstream:
        """Send to `node`; return once the answer's first byte is here (the whole answer when not streamed)."""
        cfg = self.sched.config
        endpoint = (node.spec.endpoint or (node.metrics.endpoint if node.metrics else "")).rstrip("/")
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if ctx.request_id:
            headers["x-request-id"] = ctx.request_id
        started = time.perf_counter()
        response: Response | None = None
        try:
            async with asyncio.timeout(cfg.first_byte_timeout_s):
                response = await self.client.post(endpoint, ctx.path, ctx.raw, headers,
                                                  connect_timeout=cfg.connect_timeout_s,
                                                  read_timeout=cfg.read_timeout_s)
                if response.resent:  # the pooled connection was dead before use: sent again on a new one
                    ctx.retries += 1
                status = response.status_code
                if status >= 500 or status == 429:
                    raise Retryable(f"HTTP {status}", node_fault=status != 429)
                first, body, rest = b"", None, None
                if ctx.stream and status == 200:
                    rest = response.aiter()
                    first = await anext(rest, b"")
                    if not first:
                        raise Retryable("closed the stream before the first byte")
            ttft: float | None = time.perf_counter() - started
            if rest is None:
                body = await response.read(MAX_ANSWER_BYTES)
            elif not _TOKEN_EVENT.search(first):
                ttft = None
        except Retryable:
            if response is not None:
                await response.aclose()
            raise
        except TimeoutError:
            if response is not None:
                await response.aclose()
            raise Retryable(f"no first byte within {cfg.first_byte_timeout_s:g} s") from None
        except (UpstreamError, OSError) as exc:
            if response is not None:
                await response.aclose()
            raise Retryable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        out = [(k.lower(), v) for k, v in response.headers if k.lower().decode("latin-1") not in DROP_UPSTREAM]
        return Upstream(status, out, response.header(b"content-type") or "application/json", body, first, rest,
                        response, ttft, started)

    async def _deliver(self, send: Any, ctx: RequestContext, up: Upstream) -> None:
        ctx.status, ctx.ttft_s = up.status, up.ttft_s
        node = ctx.node.name if ctx.node else ""
        extra = [*up.headers, (b"x-switchyard-node", node.encode()), *ctx.headers()]
        if up.body is not None:
            await send({"type": "http.response.start", "status": up.status,
                        "headers": [*extra, (b"content-length", str(len(up.body)).encode())]})
            # Cached before the answer's last byte goes out: a client that sends the same request as soon as it has
            # the answer must find it (put after the send, a quick repeat raced the write and missed).
            if up.status == 200:
                ctx.prompt_tokens, ctx.completion_tokens = usage(up.body)
                await self._cache_put(ctx, up.content_type, up.body)
            await send({"type": "http.response.body", "body": up.body})
            await up.response.aclose()
            return
        await send({"type": "http.response.start", "status": up.status, "headers": extra})
        keep: list[bytes] | None = [] if ctx.ckey else None
        size = 0
        events = 0
        chunk = up.first
        # The body was read already, so what `receive` says next is that the client went away: a stream whose
        # reader left is cut, which closes the node's connection and lets it stop generating.
        gone = asyncio.ensure_future(_disconnected(ctx.receive)) if ctx.receive is not None else None
        try:
            while True:
                if gone is not None and gone.done():
                    ctx.error = "client disconnected mid-stream"
                    keep = None
                    break
                events += chunk.count(b"data:")
                if up.ttft_s is None and _TOKEN_EVENT.search(chunk):
                    up.ttft_s = ctx.ttft_s = time.perf_counter() - up.started
                if keep is not None:
                    size += len(chunk)
                    if size <= self.sched.config.cache_max_entry_bytes:
                        keep.append(chunk)
                    else:
                        keep = None
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                assert up.rest is not None
                chunk = await anext(up.rest, b"")
                if not chunk:
                    break
        except (UpstreamError, OSError) as exc:
            # Bytes already reached the client: no retry. End the stream with an error event it can recognise.
            ctx.error = f"node {node} failed mid-stream: {type(exc).__name__}"
            self.counters["errors"] += 1
            keep = None
            err = orjson.dumps({"error": {"message": ctx.error, "type": "server_error", "code": "upstream_failed"}})
            await send({"type": "http.response.body", "body": b"data: " + err + b"\n\n", "more_body": True})
        finally:
            if gone is not None and not gone.done():
                gone.cancel()
            await up.response.aclose()
        ctx.completion_tokens = max(0, events - 1)  # one token per event in vLLM's stream, less the [DONE] marker
        if keep is not None and up.status == 200:
            await self._cache_put(ctx, up.content_type, b"".join(keep))  # before the stream ends, as above
        await send({"type": "http.response.body", "body": b""})

    async def _cache_put(self, ctx: RequestContext, content_type: str, body: bytes) -> None:
        cfg = self.sched.config
        if not ctx.ckey or len(body) > cfg.cache_max_entry_bytes:
            return
        entry = answers.Entry(200, content_type, ctx.node.name if ctx.node else "", body)
        await self.cache.put(ctx.ckey, entry, cfg.cache_ttl_s)


async def _disconnected(receive: Any) -> None:
    """Return when the client has gone. uvicorn may pass on another message first (an empty body part after the
    request was read): only `http.disconnect` means the reader left."""
    for _ in range(100):
        if (await receive())["type"] == "http.disconnect":
            return
    await asyncio.get_running_loop().create_future()  # a server that never says: the stream runs to its end
