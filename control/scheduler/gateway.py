"""The gateway: an OpenAI-compatible ASGI proxy in front of the fleet (`manage.py gateway`).

The request path touches no database and no Django request cycle: it authenticates from an in-process token cache
(auth.py), reads and checks the request (intake.py), settles its priority class (priority.py), answers from the
answer cache when it may (answers.py), gets a node from the scheduler core or waits for one (admission.py), and
proxies over pooled keep-alive connections (proxy.py, upstream.py), streaming bytes through as they arrive.
Everything else runs in background tasks (sync.py). This module holds the pieces together: lifecycle, the routes,
and the read endpoints.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control.scheduler import answers, sources
from control.scheduler.admission import Admission
from control.scheduler.auth import Authenticator, bearer
from control.scheduler.canary_arm import CanaryArm, prefix_config
from control.scheduler.config import Priorities, default_config
from control.scheduler.context import RequestContext, account
from control.scheduler.core import Scheduler
from control.scheduler.intake import DEFAULT_MAX_BODY, ROUTES, header_map, parse, read_body, usage
from control.scheduler.kv_events import KVEvents, parse_endpoints
from control.scheduler.length import answer_tokens, need_tokens
from control.scheduler.prefix_index import block_keys, prompt_text
from control.scheduler.priority import request_class
from control.scheduler.prom import GatewayMetrics
from control.scheduler.proxy import Proxy
from control.scheduler.replies import Reply, send_error, send_whole
from control.scheduler.reqlog import RequestLog
from control.scheduler.sync import Sync
from control.scheduler.upstream import UpstreamClient
from control.scheduler.waiting import WaitQueue

log = logging.getLogger(__name__)

METRICS_NEED = ("the gateway's /metrics names nodes and policies: it needs an API token of a user with the viewer "
                "role ('Authorization: Bearer <token>'), unless SWITCHYARD_GATEWAY_METRICS_PUBLIC=true")


class Gateway:
    def __init__(self, gateway_id: str, *, auth_required: bool = True, max_body_bytes: int = DEFAULT_MAX_BODY,
                 redis_url: str | None = None, refresh_s: float = 1.0, metrics_public: bool | None = None,
                 kv_events: str | None = None) -> None:
        from django.conf import settings

        self.id = gateway_id
        self.max_body_bytes = max_body_bytes
        self.redis_url = redis_url
        self.refresh_s = refresh_s
        # Without authentication nothing is private anyway (trusted networks and benchmarks only).
        self.metrics_public = (not auth_required or bool(getattr(settings, "GATEWAY_METRICS_PUBLIC", False))
                               if metrics_public is None else metrics_public)
        self.sched = Scheduler(default_config())
        self.policy_ids: dict[str, int] = {}
        self.counters = {"requests": 0, "shed_429": 0, "retries": 0, "quarantines": 0, "cache_hits": 0,
                         "cache_misses": 0, "errors": 0}
        self.prom = GatewayMetrics.create()
        self.reqlog = RequestLog(gateway_id)
        self.admission = Admission(self.sched, self.counters)
        self.canary: CanaryArm | None = None  # the candidate's core while a scheduler canary runs (sync.py)
        # An ended canary's arm while requests still wait in its admission's queue: still linked and dispatched,
        # so that they are served rather than left to time out (sync.py); no new request takes it.
        self.retiring: CanaryArm | None = None
        self._keys = 0  # splits requests that carry neither a session nor a request id
        self.db = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-db")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-reqlog")
        self.auth = Authenticator(auth_required, self.db)
        self.sync = Sync(self)
        self.ready = False
        # Set at startup, on the server's event loop:
        self.wake: asyncio.Event | None = None  # set it to refresh at once
        self.redis: Any = None
        self.redis_sync: Any = None
        self.cache: answers.AnswerCache | None = None
        self.proxy: Proxy | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        # Precise prefix routing: where the nodes' KV-cache events arrive (kv_events.py); checked here, so that a
        # bad address stops the gateway before it serves.
        self.kv_endpoints = parse_endpoints(getattr(settings, "GATEWAY_KV_EVENTS", "")
                                            if kv_events is None else kv_events)
        self.kv: KVEvents | None = None

    @property
    def priorities(self) -> Priorities:
        return self.admission.priorities

    @property
    def waitq(self) -> WaitQueue:
        return self.admission.waitq

    # --- lifecycle --------------------------------------------------------------------------------------------
    async def startup(self) -> None:
        import redis
        import redis.asyncio as aioredis
        from django.conf import settings

        url = self.redis_url or settings.REDIS_URL
        self.redis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.redis_sync = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.cache = answers.AnswerCache(self.redis)
        self.proxy = Proxy(self.id, self.admission, UpstreamClient(), self.cache, self.counters, self.prom)
        self.wake = asyncio.Event()
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
        self._tasks = [asyncio.create_task(coro) for coro in self.sync.tasks()]
        if self.kv_endpoints:
            self.kv = KVEvents(self.kv_endpoints, asyncio.get_running_loop(), self.cores,
                               lambda: self.sched.config.prefix_block_chars)
            self.kv.start()

    def cores(self) -> list[Scheduler]:
        """The scheduler cores routing requests here: the stable policy's and, during a canary, the candidate's."""
        canary = self.canary
        return [self.sched] if canary is None else [self.sched, canary.sched]

    async def shutdown(self) -> None:
        if self.kv is not None:
            self.kv.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.redis is not None:
            await asyncio.get_running_loop().run_in_executor(self.writer, self.reqlog.flush, self.redis_sync)
            await self.redis.aclose()
            self.redis_sync.close()
        self.writer.shutdown(wait=False)
        if self.proxy is not None:
            await self.proxy.client.aclose()
        self.db.submit(sources.close_connection).result(timeout=5)
        self.db.shutdown(wait=False)

    async def refresh(self) -> None:
        await self.sync.refresh()

    def state(self) -> dict[str, Any]:
        """The live state document (contract 2)."""
        now = time.time()
        nodes = self.sched.describe(now)
        waiting = self.waitq.counts()
        doc = {
            "id": self.id, "ts": now,
            "policy": {"scheduler": self.policy_ids.get("scheduler"), "priorities": self.policy_ids.get("priorities")},
            "nodes": nodes,
            "queues": {c.name: waiting.get(c.name, 0) for c in self.priorities.ordered()},
            "saturated": bool(nodes) and not any(n["eligible"] for n in nodes),
            "counters": dict(self.counters),
        }
        if self.kv is not None:  # precise prefix routing: what the events did, per node whether they feed its index
            doc["kv_events"] = self.kv.state(self.cores())
        return doc

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
                await self.auth.caller(header_map(scope))
                return await self._models(send)
            if path == "/healthz":
                # Liveness only: who runs here, what it routes to and by which policy is for /metrics' readers.
                status = "ok" if self.ready else "starting"
                return await send_whole(send, 200 if self.ready else 503, orjson.dumps({"status": status}))
            if path == "/metrics":
                return await self._metrics(scope, send)
            raise Reply(404, f"no route {method} {path}; the gateway serves POST /v1/chat/completions, "
                             "POST /v1/completions, GET /v1/models, /healthz and /metrics", code="not_found")
        except Reply as reply:
            await send_error(send, reply)

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

    async def _metrics(self, scope: dict[str, Any], send: Any) -> None:
        if not self.metrics_public:
            headers = header_map(scope)
            if bearer(headers.get("authorization", "")) is None:
                raise Reply(401, METRICS_NEED, code="invalid_api_key")
            caller = await self.auth.caller(headers)
            if caller is None or not caller.has_role("viewer"):
                raise Reply(403, f"{METRICS_NEED}; this token's user has no role", code="forbidden")
        self.set_gauges(self.state())  # as of this scrape, not of the last state publication (up to 1 s old)
        await send_whole(send, 200, generate_latest(self.prom.registry), CONTENT_TYPE_LATEST)

    def set_gauges(self, doc: dict[str, Any]) -> None:
        """The /metrics gauges from a state document (queues, in-flight per node, eligible nodes)."""
        for cls, n in doc["queues"].items():
            self.prom.waiting.labels(cls).set(n)
        for n in doc["nodes"]:
            self.prom.in_flight.labels(n["node"]).set(n["in_flight"])
        self.prom.eligible.set(sum(1 for n in doc["nodes"] if n["eligible"]))

    async def _models(self, send: Any) -> None:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "switchyard", "nodes": n}
                for m, n in sorted(self.sched.live_models().items())]
        await send_whole(send, 200, orjson.dumps({"object": "list", "data": data}))

    # --- the request path -------------------------------------------------------------------------------------
    async def _completion(self, scope: dict[str, Any], receive: Any, send: Any, kind: str) -> None:
        assert self.proxy is not None and self.cache is not None
        t0 = time.perf_counter()
        ts = time.time()
        headers = header_map(scope)
        caller = await self.auth.caller(headers)
        raw = await read_body(headers, receive, self.max_body_bytes)
        body = parse(raw, kind)
        cls = request_class(self.priorities, headers.get("x-priority", ""), caller)
        ctx = RequestContext(ts=ts, t0=t0, model=body["model"], cls=cls, stream=bool(body.get("stream", False)),
                             cache="off", ckey=None, path=scope["path"], raw=raw,
                             request_id=headers.get("x-request-id", ""), receive=receive,
                             need_tokens=need_tokens(body), answer_tokens=answer_tokens(body))
        canary = self.canary
        if canary is not None:
            self._keys += 1
            ctx.canary_id = canary.canary_id
            ctx.arm = canary.arm_of(headers.get("x-session-id", ""), ctx.request_id, f"{self.id}:{self._keys}", ts)
            ctx.admission = canary.admission if ctx.arm == "canary" else self.admission
        cfg = self.sched.config
        keyed = prefix_config(cfg, canary.sched.config if canary is not None else None, ctx.arm)
        if keyed is not None:
            ctx.prefix = block_keys(prompt_text(body), keyed.prefix_block_chars, keyed.prefix_max_blocks)
        if cfg.cache_enabled and answers.cacheable(body):
            owner = answers.tenant(caller, cfg.cache_shared, headers.get(answers.ON_BEHALF_HEADER, ""))
            ctx.ckey = answers.key(scope["path"], body, owner)
            if "no-cache" in headers.get("cache-control", "").lower():
                ctx.cache = "bypass"
            else:
                entry = await self.cache.get(ctx.ckey)
                if entry is not None:
                    return await self._from_cache(send, ctx, entry)
                ctx.cache = "miss"
                self.counters["cache_misses"] += 1
        self.counters["requests"] += 1
        token = canary.opened(ts, ctx.arm) if canary is not None else None
        try:
            await self.proxy.route(send, ctx)
        except Reply as reply:
            ctx.status, ctx.error = reply.status, reply.message
            self.counters["errors"] += reply.status >= 500
            await send_error(send, reply, ctx.headers())
        finally:
            if token is not None and canary is not None:
                canary.closed(token)
            account(ctx, self.reqlog, self.prom)

    async def _from_cache(self, send: Any, ctx: RequestContext, entry: answers.Entry) -> None:
        self.counters["requests"] += 1
        self.counters["cache_hits"] += 1
        ctx.cache, ctx.ckey, ctx.raw = "hit", None, b""
        await send_whole(send, entry.status, entry.body, entry.content_type, ctx.headers(), node=entry.node)
        ctx.status = entry.status
        ctx.ttft_s = time.perf_counter() - ctx.t0
        if not ctx.stream:
            ctx.prompt_tokens, ctx.completion_tokens = usage(entry.body)
        account(ctx, self.reqlog, self.prom)
