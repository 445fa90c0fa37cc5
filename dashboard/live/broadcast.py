"""The live broadcaster: builds each subscribed topic once per tick and fans it out through the channel layer.

Every `serve` worker process runs one Broadcaster (started by its first websocket, stopped a while after its last).
They coordinate through Redis so that a frame is built once per tick for the whole deployment, not once per
process or per browser:

- `sy:live:lease`     SET NX PX lease; only the holder builds. It renews each tick; if it dies, another takes over.
- `sy:live:topics`    ZSET topic -> expiry (ms). Every process re-adds the topics its sockets watch each tick, so
                      the builder builds only topics someone watches, and a crashed process's topics expire.
- `sy:live:seq`       HASH topic -> seq of the latest frame; `sy:live:frame:<topic>` the latest full frame (JSON).
                      A new subscriber gets the stored frame without a rebuild. Both change only through one Lua
                      compare-and-set on the seq, so two builders can never publish the same seq twice.
- `sy:live:seen`      HASH topic -> when (ms) a builder last looked after it; a subscriber finding it older than
                      SEEN_FRESH_MS builds the first frame itself (no builder has taken the topic on yet).

The builder wakes on `sy:ingest` (published by every push) but builds at most once per TICK_S
(SWITCHYARD_LIVE_TICK_S, default 0.5 s); without pushes it still ticks every TICK_S and builds when a node's
up/stale/down status is due to change, or a new topic appeared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection

from dashboard.live import frames
from dashboard.metrics.latest import INGEST_CHANNEL, redis_client

log = logging.getLogger(__name__)

# At most one build per topic per tick (SWITCHYARD_LIVE_TICK_S, default 0.5 s): a push waits for the next tick, so
# the tick bounds the ingest-to-browser latency on a busy fleet (issue 15: p95 was just over 1 s at a 1 s tick),
# and it caps what a browser gets at 1 / TICK_S messages a second per topic however many nodes push.
TICK_S: float = settings.LIVE_TICK_S
LEASE_MS = 3000
PRESENCE_MS = 3000
SEEN_FRESH_MS = 3000
REFRESH_S = 10.0  # rebuild at least this often even when nothing seems to change (safety net for lost notices)
LINGER_S = 10.0  # keep ticking this long after the process's last socket closed (page reloads)
FRAME_TTL_MS = 3600 * 1000

LEASE_KEY = "sy:live:lease"
TOPICS_KEY = "sy:live:topics"
SEQ_KEY = "sy:live:seq"
SEEN_KEY = "sy:live:seen"
FRAME_PREFIX = "sy:live:frame:"

# Returns -1 when stored, else the seq that is there now.
_STORE_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if cur ~= tonumber(ARGV[2]) then return cur end
redis.call('HSET', KEYS[1], ARGV[1], cur + 1)
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
return -1
"""
_LEASE_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def group_of(topic: str) -> str:
    """Channel-layer group names allow only [a-zA-Z0-9._-] below 100 characters; topics may hold ':' and ','."""
    import hashlib

    return "live." + hashlib.sha1(topic.encode()).hexdigest()[:24]


def now_ms() -> int:
    return int(time.time() * 1000)


def encode_full(frame: dict[str, Any]) -> str:
    return orjson.dumps({"type": "frame", **frame, "now": round(time.time(), 3)}).decode()


def encode_delta(topic: str, seq: int, changes: dict[str, Any]) -> str:
    return orjson.dumps({"type": "delta", "topic": topic, "seq": seq, **changes,
                         "now": round(time.time(), 3)}).decode()


def store_frame(topic: str, expected_seq: int, frame: dict[str, Any]) -> bool:
    """Store `frame` as seq expected_seq + 1 unless someone stored another frame since (then False)."""
    frame["seq"] = expected_seq + 1
    script = redis_client().register_script(_STORE_LUA)
    result = script(keys=[SEQ_KEY, FRAME_PREFIX + topic, SEEN_KEY],
                    args=[topic, expected_seq, orjson.dumps(frame), FRAME_TTL_MS, now_ms()])
    return int(result) == -1


def stored_frame(topic: str) -> dict[str, Any] | None:
    raw = redis_client().get(FRAME_PREFIX + topic)
    return orjson.loads(raw) if raw else None


