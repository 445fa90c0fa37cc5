"""The gateway's background tasks, off the request path: the node registry and policies from PostgreSQL every
second (on a thread), node samples from Redis `sy:latest`, immediate reloads on `sy:policy` / `sy:nodes`, token
revocations on `sy:tokens`, the request log (`sy:reqlog`, batched) and the live state key (`sy:gw:state:<id>`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from control.scheduler import canary_arm, sources
from control.scheduler.auth import TOKENS_CHANNEL
from control.scheduler.config import Config, Priorities
from control.scheduler.core import metrics_from_snapshot

if TYPE_CHECKING:
    from control.scheduler.gateway import Gateway

log = logging.getLogger(__name__)

LATEST_KEY = "sy:latest"
POLICY_CHANNEL = "sy:policy"
NODES_CHANNEL = "sy:nodes"
STATE_KEY = "sy:gw:state:{}"
STATE_TTL_S = 10
REQLOG_FLUSH_S = 0.2


class Sync:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._raw_samples: dict[bytes, bytes] = {}
        self._metrics: dict[str, Any] = {}  # every node's parsed latest sample (a new canary core starts from it)
        self._last_refresh_error = 0.0

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        return [self._refresh_loop(), self._listen(), self._state_loop(), self._reqlog_loop()]

    # --- registry, policies, samples -----------------------------------------------------------------------------
    def _read_db(self) -> tuple[list[Any], dict[str, tuple[int, dict[str, Any]]], Any]:
        from django.db import DatabaseError

        try:
            specs = sources.registry()
            pointers = sources.policy_pointers()
            loaded = {kind: sources.load_policy(kind) for kind in sources.KINDS
                      if kind not in pointers or pointers[kind] != self.gw.policy_ids.get(kind)}
            canary = sources.canary_state()
            current = self.gw.canary
            if canary is not None and (current is None or current.canary_id != canary[0]):
                canary = (*canary, sources.load_revision("scheduler", canary[2]))
            return specs, loaded, canary
        except DatabaseError:
            sources.close_connection()  # reconnect on the next try
            raise

    async def refresh(self) -> None:
        """Registry, policies and samples, then every node's score; wakes waiters if capacity appeared."""
        gw = self.gw
        specs, loaded, canary = await asyncio.get_running_loop().run_in_executor(gw.db, self._read_db)
        config = None
        if "scheduler" in loaded:
            rid, doc = loaded["scheduler"]
            config = Config.from_document(doc)
            gw.policy_ids["scheduler"] = rid
        if "priorities" in loaded:
            rid, doc = loaded["priorities"]
            gw.admission.priorities = Priorities.from_document(doc)
            gw.policy_ids["priorities"] = rid
        for kind, rid in gw.policy_ids.items():
            gw.prom.policy.labels(kind).set(rid)
        raw = await gw.redis.hgetall(LATEST_KEY)
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
        self._metrics.update(samples)
        now = time.time()
        gw.sched.update(now, specs=specs, samples=samples, config=config)
        gw.sched.tick(now)
        self._canary(canary, specs, samples, now)
        gw.ready = True
        gw.admission.dispatch()

    def _canary(self, state: Any, specs: list[Any], samples: dict[str, Any], now: float) -> None:
        """Start, re-weight, feed or drop the candidate core as the live canary says."""
        gw = self.gw
        if state is None:
            if gw.canary is not None:
                gw.retiring, gw.canary = gw.canary, None
            self._retire(specs, samples, now)
            return
        if gw.canary is None or gw.canary.canary_id != state[0]:
            gw.retiring = None  # replaced within a second: its waiters (if any) time out, as they always did
            gw.canary = canary_arm.build(state[0], state[2], state[1], state[5], gw.admission, specs,
                                         dict(self._metrics), now, state[3], state[4])
            canary_arm.link(gw.admission, gw.canary.admission)
            return
        gw.canary.weight = state[1]
        gw.canary.anchor, gw.canary.switchback_s = state[3], state[4]
        gw.canary.admission.priorities = gw.admission.priorities
        gw.canary.sched.update(now, specs=specs, samples=samples)
        gw.canary.sched.tick(now)
        gw.canary.admission.dispatch()

    def _retire(self, specs: list[Any], samples: dict[str, Any], now: float) -> None:
        """An ended canary's arm stays linked (both cores count every send and finish) and keeps being fed and
        dispatched while its admission has requests waiting: they were admitted under the candidate and only its
        dispatch can serve them. Dropped at once it left them to a 503 at their queue timeout (30 s for the
        standard class), however soon capacity freed."""
        gw = self.gw
        old = gw.retiring
        if old is None:
            return
        if len(old.admission.waitq):
            old.sched.update(now, specs=specs, samples=samples)
            old.sched.tick(now)
            old.admission.dispatch()
        if not len(old.admission.waitq):
            gw.retiring = None
            canary_arm.link(gw.admission, None)

    async def _refresh_loop(self) -> None:
        wake = self.gw.wake
        while True:
            try:
                await asyncio.wait_for(wake.wait(), timeout=self.gw.refresh_s)
            except TimeoutError:
                pass
            wake.clear()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep routing on the last known state
                if time.monotonic() - self._last_refresh_error > 30:
                    log.warning("gateway %s: refresh failed (routing on the last known state): %s", self.gw.id, exc)
                    self._last_refresh_error = time.monotonic()
                self.gw.sched.tick(time.time())

    # --- change channels ---------------------------------------------------------------------------------------
    async def _listen(self) -> None:
        """sy:policy and sy:nodes: refresh at once (the once-a-second check catches anything missed). sy:tokens: forget
        a revoked token at once; after (re)subscribing, forget every cached token, since messages may have been lost."""
        gw = self.gw
        while True:
            pubsub = gw.redis.pubsub()
            try:
                await pubsub.subscribe(POLICY_CHANNEL, NODES_CHANNEL, TOKENS_CHANNEL)
                gw.auth.cache.clear()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None:
                        continue
                    if msg["channel"] == TOKENS_CHANNEL.encode():
                        gw.auth.cache.drop(msg["data"].decode("ascii", "replace"))
                    else:
                        gw.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis restarted: subscribe again
                log.info("gateway %s: change channels lost (%s); resubscribing", gw.id, exc)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001, S110 - closing a broken connection
                    pass

    # --- what the gateway publishes ----------------------------------------------------------------------------
    async def _state_loop(self) -> None:
        gw = self.gw
        while True:
            await asyncio.sleep(1.0)
            try:
                doc = gw.state()
                await gw.redis.set(STATE_KEY.format(gw.id), orjson.dumps(doc), ex=STATE_TTL_S)
                if gw.canary is not None:  # the canary's requests still open here (its analysis's early window)
                    await gw.redis.set(canary_arm.OPEN_KEY.format(gw.id), orjson.dumps(gw.canary.open_doc(time.time())),
                                       ex=STATE_TTL_S)
                gw.set_gauges(doc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: the next second tries again
                log.debug("gateway %s: state not written: %s", gw.id, exc)

    async def _reqlog_loop(self) -> None:
        gw = self.gw
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REQLOG_FLUSH_S)
            if gw.reqlog.buffer:
                await loop.run_in_executor(gw.writer, gw.reqlog.flush, gw.redis_sync)
