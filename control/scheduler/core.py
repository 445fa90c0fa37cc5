"""The scheduler core: filters, scorers, burst correction and the picker. Pure Python, no I/O, no Django.

Why it is built this way (docs/gateway.md has the long version):

* Node metrics arrive every few seconds, requests hundreds of times a second. So each node's metric-based score
  (`static`) is computed only when its sample, its state or the policy changes, and a request only reads it.
* Between two samples every request would see the same "best" node and a burst would herd onto it. So the core
  counts what it sent: `unseen` = requests sent to the node after its current sample was taken and not finished
  yet. Each unseen request costs `Config.burst_cost` (burst_correction x the score's span / node capacity), so the
  correction works whatever the weights are, the classic ones (which have no load term) included; it stops at
  node capacity unseen requests (the whole span), since a sample can show no more than a full node. The optional
  `in_flight` scorer adds the gateway's own in-flight count relative to capacity with the operator's weight.
* The best node is the top of a heap per model, keyed by the score rounded down to `tie_epsilon` buckets plus a
  random draw (random tie-break inside the best bucket). A send or finish re-pushes that one node (O(log n));
  entries left behind are recognised by their version and dropped lazily. A decision is O(1) amortised.
* The baseline pickers (`picker.strategy`) reuse the same filters: `least_in_flight` keys the same heap by the
  gateway's in-flight count instead of the score; `round_robin` walks a cursor over the group's members and skips
  the ones that may not take a request. Neither reads the score. The `highest` path is left as it was (its entry
  builder is chosen once per policy, not tested per request).
* `expected_wait` (speed-aware): each node's seconds per request slot, measured by the gateway itself with Little's
  law (latency / mean in-flight over the request's life, an EWMA per node, updated when a request succeeds), times
  (in-flight + 1): the time a new request should take there, never less than the latency the node's recent
  requests had (a batching engine's request takes about as long alone as among a few others; the serial part alone
  called an idle slow node fast). Nodes without observations use the fleet median. It is
  normalised as E / (E + scale), scale = the fleet median seconds per slot (over the healthy nodes, taken at the
  last refresh) x load.node_capacity: x is 0.5 when the node's expected wait is that of a typical node full to
  capacity, small on an idle fleet (where the other weights decide), and it grows with load. A send or finish
  still re-pushes only that node; when the scale moves by more than SCALE_SLACK, the heaps are rebuilt (entries
  only, no re-score).
* `prefix_affinity` (cache-aware routing): the gateway's approximate index of what it sent where (prefix_index.py)
  gives, per request, the few nodes holding the prompt's leading blocks. Only those can score higher than the heap
  top, so the pick compares the heap top with them (affinity = weight x matched share of the prompt's blocks, added
  to the same score as everything else: a busy node's expected_wait and burst terms outweigh it, so a hot prefix
  spreads instead of herding). A request without a match takes the heap top unchanged. The `cache_aware` picker
  is SGLang's router policy as a baseline (pickers.py).
* `expected_ttft` (streamed requests only): a streamed answer's user waits for its first token, a non-streamed
  one's for the whole answer, so a streamed request is also scored by the time to first token its node's streamed
  requests recently had (measured by the gateway, an EWMA per node; the fleet median for a node not measured),
  normalised as T / (T + fleet median T). Each group keeps a second heap keyed by the score plus this term, used
  by streamed picks only: the streamed requests go to the nodes that start answering soonest and the non-streamed
  ones (scored as before) fill what they leave, so a slow-prefill node still carries its share of the load but
  not the streamed tail (issue 14: the fleet's TTFT p95 was set by the few streamed requests on the l40s). A node
  no streamed request measured for a minute drifts toward the fleet median, so one it steered away is tried again.
  Once prompt lengths are known (the gateway's estimate, length.py), T also counts what a node was just sent: its
  prompt tokens not yet prefilled (a backlog worked off at the node's prefill rate, learned from its streams as the
  tokens a first token waited for over its TTFT), plus a mean prompt, over that rate. A recent TTFT does not show
  the prefills a burst just queued on a node.
* `slo` (a latency target the operator sets; none by default): a node where a new request's slow case, its expected
  wait x the node's tail factor (how far past their expected wait its slow requests end, learned per node as mean
  + TAIL_DEVS mean deviations of realised / expected latency; 1 / slo.margin until measured), is past
  slo.latency_s scores as a miss (-SLO_MISS), so requests go where they still make the SLO. When even the best
  node is past it, a non-streamed request that asked for a longer answer than the fleet's mean (max_tokens) takes
  the best node anyway (long answers are the ones that miss, and only there might it make it), and any other goes
  to the node with the fewest requests in flight (a third heap, keyed like least_in_flight's): a short answer can
  still make the SLO on a slower, less loaded node, and it leaves the fast nodes to the long ones. A long answer
  is judged by its own slow case too: the node's tail factor over its long answers only; within the SLO it skips
  the score's pick for the best node where that makes the SLO (_long_fit), and past it that node is its best.
  A streamed long answer does the same within the stream heap's ranking: its first token picks the node, but its
  whole answer is what the SLO counts.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from control.scheduler import pickers
from control.scheduler.config import Config
from control.scheduler.prefix_index import Keys, PrefixIndex

NEUTRAL = 0.5  # a metric the node does not report (null) scores in the middle: neither favoured nor punished
TTFT_ALPHA = 0.2  # weight of the newest observation in the gateway's own TTFT average per node
STREAM_TTFT_ALPHA = 0.2  # expected_ttft: weight of the newest streamed request's TTFT in its node's average
# expected_ttft: a node that no streamed request has measured for this long drifts toward the fleet median with this
# time constant, so that a node the term steered away from (its last figure stays its figure) is tried again and a
# node that got faster is noticed. Longer than a bench run: within one, a slow node's figure holds.
STREAM_TTFT_STALE_S = 60.0
STREAM_TTFT_DECAY_S = 120.0
PROMPT_ALPHA = 0.05  # expected_ttft: weight of the newest request in the fleet's mean prompt length (tokens)
SLOT_ALPHA = 0.1  # weight of the newest observation in a node's seconds-per-slot average (expected_wait)
SCALE_SLACK = 0.25  # expected_wait: rebuild the heaps when the fleet scale moved by more than this share
DYNAMIC = ("in_flight", "expected_wait", "prefix_affinity", "expected_ttft")  # scorers computed per request, not from the sample
AFFINITY_ALPHA = 0.1  # weight of the newest pick in a node's average affinity term (the routing page shows it)
# slo: what a node whose expected wait is past the SLO limit loses, more than every other term together can give,
# so that any node within the limit ranks above it.
SLO_MISS = 100.0
# slo: a node's tail factor is the mean of realised / expected latency plus this many mean deviations (about the
# 90th-95th percentile for the answer-length mixes of bench/routing.py), learned with this EWMA weight.
TAIL_DEVS = 2.0
TAIL_ALPHA = 0.1
LONG_FIT_SCAN = 15  # slo: nodes _long_fit looks at (a small group's members, else the heap's top four levels)
ANSWER_ALPHA = 0.05  # slo: weight of the newest request in the fleet's mean answer length asked for (max_tokens)
ANY_MODEL = "*"  # the one group when the policy does not require nodes to serve the requested model


def _tail_step(mean: float, dev: float, tail: float, ratio: float) -> tuple[float, float, float]:
    """slo: a tail estimate (mean and mean deviation of realised / expected latency, and the tail factor mean +
    TAIL_DEVS deviations, at least 1; tail 0: nothing measured yet) after one more ratio. The first ratio sets the
    mean and half of it the deviation, as TCP's first round-trip estimate does."""
    if tail == 0.0:
        mean, dev = ratio, ratio / 2
    else:
        dev += TAIL_ALPHA * (abs(ratio - mean) - dev)
        mean += TAIL_ALPHA * (ratio - mean)
    tail = mean + TAIL_DEVS * dev
    return mean, dev, tail if tail > 1.0 else 1.0