def current_frame(topic: str) -> dict[str, Any]:
    """The latest full frame of a topic for a new subscriber: the stored one while a builder keeps it up to date,
    else a fresh one (stored, so the next subscriber and the builder's next delta start from it)."""
    r = redis_client()
    seen, seq = r.hmget(SEEN_KEY, topic), r.hget(SEQ_KEY, topic)
    seen_ms = int(seen[0]) if seen and seen[0] else 0
    if now_ms() - seen_ms < SEEN_FRESH_MS:
        frame = stored_frame(topic)
        if frame is not None:
            return frame
    for _ in range(3):
        expected = int(seq or 0)
        frame = frames.build(topic, frames.load_view())
        if store_frame(topic, expected, frame):
            return frame
        stored = stored_frame(topic)
        if stored is not None:
            return stored
        seq = r.hget(SEQ_KEY, topic)
    return frame


def touch_presence(topics: list[str]) -> None:
    if topics:
        redis_client().zadd(TOPICS_KEY, {t: now_ms() + PRESENCE_MS for t in topics})


def active_topics() -> list[str]:
    r = redis_client()
    now = now_ms()
    p = r.pipeline(transaction=False)
    p.zremrangebyscore(TOPICS_KEY, "-inf", now)
    p.zrangebyscore(TOPICS_KEY, now, "+inf")
    return sorted(t.decode() for t in p.execute()[1])


