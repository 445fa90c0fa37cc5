"""The performance model of one simulated node: continuous batching, as vLLM schedules it.

Requests wait FIFO until the running set has room (at most `max_seqs` sequences, and their tokens must fit the KV
cache). Each engine step prefills the requests admitted at its start (prompt tokens / prefill rate; the first token
comes out of the prefill) and gives every running request past its prefill one token; a step is one forward pass
and costs the decode time at the current batch size (at least that of a batch of one) plus the prefill time, times
the node's slow-down factor and the DVFS factor of a power-capped GPU. When the KV cache overflows, the most recently admitted requests are preempted back to the head
of the queue and recomputed later (vLLM's recompute preemption).

The prefix cache lives in the same KV capacity, as vLLM's automatic prefix caching does: a prompt is cut into
64-character blocks with chained hashes (a block's key covers everything before it); the blocks of running requests
are held by them, and a finished request's blocks stay cached in the free part of the KV cache until running
sequences need that memory, least recently used first. A request is looked up when it is admitted: its leading
cached blocks are not prefilled again (at least one token always is, for the first output token).

Time is model time: `time_scale` model seconds pass per wall second, so tests and benchmarks run faster than
real time while latencies (TTFT, inter-token, end-to-end, queue) are measured in model seconds, exactly as the
model computed them. Counters and histograms are kept in vLLM's terms for the node's `/metrics`.

With a KV-events sink (`kv_events`, set by the node when started with `--kv-events-config`: agents/sim/kv_events.py)
the cache's changes of each step are handed to it as vLLM's events, in the order they happened.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.sim import kv_events as kve
from agents.sim.profiles import Profile

# vLLM's histogram bounds (vllm/v1/metrics/loggers.py), so that percentiles read from the sim look like vLLM's.
TTFT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                                   7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                                  10.0, 20.0, 40.0, 80.0)
LATENCY_BUCKETS: tuple[float, ...] = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                                      60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# Below this much wall time per step, consecutive decode-only steps are run as one sleep (vLLM's multi-step
# scheduling does the same on a real GPU): a fast time scale must not turn into thousands of wake-ups a second.
MIN_STEP_WALL_S = 0.004
# A loop running later than this behind the model's schedule drops the backlog instead of catching it up.
MAX_LAG_S = 0.5
PREFIX_BLOCK_CHARS = 64  # one prefix-cache block, about 16 tokens
PREFIX_BLOCK_TOKENS = PREFIX_BLOCK_CHARS // 4  # what a cached block holds of the KV cache
RECENT_LOOKUPS = 256  # admissions the SGLang-style recent hit rate is over
FINISH_REASONS: tuple[str, ...] = ("stop", "length", "abort", "error")


class Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def cumulative(self) -> list[tuple[float, int]]:
        return list(zip((*self.bounds, math.inf), itertools.accumulate(self.counts), strict=True))


@dataclass(eq=False)
class SimRequest:
    prompt_tokens: int
    target_tokens: int  # how many tokens the answer will have
    finish_reason: str  # why it ends when it reaches target_tokens: "stop" or "length"
    prefix_text: str = ""
    blocks: list[bytes] = field(default_factory=list)  # chained prefix-block keys of the prompt (set on submit)
    held: bool = False  # its blocks are referenced by the cache (it is running)
    stream: asyncio.Queue[int | None] | None = None  # gets the number of new tokens after each step; None at the end
    # Filled in by the engine (model seconds).
    arrival: float = 0.0
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    generated: int = 0
    prefill_tokens: int = 0  # tokens the next prefill computes (prompt minus cached prefix; more after preemption)
    prefilled: bool = False
    outcome: str | None = None  # the finish reason once done, "abort" when cut off
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def queue_time(self) -> float | None:
        return None if self.admitted is None else self.admitted - self.arrival

    @property
    def e2e(self) -> float | None:
        return None if self.finished is None else self.finished - self.arrival


def block_keys(text: str) -> list[bytes]:
    """The prompt's chained block keys: block i's key hashes blocks 0..i, so equal keys mean equal prefixes."""
    if not text:
        return []
    h = hashlib.blake2b(digest_size=16)
    keys = []
    for start in range(0, len(text) - PREFIX_BLOCK_CHARS + 1, PREFIX_BLOCK_CHARS):
        h.update(text[start:start + PREFIX_BLOCK_CHARS].encode())
        keys.append(h.digest())
    return keys


class Engine:
    """One node's scheduler and clock. All methods run on the event loop's thread."""

    def __init__(self, profile: Profile, time_scale: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be above 0, got {time_scale}")
        self.profile = profile
        self.time_scale = time_scale
        self.slow = 1.0  # slow_down factor: multiplies every step's time
        self.prefix_caching = True  # off: every prompt is prefilled whole (a deployment's prefix_caching false)
        # Set by the node to its virtual NVML: the time factor (>= 1) of the power cap at a given utilisation.
        self.dvfs: Callable[[float], float] = lambda util: 1.0
        self._clock = clock
        self.running: list[SimRequest] = []
        self.waiting: deque[SimRequest] = deque()
        # Counters (vLLM names in metrics.py).
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.preemptions_total = 0
        self.finished_total: dict[str, int] = dict.fromkeys(FINISH_REASONS, 0)
        self.prefix_queries_total = 0
        self.prefix_hits_total = 0
        # (queried, hit) tokens of the latest admissions: SGLang's cache_hit_rate gauge is over recent batches.
        self.recent_prefix: deque[tuple[int, int]] = deque(maxlen=RECENT_LOOKUPS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.queue_time = Histogram(LATENCY_BUCKETS)
        # Utilisation integral for the virtual NVML: wall seconds x instantaneous utilisation (0-1).
        self.util_integral = 0.0
        # Wall seconds the loop ran behind the model's schedule beyond MAX_LAG_S (a starved CPU): not zero means
        # the fleet process needs more CPU than it gets, and the model ran slower than its profile says.
        self.lag_dropped_s = 0.0
        self.last_step_util = 0.0
        # Prefix cache: blocks referenced by running requests (refcount), and the unreferenced cached blocks in
        # least-recently-used order, which are what gets evicted when running sequences need the memory.
        self._refs: dict[bytes, int] = {}
        self._lru: OrderedDict[bytes, None] = OrderedDict()
        # Where the cache's changes go as vLLM's KV events (None: nowhere), and those of the step so far.
        self.kv_events: Callable[[list[list[Any]]], None] | None = None
        self._events: list[list[Any]] = []
        self._model = 0.0  # model time at wall time self._wall
        self._wall = clock()
        self._step: tuple[float, float, float] | None = None  # (model start, wall start, model duration)
        self._continuous = False  # the last step ended with work left: the next one follows on its schedule
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- clock -----------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Model time in seconds. Inside a step it runs with the wall clock but stops at the step's end."""
        wall = self._clock()
        if self._step is None:
            return self._model + (wall - self._wall) * self.time_scale
        m0, w0, dur = self._step
        return m0 + min(dur, (wall - w0) * self.time_scale)

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def kv_used(self) -> int:
        return sum(r.prompt_tokens + r.generated for r in self.running)

    @property
    def kv_usage(self) -> float:
        """Fraction of the KV cache held by running sequences, 0-1."""
        return min(1.0, self.kv_used / self.profile.kv_tokens)

    @property
    def prefix_cached_blocks(self) -> int:
        """Blocks in the prefix cache: those of running requests and the evictable ones."""
        return len(self._refs) + len(self._lru)

    def recent_hit_rate(self) -> float:
        """Share of prompt tokens found cached over the latest admissions, 0-1 (0 before any)."""
        queried = sum(q for q, _ in self.recent_prefix)
        return sum(h for _, h in self.recent_prefix) / queried if queried else 0.0

    def occupancy(self) -> float:
        return min(1.0, len(self.running) / self.profile.max_seqs)

    # -- requests --------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-engine")

    async def close(self) -> None:
        self.abort_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, req: SimRequest) -> None:
        req.arrival = self.now()
        req.blocks = block_keys(req.prefix_text)
        req.prefill_tokens = req.prompt_tokens
        self.waiting.append(req)
        self._wake.set()
        self.start()

    def abort(self, req: SimRequest) -> None:
        """Drop a request (its client went away): it frees its slot and KV at once."""
        if req.outcome is not None:
            return
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, "abort", self.now())

    def abort_all(self) -> None:
        for req in [*self.running, *self.waiting]:
            self.abort(req)

    def record_error(self) -> None:
        self.finished_total["error"] += 1

    def _finish(self, req: SimRequest, outcome: str, now: float) -> None:
        self._release(req)
        req.outcome = outcome
        req.finished = now
        self.finished_total[outcome] += 1
        if outcome != "abort":
            self.e2e.observe(now - req.arrival)
        if req.stream is not None:
            req.stream.put_nowait(None)
        if not req.done.done():
            req.done.set_result(None)

    def _lookup(self, req: SimRequest) -> None:
        """On admission: how much of the prompt the prefix cache holds (so is not prefilled), and hold its blocks."""
        if not self.prefix_caching:  # a deployment with prefix caching off prefills every prompt whole
            req.prefill_tokens = max(1, req.prompt_tokens + req.generated)
            return
        hits = 0
        for key in req.blocks:
            if key in self._refs:
                hits += 1
            elif key in self._lru:
                hits += 1
            else:
                break
        self.prefix_queries_total += req.prompt_tokens
        hit = min(req.prompt_tokens - 1, hits * PREFIX_BLOCK_TOKENS) if hits else 0
        self.prefix_hits_total += hit
        self.recent_prefix.append((req.prompt_tokens, hit))
        req.prefill_tokens = max(1, req.prompt_tokens + req.generated - hit)
        # Every block of the prompt is in the cache once this prefill runs; the request holds them while it runs.
        new: list[int] = []  # indexes of the blocks this prefill stores (not cached before)
        for i, key in enumerate(req.blocks):
            if key in self._lru:
                del self._lru[key]
            elif key not in self._refs:
                new.append(i)
            self._refs[key] = self._refs.get(key, 0) + 1
        req.held = True
        if new and self.kv_events is not None:
            self._stored(req, new)

    def _stored(self, req: SimRequest, new: list[int]) -> None:
        """BlockStored events for the blocks at these indexes of the prompt: one per run of consecutive blocks, its
        parent the block before the run (None at the prompt's start), as vLLM reports a request's new full blocks."""
        text, size = req.prefix_text, PREFIX_BLOCK_CHARS
        start = prev = new[0]
        for i in [*new[1:], -1]:
            if i != prev + 1:
                parent = req.blocks[start - 1] if start else None
                self._events.append(kve.block_stored(req.blocks[start:prev + 1], parent,
                                                     text[start * size:(prev + 1) * size], size))
                start = i
            prev = i

    def reset_prefix_cache(self) -> None:
        """Empty the prefix cache (the server restarted, or its cache was reset): AllBlocksCleared. Blocks of
        requests still running stay referenced by them but are no longer shared."""
        self._lru.clear()
        self._refs.clear()
        for req in self.running:
            req.held = False
        if self.kv_events is not None:
            self._events.append(kve.all_blocks_cleared())
            self._flush()

    def _flush(self) -> None:
        if self._events and self.kv_events is not None:
            events, self._events = self._events, []
            self.kv_events(events)

    def _release(self, req: SimRequest) -> None:
        """A request left the running set: its blocks stay cached, evictable, most recently used last."""
        if not req.held:
            return
        req.held = False
        for key in req.blocks:
            n = self._refs.get(key, 0) - 1
            if n > 0:
                self._refs[key] = n
            else:
                self._refs.pop(key, None)
                self._lru[key] = None

    def _evict(self) -> None:
        """Keep the unreferenced cached blocks within the KV memory that running sequences leave free."""
        room = max(0, self.profile.kv_tokens - self.kv_used) // PREFIX_BLOCK_TOKENS
        if len(self._lru) <= room:
            return
        removed = []
        while len(self._lru) > room:
            removed.append(self._lru.popitem(last=False)[0])
        if self.kv_events is not None:
            self._events.append(kve.block_removed(removed))

    # -- the loop --------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            if not self.running and not self.waiting:
                self._continuous = False
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._step_once()

    def _admit(self) -> list[SimRequest]:
        admitted: list[SimRequest] = []
        kv = self.kv_used
        while self.waiting and len(self.running) < self.profile.max_seqs:
            req = self.waiting[0]
            need = req.prompt_tokens + req.generated + 1
            if self.running and kv + need > self.profile.kv_tokens:
                break  # the head of the queue waits for KV to free; FIFO, so nothing overtakes it
            self.waiting.popleft()
            self.running.append(req)
            self._lookup(req)
            kv += need
            admitted.append(req)
        if admitted:
            self._evict()
        self._flush()
        return admitted

    async def _step_once(self) -> None:
        p = self.profile
        wall = self._clock()
        if self._continuous and wall - self._wall < MAX_LAG_S:
            # Back to back with the previous step, on its schedule: a late wake-up (a busy loop) shortens this
            # step's sleep instead of slowing the model down.
            start, wall0 = self._model, self._wall
        else:
            if self._continuous:
                self.lag_dropped_s += wall - self._wall  # the loop fell too far behind: that time is lost
            start, wall0 = self.now(), wall
        admitted = self._admit()
        for req in admitted:
            if req.admitted is None:
                req.admitted = start
                self.queue_time.observe(start - req.arrival)
        decoding = [r for r in self.running if r.prefilled]
        util = 0.3 + 0.7 * self.occupancy() if self.running else 0.0
        factor = self.slow * max(1.0, self.dvfs(util))
        # A step is one forward pass: the decode time of the batch (at least that of a batch of one, which a
        # pure prefill pays too) plus the prefill of the admitted prompts.
        prefill_s = sum(r.prefill_tokens for r in admitted) / p.prefill_tps
        decode_s = p.decode_step_s(len(decoding)) if decoding else (p.decode_s if admitted else 0.0)
        steps = 1
        if not admitted and decoding:
            wall_per_step = decode_s * factor / self.time_scale
            if wall_per_step < MIN_STEP_WALL_S:
                left = min(r.target_tokens - r.generated for r in decoding)
                steps = max(1, min(left, math.ceil(MIN_STEP_WALL_S / max(wall_per_step, 1e-9))))
        duration = (prefill_s + decode_s * steps) * factor
        self._step = (start, wall0, duration)
        try:
            await asyncio.sleep(max(0.0, wall0 + duration / self.time_scale - self._clock()))
        finally:
            self._model = start + duration
            self._wall = wall0 + duration / self.time_scale
            self._step = None
            self._continuous = True
        self.util_integral += duration / self.time_scale * util
        self.last_step_util = util
        now = self._model
        emitted = 0
        if decoding:
            self.itl.observe(duration / steps, len(decoding) * steps)
        for req in decoding:
            if req.outcome is not None:  # aborted during the step
                continue
            n = min(steps, req.target_tokens - req.generated)
            req.generated += n
            emitted += n
            if req.stream is not None:
                req.stream.put_nowait(n)
        for req in admitted:
            if req.outcome is not None:
                continue
            self.prompt_tokens_total += req.prefill_tokens
            req.prefilled = True
            req.generated += 1
            emitted += 1
            if req.first_token is None:
                req.first_token = now
                self.ttft.observe(now - req.arrival)
            if req.stream is not None:
                req.stream.put_nowait(1)
        self.generation_tokens_total += emitted
        still: list[SimRequest] = []
        for req in self.running:
            if req.outcome is not None:
                continue
            if req.generated >= req.target_tokens:
                self._finish(req, req.finish_reason, now)
            else:
                still.append(req)
        self.running = still
        self._preempt()
        self._evict()
        self._flush()

    def _preempt(self) -> None:
        while len(self.running) > 1 and self.kv_used > self.profile.kv_tokens:
            victim = self.running.pop()  # the most recently admitted goes back first
            victim.prefilled = False
            self._release(victim)
            victim.prefill_tokens = victim.prompt_tokens + victim.generated  # recomputed (less what stays cached)
            self.waiting.appendleft(victim)
            self.preemptions_total += 1