@dataclass(frozen=True)
class NodeSpec:
    """What the registry (PostgreSQL) says about a node."""

    name: str
    pool: str
    state: str
    endpoint: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class Metrics:
    """What the scheduler reads from a node's latest sample (Redis `sy:latest`)."""

    ts: float  # when the sample was taken, unix seconds (never later than when the server received it)
    seq: int
    gpu_util_pct: float | None  # mean over the node's GPUs
    cpu_util_pct: float | None
    net_rtt_ms: float | None
    ttft_p50_s: float | None
    running: int | None
    waiting: int | None
    kv_cache_pct: float | None
    models: tuple[str, ...] = ()
    endpoint: str = ""
    max_model_len: int | None = None  # advertised in the sample's `serving` block (control/scheduler/length.py)


def _unix(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _num(section: Any, name: str) -> float | None:
    value = section.get(name) if isinstance(section, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def metrics_from_snapshot(snap: dict[str, Any]) -> Metrics | None:
    """A `sy:latest` value (dashboard.fleet.ingest.snapshot) -> Metrics; None when it has no usable timestamp."""
    ts, received = _unix(snap.get("ts")), _unix(snap.get("received"))
    if ts is None:
        return None
    if received is not None:
        ts = min(ts, received)  # an agent clock running ahead must not make unseen requests look seen
    host, inf = snap.get("host") or {}, snap.get("inference") or {}
    utils = [u for g in snap.get("gpus") or [] if (u := _num(g, "gpu_util_pct")) is not None]
    running, waiting = _num(inf, "requests_running"), _num(inf, "requests_waiting")
    models = snap.get("models") or ()
    return Metrics(
        ts=ts, seq=int(snap.get("seq") or 0), gpu_util_pct=sum(utils) / len(utils) if utils else None,
        cpu_util_pct=_num(host, "cpu_util_pct"), net_rtt_ms=_num(host, "net_rtt_ms"),
        ttft_p50_s=_num(inf, "ttft_p50_s"), running=None if running is None else int(running),
        waiting=None if waiting is None else int(waiting), kv_cache_pct=_num(inf, "kv_cache_usage_pct"),
        models=tuple(m for m in models if isinstance(m, str)), endpoint=str(snap.get("endpoint") or ""),
        max_model_len=_max_len(snap.get("serving")),
    )


def _max_len(serving: Any) -> int | None:
    value = serving.get("max_model_len") if isinstance(serving, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


class Node:
    """One node's scheduling state: registry facts, latest metrics, precomputed score and live counters."""

    __slots__ = ("spec", "metrics", "order", "healthy", "reason", "static", "parts", "room", "in_flight_ts",
                 "unseen", "failures", "quarantined_until", "ttft_ewma", "version", "groups", "latency_ms",
                 "slot_s", "latency_s", "area", "area_t", "sent_area", "affinity", "base", "stream_ttft_s",
                 "sbase", "stream_ttft_at", "sent_e", "tail_mean", "tail_dev", "slo_tail", "sent_long", "long_mean",
                 "long_dev", "long_tail", "prefill_tps", "backlog", "backlog_t", "sent_work")

    def __init__(self, spec: NodeSpec, order: int) -> None:
        self.spec = spec
        self.metrics: Metrics | None = None
        self.order = order
        self.healthy = False
        self.reason = "no sample yet"
        self.static = 0.0
        self.parts: dict[str, float] = {}
        self.room = 0  # unseen requests it can still take before it counts as saturated
        self.in_flight_ts: dict[int, float] = {}  # request id -> when it was sent
        self.unseen = 0
        self.failures = 0  # consecutive
        self.quarantined_until: float | None = None
        self.ttft_ewma: float | None = None  # seconds, the gateway's own observation
        self.version = 0
        self.groups: list[Group] = []
        self.latency_ms: float | None = None
        # expected_wait: seconds per request slot (EWMA), and the integral of in-flight over time that gives each
        # finished request the mean concurrency it ran at (Little's law).
        self.slot_s: float | None = None
        # expected_wait's floor: the latency the node's recent successful requests had (EWMA, seconds).
        self.latency_s: float | None = None
        self.area = 0.0  # integral of in_flight dt up to area_t
        self.area_t = 0.0
        self.sent_area: dict[int, float] = {}  # request id -> area when it was sent
        self.affinity = 0.0  # mean prefix_affinity term of the requests sent here (EWMA), for the routing page
        # base_score as of the node's live heap entry (set by _entry): every change to what it depends on relists the
        # node, so the affinity picker reads it instead of re-scoring each prefix holder per request.
        self.base = 0.0
        # expected_ttft: the TTFT the node's streamed requests had (EWMA, seconds; only streamed requests: a
        # non-streamed answer's first byte is its whole answer), and the score its stream-heap entry was made with.
        self.stream_ttft_s: float | None = None
        self.sbase = 0.0
        # when stream_ttft_s was last measured or moved toward the fleet median (tick)
        self.stream_ttft_at = 0.0
        # slo: the expected wait each request in flight had when it was sent, and the mean and mean deviation
        # (EWMAs) of realised latency / that expected wait over its successful requests; slo_tail = mean + TAIL_DEVS
        # x deviation, how far past the expectation its slow requests end (0: not measured yet).
        self.sent_e: dict[int, float] = {}
        self.tail_mean = 0.0
        self.tail_dev = 0.0
        self.slo_tail = 0.0
        # slo: the same over the node's long answers only (asked for more than the fleet's mean max_tokens;
        # sent_long: those in flight). A slow node's long answers are the ones a prefill arriving mid-answer stalls
        # longest (an l40s prefills a 7,800-token prompt in 2 s), so their tail is the node's heaviest.
        self.sent_long: set[int] = set()
        self.long_mean = 0.0
        self.long_dev = 0.0
        self.long_tail = 0.0
        # expected_ttft: the prompt tokens sent here and (by the model below) not prefilled yet as of backlog_t, the
        # rate the node works them off (prompt tokens per second, EWMA, learned from its streamed requests' TTFT:
        # the tokens queued ahead of one plus its own, over its TTFT; 0: not measured), and per request in flight
        # those tokens as of its send.
        self.backlog = 0.0
        self.backlog_t = 0.0
        self.prefill_tps = 0.0
        self.sent_work: dict[int, float] = {}

    def advance(self, now: float) -> None:
        if now > self.area_t:
            self.area += len(self.in_flight_ts) * (now - self.area_t)
            self.area_t = now

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_flight(self) -> int:
        return len(self.in_flight_ts)

    @property
    def listed(self) -> bool:
        """May receive a request now: healthy, not quarantined, room left."""
        return self.healthy and self.quarantined_until is None and self.unseen < self.room


class Group:
    """The nodes that serve one model, as a heap of (-score bucket, tie-break, seq, version, node)."""

    __slots__ = ("model", "members", "heap", "cursor", "sheap", "fheap")

    def __init__(self, model: str) -> None:
        self.model = model
        self.members: list[Node] = []
        self.heap: list[tuple[float, float, int, int, Node]] = []
        # expected_ttft: the same nodes keyed by the score plus the expected_ttft term, for streamed requests only
        # (empty when the policy has no expected_ttft scorer).
        self.sheap: list[tuple[float, float, int, int, Node]] = []
        self.cursor = 0  # round_robin: index in members where the next walk starts
        # slo: the same nodes keyed by the gateway's in-flight count (as least_in_flight), where a request goes when
        # its best node cannot finish it within the SLO (empty without an SLO).
        self.fheap: list[tuple[float, float, int, int, Node]] = []


@dataclass
class Pick:
    """The outcome of one decision: a node, or why there is none."""

    node: Node | None
    verdict: str  # "ok" | "saturated" (healthy nodes, none with room) | "unavailable" | "unknown_model"

    @property
    def ok(self) -> bool:
        return self.node is not None


@dataclass
class Counters:
    quarantines: int = 0
    decisions: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Scheduler:
    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.nodes: dict[str, Node] = {}
        self.groups: dict[str, Group] = {}
        self.counters = Counters()
        self._seq = 0
        self._answer_mean = 0.0  # slo: the mean answer length (max_tokens) of the requests that gave one (EWMA)
        self._fleet_latency: tuple[float, float] = (0.0, 0.0)
        self._slot_default = 1.0  # expected_wait: seconds per slot of a node without observations (fleet median)
        self._wait_scale = float(config.node_capacity)  # expected_wait: E / (E + scale); median slot x capacity
        self._ttft_default = 0.0  # expected_ttft: fleet median of the nodes' streamed TTFT (0: none measured yet)
        self._tps_default = 0.0  # expected_ttft: fleet median prefill rate, tokens/s (0: none measured yet)
        # expected_ttft's prior for a node whose prefill rate is not measured: the fleet median of rate x latency_s
        # (a node whose requests take twice as long is taken to prefill at half the rate). 0: none measured yet.
        self._tps_k = 0.0
        self._prompt_mean = 0.0  # expected_ttft: the mean prompt length sent (estimated tokens, EWMA)
        self._now = 0.0  # the latest clock reading given (sent, finished, update, tick): heap entries age the backlog
        self.prefix = PrefixIndex(config.prefix_index_blocks)
        # Precise mode: the nodes whose index their own KV events keep (kv_events.py); the others' by what was sent.
        self.event_fed: set[str] = set()
        self.last_affinity = 0.0  # the affinity term of the latest pick (0: none), recorded by sent()
        self.last_long = False  # slo: the latest pick was for a long answer (sent() records it for the long tail)
        self._use_strategy(config)

    def _use_strategy(self, config: Config) -> None:
        """Choose the heap entry builder and the pick path once per policy, so the hot path does not branch on it."""
        self._round_robin = config.strategy == "round_robin"
        self._cache_aware = config.strategy == "cache_aware"
        self._affinity = config.strategy == "highest" and "prefix_affinity" in config.weights
        self._kv_events = config.prefix_source == "kv_events"
        self._ttft = config.strategy == "highest" and "expected_ttft" in config.weights
        self._slo = config.strategy == "highest" and config.slo_s > 0
        self._slo_s = config.slo_s
        self._slo_first_tail = 1.0 / config.slo_margin  # a node's tail factor until its own is measured
        self._make_entry = self._entry_least if config.strategy in ("least_in_flight", "cache_aware") else self._entry
        if self.prefix.capacity != config.prefix_index_blocks:
            self.prefix.resize(config.prefix_index_blocks)

    # --- inputs that change rarely: registry, samples, policy -------------------------------------------------
    def update(self, now: float, specs: Iterable[NodeSpec] | None = None,
               samples: dict[str, Metrics] | None = None, config: Config | None = None) -> None:
        """Apply a new registry / new samples / a new policy. Only the nodes that changed are re-scored; a new
        policy, a change of who serves what, or fleet-normalised latency re-scores everything."""
        self._now = now
        if config is not None:
            self.config = config
            self._use_strategy(config)
        regroup = config is not None
        changed: list[Node] = []
        if specs is not None:
            specs = list(specs)
            wanted = {s.name for s in specs}
            for name in [n for n in self.nodes if n not in wanted]:
                gone = self.nodes.pop(name)
                gone.version += 1  # its heap entries die with it
                gone.groups = []  # and requests still in flight to it re-list it nowhere when they finish
                self.prefix.forget(name)  # its instance, and the cache with it, are gone
                regroup = True
            for spec in sorted(specs, key=lambda s: s.name):
                node = self.nodes.get(spec.name)
                if node is None:
                    self.nodes[spec.name] = Node(spec, len(self.nodes))
                    regroup = True
                elif node.spec != spec:
                    regroup = regroup or node.spec.models != spec.models
                    node.spec = spec
                    changed.append(node)
        if samples is not None:
            for name, m in samples.items():
                node = self.nodes.get(name)
                if node is None or m is None:
                    continue
                if node.metrics is None or (m.ts, m.seq) != (node.metrics.ts, node.metrics.seq):
                    node.metrics = m
                    # The new sample saw every request sent before it was taken: only later ones stay unseen.
                    node.unseen = sum(1 for t in node.in_flight_ts.values() if t > m.ts)
                    changed.append(node)
                    if not node.spec.models and m.models:
                        regroup = True
        if regroup:
            self._regroup()
        if regroup or self.config.latency_normalise == "fleet":
            self.recompute(now)
            return
        for node in changed:
            self._score(node, now)
            self._relist(node)
        rebuild = "expected_wait" in self.config.weights and self._fleet_wait()
        if self._ttft and self._fleet_ttft():
            rebuild = True
        if rebuild and self.config.strategy == "highest":
            self._rebuild()

    def _models_of(self, node: Node) -> tuple[str, ...]:
        if not self.config.require_model:
            return (ANY_MODEL,)
        return node.spec.models or (node.metrics.models if node.metrics else ())

    def _regroup(self) -> None:
        self.groups = {}
        for node in self.nodes.values():
            node.groups = []
            for model in self._models_of(node):
                group = self.groups.get(model)
                if group is None:
                    group = self.groups[model] = Group(model)
                group.members.append(node)
                node.groups.append(group)

    def recompute(self, now: float) -> None:
        """Every node's filters and static score, then fresh heaps."""
        cfg = self.config
        if cfg.latency_normalise == "fleet":
            # Over the nodes that may take work only: a stale or failed node (an earlier run's, one that went away)
            # must not set the fleet's range.
            values = [v for n in self.nodes.values()
                      if self._health(n, now)[0] and (v := self._latency_ms(n)) is not None]
            self._fleet_latency = (min(values), max(values)) if values else (0.0, 0.0)
        for node in self.nodes.values():
            self._score(node, now)
        if "expected_wait" in cfg.weights:
            self._fleet_wait(force=True)
        if self._ttft:
            self._fleet_ttft(force=True)
        self._rebuild()

    def _fleet_wait(self, force: bool = False) -> bool:
        """Refresh expected_wait's fleet figures (median seconds per slot, normalising scale) over the healthy
        nodes; True when the scale moved enough that the heaps should be rebuilt."""
        slots = sorted(n.slot_s for n in self.nodes.values() if n.healthy and n.slot_s is not None)
        if slots:
            self._slot_default = slots[len(slots) // 2]
        scale = max(1e-9, self._slot_default * self.config.node_capacity)
        moved = force or abs(scale - self._wait_scale) > SCALE_SLACK * self._wait_scale
        if moved:
            self._wait_scale = scale
        return moved

    def _fleet_ttft(self, force: bool = False) -> bool:
        """Refresh expected_ttft's fleet median (its default and its normalising scale) over the healthy nodes;
        True when it moved enough that the stream heaps should be rebuilt."""
        rates = sorted(n.prefill_tps for n in self.nodes.values() if n.healthy and n.prefill_tps > 0)
        if rates:
            self._tps_default = rates[len(rates) // 2]
            ks = sorted(n.prefill_tps * n.latency_s for n in self.nodes.values()
                        if n.healthy and n.prefill_tps > 0 and n.latency_s)
            if ks:
                self._tps_k = ks[len(ks) // 2]
        ttfts = sorted(n.stream_ttft_s for n in self.nodes.values() if n.healthy and n.stream_ttft_s is not None)
        if not ttfts:
            return False
        median = ttfts[len(ttfts) // 2]
        old = self._ttft_default
        moved = force or old <= 0 or abs(median - old) > SCALE_SLACK * old
        if moved:
            self._ttft_default = median
        return moved

    def _rebuild(self) -> None:
        for group in self.groups.values():
            group.heap = []
            group.sheap = []
            group.fheap = []
            for node in group.members:
                if node.listed:
                    group.heap.append(self._make_entry(node))
                    if self._ttft:
                        group.sheap.append(self._entry_stream(node))
                    if self._slo:
                        group.fheap.append(self._entry_least(node))
            heapq.heapify(group.heap)
            heapq.heapify(group.sheap)
            heapq.heapify(group.fheap)

    def tick(self, now: float) -> None:
        """Time-driven changes between updates: quarantines that ended (half-open), samples that went stale."""
        self._now = now
        for node in self.nodes.values():
            ended = node.quarantined_until is not None and node.quarantined_until <= now
            stale = node.healthy and node.metrics is not None and now - node.metrics.ts > self.config.max_stale_s
            if ended:
                node.quarantined_until = None  # failures stay at the threshold: one more failure re-quarantines
            if ended or stale:
                self._score(node, now)
                self._relist(node)
        if self._ttft and self._ttft_default > 0:
            self._drift_ttft(now)

    def _drift_ttft(self, now: float) -> None:
        """expected_ttft: a node whose streamed TTFT nobody measured for STREAM_TTFT_STALE_S moves toward the fleet
        median (time constant STREAM_TTFT_DECAY_S). Without it a node the term steered streams away from kept its
        last figure for good, however much faster it became."""
        median, tps = self._ttft_default, self._tps_default
        for node in self.nodes.values():
            t = node.stream_ttft_s
            if t is None or t == median or not node.healthy:
                continue
            step = now - node.stream_ttft_at - STREAM_TTFT_STALE_S  # the time past the threshold not yet applied
            if step <= 0:
                continue
            keep = math.exp(-step / STREAM_TTFT_DECAY_S)
            node.stream_ttft_s = median + (t - median) * keep
            if node.prefill_tps > 0 and tps > 0:
                node.prefill_tps = tps + (node.prefill_tps - tps) * keep
            node.stream_ttft_at = now - STREAM_TTFT_STALE_S  # so that the next step covers only the time after now
            self._relist(node)

    # --- scoring ----------------------------------------------------------------------------------------------
    def _latency_ms(self, node: Node) -> float | None:
        m, source = node.metrics, self.config.latency_source
        rtt = m.net_rtt_ms if m else None
        ttft = node.ttft_ewma * 1000 if node.ttft_ewma is not None else (
            m.ttft_p50_s * 1000 if m and m.ttft_p50_s is not None else None)
        if source == "rtt":
            return rtt
        if source == "ttft":
            return ttft
        both = [v for v in (rtt, ttft) if v is not None]
        return max(both) if both else None

    def expected_wait(self, node: Node) -> float:
        """Seconds a new request should take on the node: seconds per slot x (in flight + 1) (Little's law), and
        never less than the latency its recent requests had. The serial part alone says a node with fewer requests
        in flight than its requests ran at is that much faster than they were, which a batching engine is not
        (below its batch limit a request takes about as long with 2 others as with 10): it sent idle slow nodes
        requests that then took their whole unloaded latency (l40s: expected 4.0 s, realised 4.9 s at half
        load), and those made the fleet's p95 latency and TTFT. Past the concurrency the node was measured at,
        the serial part is the larger and decides, as before."""
        slot = node.slot_s if node.slot_s is not None else self._slot_default
        serial = slot * (len(node.in_flight_ts) + 1)
        floor = node.latency_s
        return serial if floor is None or floor < serial else floor

    def expected_ttft(self, node: Node) -> float | None:
        """Seconds to the first token a streamed request should have on the node: the prompt tokens queued there
        (the backlog, worked off at the node's prefill rate since backlog_t) plus a mean prompt, over that rate;
        a node whose rate is not measured yet counts at a prior (_rate), and one nothing has measured at all as the
        slowest start (inf: no stream goes there while a measured node will take it). Before any rate is measured (or
        without prompt lengths): what its streamed requests recently had, the fleet median for a node not measured
        yet; None while no node has been measured.

        Why the backlog: the streamed requests' recent TTFT says how soon a node answered, not what it was sent
        since. During a burst, streams went to a100s that had just been sent 7,800-token prompts and waited 2.6-5.1 s
        behind those prefills, while the a100s' recent TTFT still said 1.2 s (issue 14, long prompts at 95 %: the
        default's TTFT p95 1.28 x least-in-flight's).

        Why never less than the streams' recent TTFT (the floor expected_wait has too): the backlog holds prompt
        tokens only, so a node slowed by anything else (bigger decode batches, a busy HTTP front) still looked the
        soonest start while its learned rate lagged. Short prompts at 110 %: the default sent 81 % of its streams
        to the h100s, whose requests slowed from 2.4 to 6.9 s, and its TTFT p95 was 1.86 x least-in-flight's."""
        if self._tps_default > 0 and self._prompt_mean > 0:
            tps = self._rate(node)
            if tps <= 0:  # nothing measured it yet: plain requests do (streams start soonest elsewhere)
                return math.inf
            left = node.backlog - tps * (self._now - node.backlog_t)
            t = ((left if left > 0 else 0.0) + self._prompt_mean) / tps
            floor = node.stream_ttft_s
            return t if floor is None or floor < t else floor
        if node.stream_ttft_s is not None:
            return node.stream_ttft_s
        return self._ttft_default or None

    def _rate(self, node: Node) -> float:
        """expected_ttft: the node's prefill rate (prompt tokens/s; 0: not known). Until its streams measure it, a
        prior: the fleet's rate x latency product over the node's recent latency (what its plain requests had); 0
        while it has none. Not the fleet median: an unmeasured node with nothing queued then looked the soonest
        start of all, and a fresh gateway sent its first streams to the idle l40s (issue 14, long prompts: 2-5 per
        run in the first 11 s, the slowest streams of the run)."""
        if node.prefill_tps:
            return node.prefill_tps
        if node.latency_s and self._tps_k:
            return self._tps_k / node.latency_s
        return 0.0

    def _ttft_part(self, node: Node) -> float:
        """expected_ttft's term: T / (T + fleet median T), 0.5 for a typical node (and for every node while none is
        measured, so it then changes nothing)."""
        weight, invert = self.config.weights["expected_ttft"]
        t = self.expected_ttft(node)
        x = NEUTRAL if t is None or self._ttft_default <= 0 else 1.0 if t == math.inf else t / (t + self._ttft_default)
        return weight * ((1.0 - x) if invert else x)

    def _wait_part(self, node: Node) -> float:
        weight, invert = self.config.weights["expected_wait"]
        e = self.expected_wait(node)
        x = e / (e + self._wait_scale)
        return weight * ((1.0 - x) if invert else x)

    def normalised(self, node: Node) -> dict[str, float]:
        """Each scorer metric of the node in [0, 1] (before weights and inversion)."""
        cfg, m = self.config, node.metrics
        if m is None:
            return {k: NEUTRAL for k in ("gpu_free", "cpu_load", "latency", "queue_depth", "kv_cache")}

        def pct(v: float | None) -> float:
            return NEUTRAL if v is None else min(1.0, max(0.0, v / 100.0))

        lat = self._latency_ms(node)
        if lat is None:
            latency = NEUTRAL
        elif cfg.latency_normalise == "fixed":
            latency = min(1.0, lat / cfg.latency_scale_ms)
        else:
            lo, hi = self._fleet_latency
            latency = (lat - lo) / (hi - lo) if hi > lo else 0.0
        if m.waiting is None:
            queue = NEUTRAL
        else:
            queue = min(1.0, m.waiting / cfg.max_queue_depth) if cfg.max_queue_depth else float(m.waiting > 0)
        return {
            "gpu_free": NEUTRAL if m.gpu_util_pct is None else 1.0 - pct(m.gpu_util_pct),
            "cpu_load": pct(m.cpu_util_pct),
            "latency": latency,
            "queue_depth": queue,
            "kv_cache": pct(m.kv_cache_pct),
        }

    def _score(self, node: Node, now: float) -> None:
        cfg, m = self.config, node.metrics
        node.latency_ms = self._latency_ms(node)
        values = self.normalised(node)
        parts = {}
        for metric, (weight, invert) in cfg.weights.items():
            if metric in DYNAMIC:
                continue
            x = values[metric]
            parts[metric] = weight * ((1.0 - x) if invert else x)
        node.parts = parts
        node.static = sum(parts.values())
        was_healthy = node.healthy
        node.healthy, node.reason = self._health(node, now)
        if was_healthy and not node.healthy:
            self.prefix.forget(node.name)  # failed, stale, removed: a node that comes back starts with a cold cache
        node.room = 0
        if node.healthy and m is not None:
            free_slots = max(0, cfg.node_capacity - (m.running or 0))
            node.room = max(0, cfg.max_queue_depth - (m.waiting or 0)) + free_slots
            if m.kv_cache_pct is not None and m.kv_cache_pct >= cfg.max_kv_cache_pct:
                node.room = 0
            if m.gpu_util_pct is not None and m.gpu_util_pct > cfg.max_gpu_util_pct:
                node.room = 0

    def _health(self, node: Node, now: float) -> tuple[bool, str]:
        """(healthy, why not): registry state, endpoint, a fresh sample with inference metrics."""
        cfg, m = self.config, node.metrics
        # A removed node never takes work, whatever the policy's filters say: its instance is gone.
        if node.spec.state in cfg.exclude_states or node.spec.state == "removed":
            return False, node.spec.state
        if not node.spec.endpoint and not (m and m.endpoint):
            return False, "no endpoint"
        if m is None:
            return False, "no sample yet"
        if now - m.ts > cfg.max_stale_s:
            return False, f"stale: last sample {now - m.ts:.0f} s ago"
        if cfg.require_inference_up and m.running is None:
            return False, "failed: inference server not reporting"
        return True, ""

    def filter_reason(self, node: Node, now: float) -> str:
        """'' when the node may take a request now, else why not (in words, for the routing page)."""
        if not node.healthy:
            return node.reason
        if node.quarantined_until is not None:
            return f"quarantined for {max(0.0, node.quarantined_until - now):.0f} s"
        if node.unseen >= node.room:
            m, cfg = node.metrics, self.config
            if m and m.kv_cache_pct is not None and m.kv_cache_pct >= cfg.max_kv_cache_pct:
                return "saturated: kv cache"
            if m and m.gpu_util_pct is not None and m.gpu_util_pct > cfg.max_gpu_util_pct:
                return "saturated: gpu util"
            return "saturated: queue"
        return ""

    def dynamic(self, node: Node) -> dict[str, float]:
        """The request-driven part of the score: in_flight scorer and burst correction."""
        cfg = self.config
        out = {"burst": self.burst(node)}
        if "in_flight" in cfg.weights:
            weight, invert = cfg.weights["in_flight"]
            x = min(1.0, node.in_flight / cfg.node_capacity)
            out["in_flight"] = weight * ((1.0 - x) if invert else x)
        if "expected_wait" in cfg.weights:
            out["expected_wait"] = self._wait_part(node)
        if self._slo:
            out["slo"] = self._slo_part(node)
        if "prefix_affinity" in cfg.weights:
            out["prefix_affinity"] = node.affinity  # the mean over recent picks: affinity depends on the prompt
        # expected_ttft is left out: it counts for streamed requests only (the state key shows stream_ttft_s).
        return out

    def burst(self, node: Node) -> float:
        """The burst correction: what the requests sent since the node's sample take off its score, at most the
        score's whole span (`burst_correction` x span, reached at `node_capacity` unseen requests). It stands in
        for what the sample cannot show yet, and a sample can show no more than a full node: past that, every
        further unseen request on a fast node (one that gets many between two samples) would only push traffic
        to slower ones (uncapped it reached -1.6 to -3.7 on an h100 at 110 % load, more than expected_wait's
        whole difference between an h100 and an l40s)."""
        cfg = self.config
        return -cfg.burst_cost * min(node.unseen, cfg.node_capacity)

    def score(self, node: Node) -> float:
        return node.static + sum(self.dynamic(node).values())

    def base_score(self, node: Node) -> float:
        """The node's score before prefix affinity: static part, burst correction and per-request scorers."""
        cfg = self.config
        s = node.static + self.burst(node)
        if "in_flight" in cfg.weights:
            weight, invert = cfg.weights["in_flight"]
            x = min(1.0, node.in_flight / cfg.node_capacity)
            s += weight * ((1.0 - x) if invert else x)
        if "expected_wait" in cfg.weights:
            s += self._wait_part(node)
        if self._slo:
            s += self._slo_part(node)
        return s

    def past_slo(self, node: Node) -> bool:
        """slo: a new request's slow case on the node, its expected wait x the node's tail factor (realised /
        expected latency of its slow requests, 1 / slo.margin until measured), ends past the SLO."""
        return self.expected_wait(node) * (node.slo_tail or self._slo_first_tail) > self._slo_s

    def _slo_part(self, node: Node) -> float:
        """slo: a node past the SLO (past_slo, inlined: every relist scores it) scores as a miss (-SLO_MISS), so
        requests go where they still make the SLO; when no node does, pick() decides by the answer length."""
        return -SLO_MISS if self.expected_wait(node) * (node.slo_tail or self._slo_first_tail) > self._slo_s else 0.0

    def _entry(self, node: Node) -> tuple[float, float, int, int, Node]:
        cfg = self.config
        s = node.base = self.base_score(node)
        key = -math.floor(s / cfg.tie_epsilon + 1e-9) if cfg.tie_epsilon > 0 else -s
        tie = self.rng.random() if cfg.tie_break == "random" else float(node.order)
        self._seq += 1
        return (key, tie, self._seq, node.version, node)

    def _entry_stream(self, node: Node) -> tuple[float, float, int, int, Node]:
        """A streamed request's heap entry: the score plus the expected_ttft term (node.base is set by _entry,
        which _relist and _rebuild call first). With an SLO, a streamed request counts a node as past it by the
        node's mean request (expected wait x 1 / slo.margin), not its slow case: its client's target is the first
        token, and judging by the tail factor moved streams off the h100s onto the a100s' slower prefills (issue
        14, long prompts at 95 %: TTFT p95 0.90 x least-in-flight against 0.45-0.65 x with the margin)."""
        cfg = self.config
        s = node.base + self._ttft_part(node)
        if self._slo and node.slo_tail:
            e = self.expected_wait(node)
            by_tail, by_mean = e * node.slo_tail > self._slo_s, e * self._slo_first_tail > self._slo_s
            if by_tail != by_mean:  # base has the tail's verdict: replace it with the mean's
                s += SLO_MISS if by_tail else -SLO_MISS
        node.sbase = s
        key = -math.floor(s / cfg.tie_epsilon + 1e-9) if cfg.tie_epsilon > 0 else -s
        tie = self.rng.random() if cfg.tie_break == "random" else float(node.order)
        self._seq += 1
        return (key, tie, self._seq, node.version, node)

    def _entry_least(self, node: Node) -> tuple[float, float, int, int, Node]:
        """least_in_flight: the heap top is the node with the fewest requests in flight from this gateway; a fresh
        random draw on every re-push breaks ties, so equal nodes share the load instead of the first taking it."""
        self._seq += 1
        return (node.in_flight, self.rng.random(), self._seq, node.version, node)

    @staticmethod
    def _push(heap: list[tuple[float, float, int, int, Node]], entry: tuple[float, float, int, int, Node],
              members: int) -> list[tuple[float, float, int, int, Node]]:
        """Pushes a node's fresh entry; rebuilds the heap from its live entries when dead ones (older versions) have
        piled up. Returns the heap to keep."""
        heapq.heappush(heap, entry)
        if len(heap) > 2 * members + 64:
            heap = [e for e in heap if e[3] == e[4].version]
            heapq.heapify(heap)
        return heap

    def _relist(self, node: Node) -> None:
        """The node's score or eligibility changed: invalidate its old entries and push a fresh one."""
        node.version += 1
        if not node.listed:
            return
        for group in node.groups:
            group.heap = self._push(group.heap, self._make_entry(node), len(group.members))
            if self._ttft:
                group.sheap = self._push(group.sheap, self._entry_stream(node), len(group.members))
            if self._slo:
                group.fheap = self._push(group.fheap, self._entry_least(node), len(group.members))
        # A node that is no longer listed simply has no live entry; it is re-pushed when it may take work again.

    # --- the hot path -----------------------------------------------------------------------------------------
    def group_for(self, model: str) -> Group | None:
        return self.groups.get(ANY_MODEL if not self.config.require_model else model)

    def pick(self, model: str, exclude: frozenset[str] | set[str] = frozenset(), prefix: Keys = (),
             stream: bool = False, answer: int = 0) -> Pick:
        """The best node for `model` now (skipping `exclude`, the nodes this request already failed on); `prefix`
        is the prompt's block keys (prefix_index.block_keys) when the policy routes by cache affinity; `stream`:
        the client streams the answer, so the expected_ttft term counts (the stream heap); `answer`: the answer
        length the request asked for (max_tokens, 0: not given), which the slo rule routes by past the SLO."""
        self.counters.decisions += 1
        self.last_affinity = 0.0
        self.last_long = False
        group = self.group_for(model)
        if group is None:
            return Pick(None, "unknown_model")
        if self._round_robin:
            return self._pick_round_robin(group, exclude)
        if self._cache_aware:
            return pickers.cache_aware(self, group, exclude, prefix)
        stream = stream and self._ttft
        heap = group.sheap if stream else group.heap
        while heap and heap[0][3] != heap[0][4].version:
            heapq.heappop(heap)
        if heap and not exclude:
            if self._slo:
                longer = False
                if answer > 0:
                    mean = self._answer_mean
                    longer = self.last_long = 0 < mean < answer
                    if not stream:  # the mean is the plain requests' (streams keep their own objective below)
                        self._answer_mean = mean + ANSWER_ALPHA * (answer - mean) if mean else float(answer)
                top = heap[0][4]
                if not stream and self.expected_wait(top) * (top.slo_tail or self._slo_first_tail) > self._slo_s:
                    return self._pick_past_slo(group, top, longer, prefix)  # past_slo, inlined
                # A long answer leaves a node where its own slow case misses the SLO. For a stream too: its first
                # token decides where it starts, but its whole answer is what the SLO counts; kept on the soonest
                # start, those answers ended past the SLO on the overloaded h100s (issue 14, long prompts at 110 %:
                # 17-25 of the h100s' 192-token answers per run against least-in-flight's 2-7, goodput 0.97-0.99 x).
                if longer:
                    fit = self._long_fit(group, top, stream)
                    if fit is not top:
                        if prefix and self._affinity:
                            return pickers.with_affinity(self, group, fit, exclude, prefix, stream)
                        return Pick(fit, "ok")
            if prefix and self._affinity:
                return pickers.with_affinity(self, group, heap[0][4], exclude, prefix, stream)
            return Pick(heap[0][4], "ok")
        # Best-first walk down the heap past excluded nodes (retries only: a handful of steps).
        frontier = [(heap[0], 0)] if heap else []
        while frontier:
            entry, i = heapq.heappop(frontier)
            if entry[3] == entry[4].version and entry[4].name not in exclude:
                if prefix and self._affinity:
                    return pickers.with_affinity(self, group, entry[4], exclude, prefix, stream)
                return Pick(entry[4], "ok")
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return self._none_left(group, exclude)

    def _pick_past_slo(self, group: Group, best: Node, longer: bool, prefix: Keys = ()) -> Pick:
        """The request would miss the SLO even on its best node (expected wait past slo_s x margin): it goes to the
        node with the fewest requests in flight, the fewest others it can delay. Filling the best nodes on to the
        same expected finish everywhere instead (what the score does) holds their requests right at the SLO, where
        a longer answer or one more prefill pushes them past it (issue 14: goodput 0.90 x least-in-flight at 110 %
        of its stable rate, the h100s' mean latency 6.4 s against an 8.7-s SLO); a request that misses anyway
        should not take the fast nodes' requests down with it. With the prefix_affinity scorer, a node holding the
        prompt's prefix is taken over the fewest in flight when it has at most one request more
        (pickers.past_slo_holder).

        Except a request that asked for a longer answer than the fleet's mean (`longer`): it takes the best node
        anyway (by score and, with the scorer, prefix affinity, as within the SLO). Past saturation the long answers
        are the ones that miss (issue 14, long prompts at 110 %: every a100 and h100 request past the SLO had a
        192-token answer; the a100s' 192-token answers missed 50-84 %, their 64-token ones 0-30 %), and only where
        the wait is shortest does a long answer have a chance; a short one can still make the SLO on a slower, less
        loaded node, and leaves the fast nodes to the long ones."""
        if longer:
            self.counters.extra["past_slo_long"] = self.counters.extra.get("past_slo_long", 0) + 1
            best = self._long_fit(group, best)
            if prefix and self._affinity:
                return pickers.with_affinity(self, group, best, frozenset(), prefix)
            return Pick(best, "ok")
        fheap = group.fheap
        while fheap and fheap[0][3] != fheap[0][4].version:
            heapq.heappop(fheap)
        self.counters.extra["past_slo"] = self.counters.extra.get("past_slo", 0) + 1
        fewest = fheap[0][4]
        if prefix and self._affinity:
            return Pick(pickers.past_slo_holder(self, group, fewest, prefix), "ok")
        return Pick(fewest, "ok")

    def _long_fit(self, group: Group, top: Node, stream: bool = False) -> Node:
        """slo: the node for a long answer, the best-scored one (`top`, the heap's) where the answer's own slow case,
        the expected wait x the node's long-answer tail factor, makes the SLO; `top` when none of those looked at
        does. The score ranks nodes by the mean request, and a long answer ends later than that by a factor of its
        own, heaviest on slow nodes: in issue 14's long-prompt sweep at 50 % the default's p95 latency was its l40s'
        192-token answers (4 of 7 past the 8.7-s SLO, none of the h100s' 45), sent there whenever an l40s's 5.8-s
        unloaded latency equalled a loaded h100's expected wait. A node whose long tail is not measured yet counts by
        its tail factor over all requests (so until then the pick is the score's).

        Looks at every member of a group of at most LONG_FIT_SCAN nodes, else at the heap's first LONG_FIT_SCAN
        entries (its top levels, where the best-scored nodes are), and takes the best-scored one that fits: a scan,
        not a best-first walk, because the walk's pushes and pops of heap entries put the decision's p99 at
        115-168 us at 1,000 nodes when no node fits (bench/scheduler.py --worst-long-walk).

        `stream`: the ranking is the stream heap's (score plus the expected_ttft term, node.sbase)."""
        limit, first = self._slo_s, self._slo_first_tail
        if self.expected_wait(top) * (top.long_tail or top.slo_tail or first) <= limit:
            return top
        best: Node | None = None
        if len(group.members) <= LONG_FIT_SCAN:
            nodes: Iterable[Node] = (n for n in group.members if n.listed)
        else:  # a heap entry is live while its version is the node's (entries of older versions stay until popped)
            heap = group.sheap if stream else group.heap
            nodes = (e[4] for e in heap[:LONG_FIT_SCAN] if e[3] == e[4].version)
        rank = "sbase" if stream else "base"
        for node in nodes:
            if (best is None or getattr(node, rank) > getattr(best, rank)) and (
                    self.expected_wait(node) * (node.long_tail or node.slo_tail or first) <= limit):
                best = node
        if best is None:
            return top
        self.counters.extra["long_fit"] = self.counters.extra.get("long_fit", 0) + 1
        return best

    def _none_left(self, group: Group, exclude: frozenset[str] | set[str]) -> Pick:
        healthy = any(n.healthy and n.quarantined_until is None and n.name not in exclude for n in group.members)
        return Pick(None, "saturated" if healthy else "unavailable")

    def _pick_round_robin(self, group: Group, exclude: frozenset[str] | set[str]) -> Pick:
        """The next member after the last one picked that passes the filters (scores ignored). O(1) while most
        members are eligible; a walk over the group when most are not."""
        members = group.members
        n = len(members)
        start = group.cursor
        for i in range(n):
            j = start + i
            if j >= n:
                j -= n
            node = members[j]
            if node.listed and node.name not in exclude:
                group.cursor = j + 1 if j + 1 < n else 0
                return Pick(node, "ok")
        return self._none_left(group, exclude)

    def sent(self, node: Node, request_id: int, now: float, prefix: Keys = (), prompt: int = 0) -> None:
        """A request goes to the node (after pick): count it, and remember its prompt's blocks there; `prompt`: its
        prompt length (estimated tokens, 0: not known), queued on the node's prefill backlog (expected_ttft)."""
        self._now = now
        if prompt > 0 and self._ttft:
            self._queue_prefill(node, request_id, now, prompt)
        if prefix and (self._affinity or self._cache_aware):
            if not (self._kv_events and node.name in self.event_fed):
                self.prefix.add(node.name, prefix)
            node.affinity += AFFINITY_ALPHA * (self.last_affinity - node.affinity)
        node.advance(now)
        node.sent_area[request_id] = node.area
        floor = node.latency_s
        if self._slo and floor is not None:
            # expected_wait as pick() judged it (before the request counts), inlined: this is the hot path. slot_s
            # is set with latency_s; an unmeasured node's guess would teach the tail nothing.
            serial = node.slot_s * (len(node.in_flight_ts) + 1)
            node.sent_e[request_id] = serial if floor < serial else floor
            if self.last_long:
                node.sent_long.add(request_id)
        self.last_long = False  # one pick, one send: a send without a pick (what-if previews) is not long
        node.in_flight_ts[request_id] = now
        if node.metrics is None or now > node.metrics.ts:
            node.unseen += 1
        self._relist(node)

    def _queue_prefill(self, node: Node, request_id: int, now: float, prompt: int) -> None:
        """expected_ttft: the request's prompt joins the node's backlog (after working off what the node's rate
        cleared since the last send), and the request remembers the work its first token waits for: the backlog
        ahead of it plus its own prompt. Until some node's rate is measured the backlog is not modelled (nothing
        says how fast it clears), and a first TTFT teaches the rate as its own prompt over it."""
        mean = self._prompt_mean
        self._prompt_mean = mean + PROMPT_ALPHA * (prompt - mean) if mean else float(prompt)
        tps = self._rate(node)
        left = 0.0
        if tps > 0:
            left = node.backlog - tps * (now - node.backlog_t)
            left = left + prompt if left > 0 else float(prompt)
        node.backlog, node.backlog_t = left, now
        node.sent_work[request_id] = left or prompt

    def finished(self, node: Node, request_id: int, ttft_s: float | None = None, now: float | None = None,
                 ok: bool | None = None, stream: bool = False) -> None:
        """A request to the node ended. Only a successful one (`ok`; by default: it has a TTFT) teaches the node's
        speed; a stream can succeed without a TTFT (no text generated). `now` defaults to the wall clock, the clock
        the gateway passes to `sent`. A streamed request's TTFT (`stream`) teaches expected_ttft; a non-streamed
        one's `ttft_s` is its whole answer, which says nothing about when a first token comes."""
        if request_id not in node.in_flight_ts:
            return
        now = time.time() if now is None else now
        self._now = now
        node.advance(now)
        sent_at = node.in_flight_ts.pop(request_id)
        work = node.sent_work.pop(request_id, 0.0)
        area = node.area - node.sent_area.pop(request_id, node.area)
        latency = now - sent_at
        if ok is None:
            ok = ttft_s is not None
        if ok and latency > 0 and area > 0:
            # Little's law: the request ran at a mean concurrency of area / latency, so the node served a slot
            # every latency / that seconds.
            slot = latency * latency / area
            node.slot_s = slot if node.slot_s is None else (1 - SLOT_ALPHA) * node.slot_s + SLOT_ALPHA * slot
            node.latency_s = latency if node.latency_s is None else (
                (1 - SLOT_ALPHA) * node.latency_s + SLOT_ALPHA * latency)
            expected = node.sent_e.pop(request_id, 0.0)
            if expected > 0:
                self._learn_tail(node, latency / expected)
                if request_id in node.sent_long:
                    self._learn_long_tail(node, latency / expected)
        else:
            node.sent_e.pop(request_id, None)
        node.sent_long.discard(request_id)
        if node.unseen > 0 and (node.metrics is None or sent_at > node.metrics.ts):
            node.unseen -= 1
        if ttft_s is not None:
            node.ttft_ewma = ttft_s if node.ttft_ewma is None else (
                (1 - TTFT_ALPHA) * node.ttft_ewma + TTFT_ALPHA * ttft_s)
            if stream and ok:
                node.stream_ttft_s = ttft_s if node.stream_ttft_s is None else (
                    (1 - STREAM_TTFT_ALPHA) * node.stream_ttft_s + STREAM_TTFT_ALPHA * ttft_s)
                node.stream_ttft_at = now
                if self._ttft and not self._ttft_default:
                    self._ttft_default = ttft_s  # the first measurement: the scale until the next refresh
                if work > 0 and ttft_s > 0:
                    rate = work / ttft_s  # the tokens its first token waited for, over the time it waited
                    node.prefill_tps = rate if not node.prefill_tps else (
                        (1 - STREAM_TTFT_ALPHA) * node.prefill_tps + STREAM_TTFT_ALPHA * rate)
                    if not self._tps_default:  # the first measurement: the fleet figures until the next refresh
                        self._tps_default = rate
                        self._tps_k = rate * node.latency_s if node.latency_s else 0.0
        self._relist(node)

    @staticmethod
    def _learn_tail(node: Node, ratio: float) -> None:
        """slo: one successful request's realised / expected latency. expected_wait is the node's mean request;
        the requests that miss an SLO are its slow ones (issue 14, long prompts past saturation: every h100 and
        a100 request past the SLO had a 192-token answer, 1.35 x the expected wait on average, the 64-token ones
        0.55 x), so the SLO test scales the expected wait by how far past it the node's slow requests end: mean +
        TAIL_DEVS mean deviations of the ratio (TCP's retransmission timeout is the same estimator), never below 1
        (a node is never expected to beat its own mean)."""
        node.tail_mean, node.tail_dev, node.slo_tail = _tail_step(node.tail_mean, node.tail_dev, node.slo_tail, ratio)

    @staticmethod
    def _learn_long_tail(node: Node, ratio: float) -> None:
        """slo: _learn_tail over the node's long answers only (long_tail, which _long_fit judges by)."""
        node.long_mean, node.long_dev, node.long_tail = _tail_step(node.long_mean, node.long_dev, node.long_tail, ratio)

    def succeeded(self, node: Node) -> None:
        if node.failures:
            node.failures = 0

    def failed(self, node: Node, now: float) -> bool:
        """Count a failure before the first byte; True when it quarantined the node."""
        node.failures += 1
        if node.failures >= self.config.quarantine_failures and node.quarantined_until is None:
            node.quarantined_until = now + self.config.quarantine_cooldown_s
            self.counters.quarantines += 1
            self._relist(node)
            return True
        return False

    def next_quarantine_end(self) -> float | None:
        ends = [n.quarantined_until for n in self.nodes.values() if n.quarantined_until is not None]
        return min(ends) if ends else None

    # --- reporting --------------------------------------------------------------------------------------------
    def describe(self, now: float) -> list[dict[str, Any]]:
        """Every node as the gateway state key shows it (contract 2)."""
        out = []
        for node in self.nodes.values():
            reason = self.filter_reason(node, now)
            dyn = self.dynamic(node)
            out.append({
                "node": node.name, "pool": node.spec.pool, "eligible": reason == "", "reason": reason,
                "score": round(node.static + sum(dyn.values()), 6) if node.healthy else None,
                "parts": {k: round(v, 6) for k, v in {**node.parts, **dyn}.items()},
                "in_flight": node.in_flight, "quarantined_until": node.quarantined_until,
                "prefix_blocks": self.prefix.size(node.name),
                # expected_wait's measured seconds per request slot (what-if previews reuse it)
                "slot_s": None if node.slot_s is None else round(node.slot_s, 6),
                # and its floor: the latency its recent requests had (expected_wait is never below it)
                "latency_s": None if node.latency_s is None else round(node.latency_s, 6),
                # expected_ttft's measure: the TTFT its streamed requests recently had
                "stream_ttft_s": None if node.stream_ttft_s is None else round(node.stream_ttft_s, 6),
                # and the prefill rate it implies (prompt tokens per second; 0: not measured), which with the
                # prompt tokens sent there and not yet worked off gives a streamed request's expected TTFT
                "prefill_tps": round(node.prefill_tps, 1),
                # slo: realised / expected latency of its slow requests (0: not measured or no SLO)
                "slo_tail": round(node.slo_tail, 4),
                # and over its long answers only (0: none measured), which a long answer is judged by
                "slo_long_tail": round(node.long_tail, 4),
            })
        return out

    def live_models(self) -> dict[str, int]:
        """Model -> number of healthy nodes serving it (for /v1/models)."""
        out: dict[str, int] = {}
        for node in self.nodes.values():
            if node.healthy:
                for model in node.spec.models or (node.metrics.models if node.metrics else ()):
                    out[model] = out.get(model, 0) + 1
        return out
