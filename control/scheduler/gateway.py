"""The gateway: an OpenAI-compatible ASGI proxy in front of the fleet (`manage.py gateway`).

The request path touches no database and no Django request cycle: it authenticates from an in-process token cache,
asks the scheduler core for a node (microseconds), and proxies over pooled keep-alive connections (upstream.py),
streaming bytes through as they arrive. Everything else runs in background tasks: the node registry and policy pointers from PostgreSQL every
second (on a thread), node samples from Redis `sy:latest`, immediate reloads on `sy:policy` / `sy:nodes`, the request
log (`sy:reqlog`, batched) and the live state key (`sy:gw:state:<id>`).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import re
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control.scheduler import answers, auth, sources
from control.scheduler.config import Config, Priorities, default_config, default_priorities
from control.scheduler.core import Node, Scheduler, metrics_from_snapshot
from control.scheduler.prom import GatewayMetrics
from control.scheduler.reqlog import RequestLog
from control.scheduler.upstream import Response, UpstreamClient, UpstreamError
from control.scheduler.waiting import Waiter, WaitQueue

log = logging.getLogger(__name__)

ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
LATEST_KEY = "sy:latest"
POLICY_CHANNEL = "sy:policy"
NODES_CHANNEL = "sy:nodes"
STATE_KEY = "sy:gw:state:{}"
STATE_TTL_S = 10
DEFAULT_MAX_BODY = 8 * 1024 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a non-streamed answer is buffered (so a failure mid-body can still retry)
# Not passed on from the node: hop-by-hop, or rewritten by the gateway's own server.
DROP_UPSTREAM = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
                           "server", "date", "x-switchyard-node", "x-switchyard-cache"})


class Reply(Exception):
    """An answer decided by the gateway itself (OpenAI's error shape)."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}})


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


# An SSE event that carries generated text (chat `delta.content` or completion `text`, non-empty). A stream's
# first event can be a role-only delta sent before prefill ends; time to first token is measured at this one,
# as vLLM's own benchmark does.
_TOKEN_EVENT = re.compile(rb'"(?:content|text)":\s*"(?!")')


def _header_map(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


def _usage(body: bytes) -> tuple[int | None, int | None]:
    try:
        usage = orjson.loads(body).get("usage") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


class Gateway:
    def __init__(self, gateway_id: str, *, auth_required: bool = True, max_body_bytes: int = DEFAULT_MAX_BODY,
                 redis_url: str | None = None, refresh_s: float = 1.0) -> None:
        self.id = gateway_id
        self.auth_required = auth_required
        self.max_body_bytes = max_body_bytes
        self.redis_url = redis_url
        self.refresh_s = refresh_s
        self.sched = Scheduler(default_config())
        self.priorities: Priorities = default_priorities()
        self.policy_ids: dict[str, int] = {}
        self.waitq = WaitQueue()
        self.reqlog = RequestLog(gateway_id)
        self.tokens = auth.TokenCache()
        self.prom = GatewayMetrics.create()
        self.counters = {"requests": 0, "shed_429": 0, "retries": 0, "quarantines": 0, "cache_hits": 0,
                         "cache_misses": 0, "errors": 0}
        self.ready = False
        self._rids = itertools.count(1)
        self._db = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-db")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-reqlog")
        self._redis_sync: Any = None
        self._raw_samples: dict[bytes, bytes] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake: asyncio.Event | None = None
        self.client: UpstreamClient | None = None
        self.redis: Any = None
        self._last_refresh_error = 0.0

    # --- lifecycle --------------------------------------------------------------------------------------------
    async def startup(self) -> None:
        import redis
        import redis.asyncio as aioredis
        from django.conf import settings

        url = self.redis_url or settings.REDIS_URL
        self.redis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._redis_sync = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.client = UpstreamClient()
        self._wake = asyncio.Event()
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - start anyway; the loop retries every second
            log.warning("gateway %s: first refresh failed: %s", self.id, exc)
        # Long-lived objects (Django, the node table) out of the collector's way, and fewer young-generation
        # passes: a full collection over Django's objects was a visible share of the gateway's p99.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        # The refresh thread (ORM) would otherwise hold the GIL for up to 5 ms slices while requests wait.
        sys.setswitchinterval(0.0005)
        self._tasks = [asyncio.create_task(coro) for coro in
                       (self._refresh_loop(), self._listen(), self._state_loop(), self._reqlog_loop())]

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.redis is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self.reqlog.flush, self._redis_sync)
            await self.redis.aclose()
            self._redis_sync.close()
        self._writer.shutdown(wait=False)
        if self.client is not None:
            await self.client.aclose()
        self._db.submit(sources.close_connection).result(timeout=5)
        self._db.shutdown(wait=False)

    # --- background: registry, policy, samples ---------------------------------------------------------------
    def _read_db(self) -> tuple[list[Any], dict[str, int], dict[str, tuple[int, dict[str, Any]]]]:
        from django.db import DatabaseError

        try:
            specs = sources.registry()
            pointers = sources.policy_pointers()
            loaded = {kind: sources.load_policy(kind) for kind in sources.KINDS
                      if kind not in pointers or pointers[kind] != self.policy_ids.get(kind)}
            return specs, pointers, loaded
        except DatabaseError:
            sources.close_connection()  # reconnect on the next try
            raise

    async def refresh(self) -> None:
        """Registry, policies and samples, then every node's score; wakes waiters if capacity appeared."""
        loop = asyncio.get_running_loop()
        specs, _pointers, loaded = await loop.run_in_executor(self._db, self._read_db)
        config = None
        if "scheduler" in loaded:
            rid, doc = loaded["scheduler"]
            config = Config.from_document(doc)
            self.policy_ids["scheduler"] = rid
        if "priorities" in loaded:
            rid, doc = loaded["priorities"]
            self.priorities = Priorities.from_document(doc)
            self.policy_ids["priorities"] = rid
        raw = await self.redis.hgetall(LATEST_KEY)
        samples = {}
        for key, value in raw.items():
            if self._raw_samples.get(key) != value:
                try:
                    m = metrics_from_snapshot(orjson.loads(value))
                except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
                    m = None
                if m is not None:
                    samples[key.decode()] = m
        self._raw_samples = raw
        now = time.time()
        self.sched.update(now, specs=specs, samples=samples, config=config)
        self.sched.tick(now)
        self.ready = True
        self._dispatch()

    async def _refresh_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.refresh_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep routing on the last known state
                if time.monotonic() - self._last_refresh_error > 30:
                    log.warning("gateway %s: refresh failed (routing on the last known state): %s", self.id, exc)
                    self._last_refresh_error = time.monotonic()
                self.sched.tick(time.time())

    async def _listen(self) -> None:
        """sy:policy and sy:nodes: refresh at once (the once-a-second check catches anything missed)."""
        assert self._wake is not None
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(POLICY_CHANNEL, NODES_CHANNEL)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis restarted: subscribe again
                log.info("gateway %s: change channels lost (%s); resubscribing", self.id, exc)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001, S110 - closing a broken connection
                    pass

    def state(self) -> dict[str, Any]:
        """The live state document (contract 2)."""
        now = time.time()
        nodes = self.sched.describe(now)
        waiting = self.waitq.counts()
        return {
            "id": self.id, "ts": now,
            "policy": {"scheduler": self.policy_ids.get("scheduler"), "priorities": self.policy_ids.get("priorities")},
            "nodes": nodes,
            "queues": {c.name: waiting.get(c.name, 0) for c in self.priorities.ordered()},
            "saturated": bool(nodes) and not any(n["eligible"] for n in nodes),
            "counters": dict(self.counters),
        }

    async def _state_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                doc = self.state()
                await self.redis.set(STATE_KEY.format(self.id), orjson.dumps(doc), ex=STATE_TTL_S)
                for cls, n in doc["queues"].items():
                    self.prom.waiting.labels(cls).set(n)
                for n in doc["nodes"]:
                    self.prom.in_flight.labels(n["node"]).set(n["in_flight"])
                self.prom.eligible.set(sum(1 for n in doc["nodes"] if n["eligible"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: the next second tries again
                log.debug("gateway %s: state not written: %s", self.id, exc)

    async def _reqlog_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.2)
            if self.reqlog.buffer:
                await loop.run_in_executor(self._writer, self.reqlog.flush, self._redis_sync)

    # --- ASGI -------------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return None
        path, method = scope["path"], scope["method"]
        kind = ROUTES.get(path)
        try:
            if kind is not None:
                if method != "POST":
                    raise Reply(405, f"{method} is not allowed on {path}; use POST", headers={"Allow": "POST"})
                return await self._completion(scope, receive, send, kind)
            if path == "/v1/models" and method == "GET":
                await self._authenticate(_header_map(scope))
                return await self._models(send)
            if path == "/healthz":
                return await self._healthz(send)
            if path == "/metrics":
                return await self._send(send, 200, generate_latest(self.prom.registry), CONTENT_TYPE_LATEST)
            raise Reply(404, f"no route {method} {path}; the gateway serves POST /v1/chat/completions, "
                             "POST /v1/completions, GET /v1/models, /healthz and /metrics", code="not_found")
        except Reply as reply:
            await self._error(send, reply)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - report it to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _send(self, send: Any, status: int, body: bytes, content_type: str | bytes = "application/json",
                    extra: list[tuple[bytes, bytes]] | None = None, node: str = "") -> None:
        ct = content_type.encode() if isinstance(content_type, str) else content_type
        headers = [(b"content-type", ct), (b"content-length", str(len(body)).encode()),
                   (b"x-switchyard-node", node.encode())]
        if extra:
            headers += extra
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Any, reply: Reply) -> None:
        extra = [(k.lower().encode(), str(v).encode()) for k, v in reply.headers.items()]
        if reply.status == 401:
            extra.append((b"www-authenticate", b'Bearer realm="switchyard-gateway"'))
        await self._send(send, reply.status, reply.body(), extra=extra)

    async def _healthz(self, send: Any) -> None:
        eligible = sum(1 for n in self.sched.nodes.values() if self.sched.filter_reason(n, time.time()) == "")
        body = {"status": "ok" if self.ready else "starting", "id": self.id, "nodes": len(self.sched.nodes),
                "eligible": eligible, "policy": self.policy_ids}
        await self._send(send, 200 if self.ready else 503, orjson.dumps(body))

    async def _models(self, send: Any) -> None:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "switchyard", "nodes": n}
                for m, n in sorted(self.sched.live_models().items())]
        await self._send(send, 200, orjson.dumps({"object": "list", "data": data}))

    # --- the request path -------------------------------------------------------------------------------------
    async def _authenticate(self, headers: dict[str, str]) -> auth.Caller | None:
        if not self.auth_required:
            return None
        plain = auth.bearer(headers.get("authorization", ""))
        if plain is None:
            raise Reply(401, "missing API key: send 'Authorization: Bearer <token>' with a Switchyard API token "
                             "(python manage.py createuser prints one)", code="invalid_api_key")
        known, caller = self.tokens.get(plain)
        if not known:
            loop = asyncio.get_running_loop()
            try:
                caller = await loop.run_in_executor(self._db, auth.lookup, plain)
            except Exception as exc:  # noqa: BLE001 - database down: say so rather than 'bad token'
                sources.close_connection()
                raise Reply(503, f"cannot check the API key now (database unavailable: {type(exc).__name__}); "
                                 "retry shortly", type_="server_error", headers={"Retry-After": "2"}) from None
            self.tokens.put(plain, caller)
        if caller is None:
            raise Reply(401, "unknown or revoked API key", code="invalid_api_key")
        return caller

    async def _read_body(self, headers: dict[str, str], receive: Any) -> bytes:
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise Reply(400, "Content-Length is not a number")
            if int(declared) > limit:
                raise Reply(413, f"the request body is {declared} bytes; the gateway's limit is {limit}",
                            code="request_too_large")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Reply(499, "client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Reply(413, f"the request body is over the gateway's {limit}-byte limit",
                            code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    def _parse(raw: bytes, kind: str) -> dict[str, Any]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Reply(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise Reply(400, f"the body must be a JSON object, not {type(body).__name__}")
        model = body.get("model")
        if not isinstance(model, str) or not model.strip() or len(model) > 256:
            raise Reply(400, "'model' is required: the name of a model the fleet serves (GET /v1/models)",
                        param="model")
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise Reply(400, "'messages' is required: a non-empty list of {role, content} objects",
                            param="messages")
        elif not isinstance(body.get("prompt"), str | list) or body.get("prompt") in ("", []):
            raise Reply(400, "'prompt' is required: a string or a list of strings", param="prompt")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise Reply(400, "'stream' must be true or false", param="stream")
        t = body.get("temperature")
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)):
            raise Reply(400, "'temperature' must be a number", param="temperature")
        return body

    def _class(self, headers: dict[str, str], caller: auth.Caller | None) -> str:
        wanted = headers.get("x-priority", "").strip()
        classes = self.priorities.classes
        if wanted:
            if wanted not in classes:
                raise Reply(400, f"unknown priority class {wanted!r} in X-Priority; the classes are "
                                 f"{', '.join(c.name for c in self.priorities.ordered())}", param="X-Priority")
            return wanted
        if caller is not None and caller.priority_class in classes:
            return caller.priority_class
        return self.priorities.default_class

    async def _completion(self, scope: dict[str, Any], receive: Any, send: Any, kind: str) -> None:
        t0 = time.perf_counter()
        ts = time.time()
        headers = _header_map(scope)
        caller = await self._authenticate(headers)
        raw = await self._read_body(headers, receive)
        body = self._parse(raw, kind)
        cls = self._class(headers, caller)
        model: str = body["model"]
        stream = bool(body.get("stream", False))
        cfg = self.sched.config
        cache_state, ckey = "off", None
        if cfg.cache_enabled and answers.cacheable(body):
            ckey = answers.key(scope["path"], body)
            if "no-cache" in headers.get("cache-control", "").lower():
                cache_state = "bypass"
            else:
                entry = await self._cache_get(ckey)
                if entry is not None:
                    return await self._from_cache(send, entry, model, cls, stream, t0, ts)
                cache_state = "miss"
                self.counters["cache_misses"] += 1
        self.counters["requests"] += 1
        ctx = _Request(ts=ts, t0=t0, model=model, cls=cls, stream=stream, cache=cache_state, ckey=ckey,
                       path=scope["path"], raw=raw, request_id=headers.get("x-request-id", ""), receive=receive)
        try:
            await self._route(send, ctx)
        except Reply as reply:
            ctx.status, ctx.error = reply.status, reply.message
            self.counters["errors"] += reply.status >= 500
            await self._error(send, reply)
        finally:
            self._log(ctx)

    async def _cache_get(self, ckey: str) -> answers.Entry | None:
        try:
            raw = await self.redis.get(ckey)
        except Exception as exc:  # noqa: BLE001 - a cache that is down is a miss, never an error
            log.debug("cache read failed: %s", exc)
            return None
        return answers.Entry.decode(raw) if raw else None

    async def _from_cache(self, send: Any, entry: answers.Entry, model: str, cls: str, stream: bool, t0: float,
                          ts: float) -> None:
        self.counters["requests"] += 1
        self.counters["cache_hits"] += 1
        await self._send(send, entry.status, entry.body, entry.content_type,
                         [(b"x-switchyard-cache", b"hit")], node=entry.node)
        ctx = _Request(ts=ts, t0=t0, model=model, cls=cls, stream=stream, cache="hit", ckey=None, path="", raw=b"",
                       request_id="")
        ctx.status = entry.status
        ctx.ttft_s = time.perf_counter() - t0
        if not stream:
            ctx.prompt_tokens, ctx.completion_tokens = _usage(entry.body)
        self._log(ctx, node_name="")

    def _log(self, ctx: _Request, node_name: str | None = None) -> None:
        latency = time.perf_counter() - ctx.t0
        name = ctx.node.name if ctx.node is not None and node_name is None else (node_name or "")
        pool = ctx.node.spec.pool if ctx.node is not None and name else ""
        self.reqlog.add(ts=ctx.ts, node=name, pool=pool, model=ctx.model, cls=ctx.cls, status=ctx.status,
                        ttft_ms=None if ctx.ttft_s is None else ctx.ttft_s * 1000, latency_ms=latency * 1000,
                        prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens, cache=ctx.cache,
                        retries=ctx.retries, stream=ctx.stream, error=ctx.error)
        self.prom.requests.labels(ctx.cls, str(ctx.status), ctx.cache).inc()
        self.prom.latency.labels(ctx.cls).observe(latency)
        if ctx.ttft_s is not None:
            self.prom.ttft.labels(ctx.cls).observe(ctx.ttft_s)

    # --- choosing a node, waiting when saturated ---------------------------------------------------------------
    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.sched.config.retry_after_s)}

    async def _acquire(self, ctx: _Request, exclude: frozenset[str], rid: int) -> Node:
        """A node reserved for this request (its send already counted), or a Reply saying why there is none."""
        pick = self.sched.pick(ctx.model, exclude)
        if pick.node is not None:
            self.sched.sent(pick.node, rid, time.time())
            return pick.node
        if pick.verdict == "unknown_model":
            raise Reply(404, f"no node serves model {ctx.model!r}; GET /v1/models lists the models the fleet serves",
                        code="model_not_found", param="model")
        if pick.verdict == "unavailable":
            raise Reply(503, f"no node can serve {ctx.model!r} now (every node is draining, cordoned, stale, "
                             "failed or quarantined); retry later", type_="server_error", code="no_node",
                        headers=self._retry_after())
        pc = self.priorities.classes[ctx.cls]
        if pc.sheddable:
            self.counters["shed_429"] += 1
            raise Reply(429, f"the fleet is saturated and class {ctx.cls!r} is shed at saturation; retry after "
                             f"{self.sched.config.retry_after_s} s", type_="rate_limit_error", code="saturated",
                        headers=self._retry_after())
        waiter = self.waitq.add(ctx.cls, ctx.model, exclude, pc.queue_limit, rid)
        if waiter is None:
            raise Reply(503, f"the fleet is saturated and the {ctx.cls!r} queue is full ({pc.queue_limit} waiting); "
                             "retry later", type_="server_error", code="queue_full", headers=self._retry_after())
        return await self._wait(waiter, pc.queue_timeout_s)

    async def _wait(self, waiter: Waiter, timeout_s: float) -> Node:
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            pass
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            self.waitq.remove(waiter)
        if waiter.future.done() and not waiter.future.cancelled():  # granted in the same instant
            return waiter.future.result()
        raise Reply(503, f"the fleet stayed saturated for {timeout_s:g} s (the {waiter.cls!r} queue timeout); "
                         "retry later", type_="server_error", code="queue_timeout", headers=self._retry_after())

    def _dispatch(self) -> None:
        if not len(self.waitq):
            return

        def grant(waiter: Waiter) -> Node | None:
            pick = self.sched.pick(waiter.model, waiter.exclude)
            if pick.node is None:
                return None
            self.sched.sent(pick.node, waiter.rid, time.time())
            return pick.node

        self.waitq.dispatch([c.name for c in self.priorities.ordered()], grant)

    def _finish(self, node: Node, rid: int, ttft_s: float | None, ok: bool) -> None:
        self.sched.finished(node, rid, ttft_s, ok=ok)
        self._dispatch()

    # --- proxying ---------------------------------------------------------------------------------------------
    async def _route(self, send: Any, ctx: _Request) -> None:
        cfg = self.sched.config
        exclude: set[str] = set()
        for attempt in range(cfg.max_attempts):
            rid = next(self._rids)
            try:
                node = await self._acquire(ctx, frozenset(exclude), rid)
            except Reply as reply:
                if attempt and reply.status in (404, 503) and reply.code in ("model_not_found", "no_node"):
                    raise Reply(502, f"{ctx.error}; no other node was available", type_="server_error",
                                code="upstream_failed", headers=self._retry_after()) from None
                raise
            ctx.node = node
            try:
                up = await self._attempt(node, ctx)
            except Retryable as exc:
                self._finish(node, rid, None, ok=False)
                if exc.node_fault and self.sched.failed(node, time.time()):
                    self.counters["quarantines"] += 1
                    self.prom.quarantines.inc()
                    log.warning("gateway %s: node %s quarantined for %g s after %d failures (last: %s)", self.id,
                                node.name, cfg.quarantine_cooldown_s, node.failures, exc.error)
                exclude.add(node.name)
                ctx.error = f"node {node.name}: {exc.error}"
                if attempt + 1 < cfg.max_attempts:
                    ctx.retries += 1
                    self.counters["retries"] += 1
                    self.prom.retries.inc()
                continue
            self.sched.succeeded(node)
            try:
                await self._deliver(send, ctx, up)
            finally:
                self._finish(node, rid, up.ttft_s, ok=up.status < 400)
            return
        raise Reply(502, f"{ctx.error} (tried {len(exclude)} node(s))", type_="server_error",
                    code="upstream_failed", headers=self._retry_after())

    async def _attempt(self, node: Node, ctx: _Request) -> Upstream:
        """Send to `node`; return once the answer's first byte is here (the whole answer when not streamed)."""
        assert self.client is not None
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

    async def _deliver(self, send: Any, ctx: _Request, up: Upstream) -> None:
        ctx.status, ctx.ttft_s = up.status, up.ttft_s
        node = ctx.node.name if ctx.node else ""
        extra = [*up.headers, (b"x-switchyard-node", node.encode()), (b"x-switchyard-cache", ctx.cache.encode())]
        if up.body is not None:
            await send({"type": "http.response.start", "status": up.status,
                        "headers": [*extra, (b"content-length", str(len(up.body)).encode())]})
            await send({"type": "http.response.body", "body": up.body})
            await up.response.aclose()
            if up.status == 200:
                ctx.prompt_tokens, ctx.completion_tokens = _usage(up.body)
                await self._cache_put(ctx, up.content_type, up.body)
            return
        await send({"type": "http.response.start", "status": up.status, "headers": extra})
        keep: list[bytes] | None = [] if ctx.ckey else None
        size = 0
        events = 0
        chunk = up.first
        # The body was read already, so the next message on `receive` is the client's disconnect: a stream whose
        # reader left is cut, which closes the node's connection and lets it stop generating.
        gone = asyncio.ensure_future(ctx.receive()) if ctx.receive is not None else None
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
        await send({"type": "http.response.body", "body": b""})
        ctx.completion_tokens = max(0, events - 1)  # one token per event in vLLM's stream, less the [DONE] marker
        if keep is not None and up.status == 200:
            await self._cache_put(ctx, up.content_type, b"".join(keep))

    async def _cache_put(self, ctx: _Request, content_type: str, body: bytes) -> None:
        if not ctx.ckey or len(body) > self.sched.config.cache_max_entry_bytes:
            return
        entry = answers.Entry(200, content_type, ctx.node.name if ctx.node else "", body)
        try:
            await self.redis.set(ctx.ckey, entry.encode(), ex=self.sched.config.cache_ttl_s)
        except Exception as exc:  # noqa: BLE001 - the answer was delivered; caching it is best effort
            log.debug("cache write failed: %s", exc)


@dataclass
class _Request:
    """What one request carries through routing and into the request log."""

    ts: float
    t0: float
    model: str
    cls: str
    stream: bool
    cache: str
    ckey: str | None
    path: str
    raw: bytes
    request_id: str
    node: Node | None = None
    status: int = 0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retries: int = 0
    error: str = ""
    receive: Any = None  # the ASGI receive channel: tells a stream that its client went away