class Broadcaster:
    """One per process (per event loop). Sockets attach/detach and add/remove the topics they watch."""

    def __init__(self, ident: str | None = None) -> None:
        frames.tune_gc()
        self.ident = ident or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.local: Counter[str] = Counter()
        self.connections = 0
        self.frames: dict[str, dict[str, Any]] = {}  # the last frame this process built or loaded, per topic
        self.builds: Counter[str] = Counter()  # frames built per topic (tests prove one build per tick)
        self.ticks = 0
        self.leader = False
        self.last_build = 0.0  # monotonic; the last build that sent something or answered a push (rate limit)
        self.last_any_build = 0.0
        self.last_tick = 0.0
        self.last_full_refresh = 0.0
        self.next_transition: float | None = None  # epoch seconds
        self.changed: set[str] = set()  # nodes that pushed since the last tick (names from sy:ingest)
        self.need_full_read = True  # no trusted copy of sy:latest yet (start, new leader, listener reconnected)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.dirty = asyncio.Event()
        # One thread: builds are serialised and keep one database connection; never Django's request thread.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-build")

    # --- sockets ---------------------------------------------------------------------------------------------
    async def attach(self) -> None:
        self.connections += 1
        if self.task is None or self.task.done():
            self.loop = asyncio.get_running_loop()
            self.task = self.loop.create_task(self.run(), name="switchyard-live-broadcaster")

    async def detach(self) -> None:
        self.connections = max(0, self.connections - 1)

    async def add(self, topic: str) -> None:
        self.local[topic] += 1
        await asyncio.get_running_loop().run_in_executor(None, touch_presence, [topic])

    async def remove(self, topic: str) -> None:
        self.local[topic] -= 1
        if self.local[topic] <= 0:
            del self.local[topic]

    # --- one tick --------------------------------------------------------------------------------------------
    def tick_sync(self, dirty: bool, changed: set[str] | None = None) -> list[tuple[str, str]]:
        """Refresh presence, take or keep the lease, and (leader only) build what is due. Returns messages to send
        as (group, text) pairs. Runs on the build thread."""
        self.ticks += 1
        touch_presence(list(self.local))
        r = redis_client()
        self.leader = bool(r.register_script(_LEASE_LUA)(keys=[LEASE_KEY], args=[self.ident, LEASE_MS]))
        if not self.leader:
            self.frames.clear()  # another process builds; reload from Redis if the lease comes back
            self.need_full_read = True
            return []
        topics = active_topics()
        if not topics:
            self.need_full_read = True  # the pushes named in `changed` are not being read now
            return []
        r.hset(SEEN_KEY, mapping={t: now_ms() for t in topics})
        wall = time.time()
        due = (dirty or any(t not in self.frames for t in topics)
               or (self.next_transition is not None and wall >= self.next_transition)
               or time.monotonic() - self.last_any_build > REFRESH_S)
        if not due:
            return []
        return self.build_topics(topics, changed)

    def build_topics(self, topics: list[str], changed: set[str] | None = None) -> list[tuple[str, str]]:
        close_old_connections()
        full = self.need_full_read or changed is None or time.monotonic() - self.last_full_refresh > REFRESH_S
        view = frames.load_view(changed=None if full else changed)
        if full:
            self.need_full_read = False
            self.last_full_refresh = time.monotonic()
        self.next_transition = view.next_transition
        self.last_any_build = time.monotonic()
        r = redis_client()
        seqs = dict(zip(topics, r.hmget(SEQ_KEY, topics), strict=True))
        out: list[tuple[str, str]] = []
        for topic in topics:
            try:
                new = frames.build(topic, view)
            except frames.TopicError:
                continue  # e.g. a tail: of a node deleted since; its subscribers were told at subscribe time
            self.builds[topic] += 1
            stored_seq = int(seqs[topic] or 0)
            prev = self.frames.get(topic)
            if prev is None or prev.get("seq") != stored_seq:
                prev = stored_frame(topic)
                if prev is not None and prev.get("seq") != stored_seq:
                    prev = None
            change, payload = frames.diff(prev, new)
            if change == "none":
                self.frames[topic] = prev  # type: ignore[assignment]
                continue
            if not store_frame(topic, stored_seq, new):
                self.frames.pop(topic, None)  # lost a race with another builder: resync from Redis next tick
                continue
            self.frames[topic] = new
            text = encode_full(new) if change == "full" else encode_delta(topic, new["seq"], payload or {})
            out.append((group_of(topic), text))
        # Drop frames of topics nobody watches any more.
        for gone in set(self.frames) - set(topics):
            del self.frames[gone]
        return out

    async def tick(self, dirty: bool = False) -> int:
        """One tick; returns how many messages were sent."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        changed, self.changed = self.changed, set()
        messages = await loop.run_in_executor(self.executor, self.tick_sync, dirty, changed)
        self.last_tick = time.monotonic()
        if dirty or messages:  # measured from the start: frames go out every TICK_S, not every TICK_S + build time
            # The once-per-tick limit is on what clients get; a heartbeat build that found nothing new must not
            # delay the next push's frame. (A non-leader builds nothing: this only throttles its lease attempts.)
            self.last_build = started
        layer = get_channel_layer()
        for group, text in messages:
            await layer.group_send(group, {"type": "live.message", "text": text})
        return len(messages)

    # --- the loop ---------------------------------------------------------------------------------------------
    async def listen(self) -> None:
        """Mark dirty on every push published on sy:ingest; reconnect on Redis errors."""
        import redis.asyncio as aioredis

        while True:
            client = aioredis.Redis.from_url(settings.REDIS_URL)
            ps = client.pubsub()
            try:
                await ps.subscribe(INGEST_CHANNEL)
                self.need_full_read = True  # pushes may have been missed while not listening
                while True:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is not None:
                        data = msg.get("data")
                        if isinstance(data, bytes):  # a node's name, or a commit group's, one per line
                            self.changed.update(data.decode(errors="replace").split("\n"))
                        self.dirty.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis restarts must not end the live view
                log.warning("live: sy:ingest listener: %s; retrying", exc)
                self.dirty.set()
                await asyncio.sleep(1.0)
            finally:
                # A read cancelled half-way can leave redis-py's clean-up waiting on the socket: bound it.
                for closing in (ps.aclose(), client.aclose()):
                    try:
                        await asyncio.wait_for(closing, 1.0)
                    except (Exception, asyncio.CancelledError):  # noqa: BLE001
                        pass

    async def run(self) -> None:
        listener = asyncio.get_running_loop().create_task(self.listen())
        idle_since: float | None = None
        try:
            while True:
                now = time.monotonic()
                if self.connections == 0:
                    idle_since = idle_since or now
                    if now - idle_since > LINGER_S:
                        break
                else:
                    idle_since = None
                if self.dirty.is_set():
                    wait = self.last_build + TICK_S - now
                    if wait > 0:
                        await asyncio.sleep(wait)
                        continue
                else:
                    wait = self.last_tick + TICK_S - now
                    if wait > 0:
                        try:
                            await asyncio.wait_for(self.dirty.wait(), wait)
                        except TimeoutError:
                            pass
                        continue
                dirty = self.dirty.is_set()
                self.dirty.clear()
                try:
                    await self.tick(dirty)
                except Exception:  # noqa: BLE001 - log and keep ticking; a bad tick must not end the live view
                    log.exception("live: tick failed")
                    self.need_full_read = True  # the names of this tick's pushes are gone with it
                    self.last_tick = self.last_build = time.monotonic()
        finally:
            listener.cancel()
            await asyncio.wait({listener}, timeout=3.0)
            await self.release()

    async def release(self) -> None:
        def _release() -> None:
            try:
                redis_client().register_script(_RELEASE_LUA)(keys=[LEASE_KEY], args=[self.ident])
            finally:
                connection.close()

        await asyncio.get_running_loop().run_in_executor(self.executor, _release)

    async def shutdown(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.task = None


_current: Broadcaster | None = None


def get() -> Broadcaster:
    """This process's broadcaster (a fresh one per event loop: tests run each in its own loop)."""
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or (_current.loop is not None and _current.loop is not loop):
        _current = Broadcaster()
    return _current


async def shutdown() -> None:
    global _current
    if _current is not None:
        await _current.shutdown()
        _current = None
