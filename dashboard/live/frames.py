"""Live frames: what the websocket sends, built from `sy:latest` and the node table.

A tick reads the fleet once (`load_view`) and every subscribed topic is built from that one `FleetView`, so the
cost of a tick is one HGETALL plus a cheap pass per topic. Builders are pure functions of the view, which keeps them
easy to test and lets the benchmark time them alone.

Topics:
  kpi                 fleet KPI values
  gpu:<metric>        per-GPU heatmap of one GPU catalogue metric (rows = nodes, columns = GPU index)
  node:default        per-node heatmap of cpu_util_pct, disk_busy_pct, requests_waiting, kv_cache_usage_pct,
                      prefix_cache_hit_pct, net_rtt_ms
  node:<m1>,<m2>,...  per-node heatmap of the named host/inference metrics
  tail:<node name>    the node's latest raw sample

`diff(old, new)` turns two frames of one topic into nothing, a delta (only what changed) or "send it whole".
"""

from __future__ import annotations

import gc
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import orjson
from django.conf import settings

from agents.catalogue import (
    BY_NAME,
    GPU_NAMES,
    HOST_NAMES,
    INFERENCE_NAMES,
    THROTTLE_BITS,
    Metric,
    decode_clock_reasons,
)
from control.alerts.summary import firing_counts
from dashboard.fleet.models import Node
from dashboard.metrics.latest import LATEST_KEY, redis_client

DEFAULT_NODE_METRICS: tuple[str, ...] = ("cpu_util_pct", "disk_busy_pct", "requests_waiting", "kv_cache_usage_pct",
                                         "prefix_cache_hit_pct", "net_rtt_ms")
NODE_NAMES = HOST_NAMES | INFERENCE_NAMES
MAX_NODE_METRICS = 12
NODE_CACHE_S = 5.0  # new nodes show up within this; the node table is read at most this often per process
TEMP_SCALE = (20.0, 100.0)
# Above this share of changed cells a delta is no smaller than the frame itself: send the frame.
DELTA_MAX_SHARE = 0.5


class TopicError(ValueError):
    """The client asked for a topic that does not exist; the message is shown to the user."""


# --- the fleet as one tick sees it -------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeInfo:
    name: str
    pool: str
    interval_s: int | None
    max_gpu: int  # highest GPU index registered for the node, -1 for none


@dataclass
class Row:
    node: str
    pool: str
    status: str  # up / stale / down
    ts: float | None  # epoch seconds of the latest sample
    snap: dict[str, Any] | None
    gpus: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.status == "up"


@dataclass
class FleetView:
    rows: list[Row]
    columns: list[int]  # GPU indices 0..max over the fleet
    now: float
    by_name: dict[str, Row] = field(default_factory=dict)
    next_transition: float | None = None  # epoch seconds at which some row's status changes with no new sample

    def __post_init__(self) -> None:
        self.by_name = {r.node: r for r in self.rows}


@lru_cache(maxsize=65536)
def natural_key(name: str) -> tuple[Any, ...]:
    """gpu-a-2 before gpu-a-10, as an operator reads a rack."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def make_view(nodes: list[NodeInfo], latest: dict[str, dict[str, Any]], now: datetime | None = None) -> FleetView:
    """Rows for every registered node, grouped by pool then name; nodes only in Redis (deleted) are left out.

    Status follows dashboard.fleet.liveness.status_of (tests hold the two to the same answers), computed here from
    the cached epoch of each sample's ts because this runs for every node on every tick.
    """
    now = now or datetime.now(UTC)
    now_s = now.timestamp()
    stale_after = settings.STALE_AFTER_INTERVALS
    default_interval = settings.AGENT_INTERVAL_S
    rows: list[Row] = []
    max_gpu = -1
    next_transition: float | None = None
    for info in _ordered(nodes):
        snap = latest.get(info.name)
        ts, gpus, top = _derived(info.name, snap)
        if ts is None:
            status = "down"
        else:
            window = (info.interval_s or default_interval) * stale_after
            age = now_s - ts
            status = "up" if age <= window else "stale" if age <= window * 10 else "down"
            if status != "down":
                change = ts + (window if status == "up" else window * 10)
                next_transition = change if next_transition is None else min(next_transition, change)
        if info.max_gpu > max_gpu:
            max_gpu = info.max_gpu
        if top > max_gpu:
            max_gpu = top
        rows.append(Row(info.name, info.pool, status, ts, snap, gpus))
    return FleetView(rows, list(range(max_gpu + 1)), now_s, next_transition=next_transition)


# Per-tick work is kept proportional to the nodes that pushed, not to the fleet (issue 15: the frame build was
# 76 ms p95 at 1,000 x 8). The reader hands back the same parsed dict for a node that did not push, so what is
# derived from a sample is cached against that object and reused while it is the same (`is`, not ==).
_order_cache: tuple[list[NodeInfo], list[NodeInfo]] | None = None
_Derived = tuple[float | None, dict[int, dict[str, Any]], int]  # sample epoch, GPUs by index, highest index
_derived_cache: dict[str, tuple[dict[str, Any], _Derived]] = {}
_NOTHING: _Derived = (None, {}, -1)


def _ordered(nodes: list[NodeInfo]) -> list[NodeInfo]:
    """Nodes by pool then name; node_infos() returns one list object until it re-reads, so sort each list once."""
    global _order_cache
    cached = _order_cache
    if cached is not None and cached[0] is nodes:
        return cached[1]
    ordered = sorted(nodes, key=lambda n: (n.pool, natural_key(n.name)))
    _order_cache = (nodes, ordered)
    names = {n.name for n in nodes}
    # Deleted nodes' samples are not kept; list(): another build thread may add entries meanwhile.
    for gone in [name for name in list(_derived_cache) if name not in names]:
        _derived_cache.pop(gone, None)
    return ordered


def _derived(name: str, snap: dict[str, Any] | None) -> _Derived:
    if not snap:
        return _NOTHING
    cached = _derived_cache.get(name)
    if cached is not None and cached[0] is snap:
        return cached[1]
    gpus = {int(g["index"]): g for g in snap.get("gpus", ())}
    derived = (_epoch(snap["ts"]) if snap.get("ts") else None, gpus, max(gpus, default=-1))
    _derived_cache[name] = (snap, derived)
    return derived


@lru_cache(maxsize=65536)
def _epoch(ts: str) -> float:
    """Most nodes' ts is the same string as last tick: parse each once."""
    return datetime.fromisoformat(ts).timestamp()


# --- reading (the impure part, cached) ---------------------------------------------------------------------------

_node_cache: tuple[float, list[NodeInfo]] | None = None
_node_lock = threading.Lock()


def node_infos(max_age_s: float = NODE_CACHE_S) -> list[NodeInfo]:
    """The registered nodes, read from PostgreSQL at most every few seconds per process."""
    global _node_cache
    with _node_lock:
        if _node_cache is not None and time.monotonic() - _node_cache[0] < max_age_s:
            return _node_cache[1]
        from django.db.models import Max

        # A node the controller scaled in is gone: it is history (its page), not a grey row on the heatmap.
        infos = [NodeInfo(n["name"], n["pool__name"], n["interval_s"],
                          -1 if n["max_gpu"] is None else int(n["max_gpu"]))
                 for n in Node.objects.exclude(state=Node.State.REMOVED)
                 .values("name", "pool__name", "interval_s").annotate(max_gpu=Max("gpus__index"))]
        _node_cache = (time.monotonic(), infos)
        return infos


def forget_nodes() -> None:
    """Drop the node and alert caches (tests, and after a node is created or deleted in this process)."""
    global _node_cache, _alerts_cache
    with _node_lock:
        _node_cache = None
        _alerts_cache = None


GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Collect less often in a process that keeps the parsed fleet (the broadcaster's).

    1,000 nodes' parsed samples are about a million small objects that live for minutes. With CPython's default
    thresholds (700, 10, 10) the allocations of one tick's parsing set off collections that walk all of them: in
    bench/live.py that was the p95 frame build (about 100 ms, against 36 ms with the collector off). Raised
    thresholds keep the same collector, run less often.
    """
    if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
        gc.set_threshold(*GC_THRESHOLDS)


class LatestReader:
    """The fleet's latest samples, kept parsed between ticks.

    `read()` is a full HGETALL that parses only values whose bytes changed; `refresh(names)` reads just the nodes
    that pushed since the last tick (their names arrive on sy:ingest). With 1,000 nodes the full read moves ~6 MB
    and costs tens of milliseconds; a tick's refresh reads only the fifth of the fleet that pushed in that second.
    """

    def __init__(self) -> None:
        self._raw: dict[str, bytes] = {}
        self._parsed: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _take(self, name: str, value: bytes | None) -> None:
        if value is None:
            self._raw.pop(name, None)
            self._parsed.pop(name, None)
            return
        if self._raw.get(name) == value:
            return
        try:
            self._parsed[name] = orjson.loads(value)
            self._raw[name] = value
        except orjson.JSONDecodeError:
            pass  # never let one bad value blank the whole fleet

    def read(self) -> dict[str, dict[str, Any]]:
        raw = redis_client().hgetall(LATEST_KEY)
        with self._lock:
            fresh = {k.decode(): v for k, v in raw.items()}
            for gone in set(self._raw) - set(fresh):
                self._take(gone, None)
            for name, value in fresh.items():
                self._take(name, value)
            return dict(self._parsed)

    def refresh(self, names: set[str]) -> dict[str, dict[str, Any]]:
        ordered = sorted(names)
        values = redis_client().hmget(LATEST_KEY, ordered) if ordered else []
        with self._lock:
            for name, value in zip(ordered, values, strict=True):
                self._take(name, value)
            return dict(self._parsed)


_reader = LatestReader()


def load_view(now: datetime | None = None, changed: set[str] | None = None) -> FleetView:
    """The fleet now: a full read, or (`changed` given) only those nodes re-read on top of the last read."""
    latest = _reader.read() if changed is None else _reader.refresh(changed)
    return make_view(node_infos(), latest, now)


# --- builders --------------------------------------------------------------------------------------------------

def _num(v: Any) -> float | int | None:
    """Values as sent on the wire: ints stay ints, floats lose noise digits (smaller frames, fewer false changes)."""
    if v is None or isinstance(v, bool):
        return None if v is None else int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return round(v) if abs(v) >= 1000 else round(v, 3)
    return None


def scale_for(metric: Metric, values: list[float | int]) -> tuple[float, float]:
    """Fixed scales where the unit has natural bounds, so a colour means the same thing on every screen."""
    if metric.is_pct:
        return 0.0, 100.0
    if metric.unit == "celsius":
        return TEMP_SCALE
    if metric.unit == "bool":
        return 0.0, 1.0
    if not values:
        return 0.0, 1.0
    lo, hi = float(min(values)), float(max(values))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _row_meta(r: Row) -> dict[str, Any]:
    return {"node": r.node, "pool": r.pool, "status": r.status, "ts": None if r.ts is None else round(r.ts, 3)}


_RowCache = dict[str, tuple[dict[int, dict[str, Any]], list[float | int | None]]]
_gpu_rows: dict[str, tuple[float, _RowCache]] = {}  # metric -> (monotonic time of its last build, rows by node)
# A metric nobody built for this long loses its rows: they hold old samples (tens of MB at 1,000 nodes) alive.
ROWS_KEEP_S = 30.0


def gpu_frame(view: FleetView, metric_name: str) -> dict[str, Any]:
    metric = BY_NAME.get(metric_name)
    if metric is None or metric_name not in GPU_NAMES:
        raise TopicError(f"unknown GPU metric {metric_name!r}; see /api/v1/metrics/catalogue (scope gpu)")
    z: list[list[float | int | None]] = []
    columns = view.columns
    width = len(columns)
    # A row is rebuilt only when its node pushed since the last build of this metric (see _derived_cache). Rows are
    # shared between frames, so they are never changed after they are made.
    before = _gpu_rows.get(metric_name, (0.0, {}))[1]
    after: _RowCache = {}
    for r in view.rows:
        if not r.live:
            z.append([None] * width)  # stale/down: never show old numbers as if live
            continue
        cached = before.get(r.node)
        if cached is not None and cached[0] is r.gpus and len(cached[1]) == width:
            row = cached[1]
        else:
            row = []
            for c in columns:
                g = r.gpus.get(c)
                row.append(_num(g.get(metric_name)) if g is not None else None)
        after[r.node] = (r.gpus, row)
        z.append(row)
    now = time.monotonic()
    for other, (built, _) in list(_gpu_rows.items()):
        if now - built > ROWS_KEEP_S:
            _gpu_rows.pop(other, None)
    _gpu_rows[metric_name] = (now, after)
    fixed = metric.is_pct or metric.unit in ("celsius", "bool")
    live_values = [] if fixed else [v for row in z for v in row if v is not None]
    zmin, zmax = scale_for(metric, live_values)
    return {"topic": f"gpu:{metric_name}", "kind": "gpu", "metric": metric_name, "unit": metric.unit,
            "label": metric.help, "zmin": zmin, "zmax": zmax, "columns": list(columns),
            "rows": [_row_meta(r) for r in view.rows], "z": z, "seq": 0}


def node_metrics_of(spec: str) -> tuple[str, ...]:
    if spec == "default":
        return DEFAULT_NODE_METRICS
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise TopicError("node: needs 'default' or a comma-separated list of host/inference metrics")
    if len(names) > MAX_NODE_METRICS:
        raise TopicError(f"node: takes at most {MAX_NODE_METRICS} metrics")
    unknown = [n for n in names if n not in NODE_NAMES]
    if unknown:
        raise TopicError(f"unknown node metric(s) {', '.join(map(repr, unknown))}; use host or inference metrics")
    return names


def _node_value(r: Row, name: str) -> float | int | None:
    snap = r.snap or {}
    section = "host" if name in HOST_NAMES else "inference"
    return _num((snap.get(section) or {}).get(name))


def node_frame(view: FleetView, spec: str = "default") -> dict[str, Any]:
    """Per-node heatmap: each column normalised to 0..1 for colour, raw values kept for hover."""
    names = node_metrics_of(spec)
    raw: list[list[float | int | None]] = []
    for r in view.rows:
        raw.append([_node_value(r, n) if r.live else None for n in names])
    scales: list[list[float]] = []
    for c, n in enumerate(names):
        lo, hi = scale_for(BY_NAME[n], [row[c] for row in raw if row[c] is not None])  # type: ignore[misc]
        scales.append([lo, hi])
    z = [[None if v is None else round(min(1.0, max(0.0, (v - scales[c][0]) / (scales[c][1] - scales[c][0]))), 3)
          for c, v in enumerate(row)] for row in raw]
    return {"topic": f"node:{spec}", "kind": "node", "metric": spec, "columns": list(names),
            "units": [BY_NAME[n].unit for n in names], "labels": [BY_NAME[n].help for n in names],
            "scales": scales, "zmin": 0.0, "zmax": 1.0,
            "rows": [_row_meta(r) for r in view.rows], "z": z, "raw": raw, "seq": 0}


# What puts a node on the overview's "needs attention" list. Fixed thresholds for the wall screen; the alerts
# issue brings operator-set rules (the `alerts` policy) with durations and paging.
ATTENTION_LIMIT = 12
GPU_CHECKS: tuple[tuple[str, float, str], ...] = (
    ("temp_c", 85.0, "at {value:.0f} °C"),
    ("mem_temp_c", 95.0, "HBM at {value:.0f} °C"),
)
NODE_CHECKS: tuple[tuple[str, str, float, str], ...] = (
    ("inference", "requests_waiting", 50, "queue {value:.0f}"),
    ("inference", "kv_cache_usage_pct", 95.0, "KV cache {value:.0f} %"),
    ("inference", "ttft_p95_s", 2.0, "p95 TTFT {value:.1f} s"),
    ("host", "cpu_util_pct", 90.0, "CPU {value:.0f} %"),
    ("host", "disk_busy_pct", 90.0, "disk {value:.0f} % busy"),
)


def attention_of(row: Row) -> list[str]:
    """Plain-words reasons an operator should look at this node now (empty: nothing to see)."""
    if row.status != "up":
        return [f"{row.status}: no live sample"]
    reasons: list[str] = []
    hot = [g for g in row.gpus.values() if (g.get("gpu_util_pct") or 0) >= 95.0]
    if hot:
        reasons.append(f"{len(hot)} of {len(row.gpus)} GPUs at ≥ 95 % util")
    per_gpu: dict[str, list[int]] = {}  # "throttled: HW slowdown" -> [0, 3]: one line for all GPUs that share it
    for index, g in sorted(row.gpus.items()):
        found: list[str] = []
        for metric, limit, text in GPU_CHECKS:
            value = g.get(metric)
            if value is not None and value >= limit:
                found.append(text.format(value=value))
        mask = g.get("clocks_event_reasons")
        if isinstance(mask, int) and mask & THROTTLE_BITS:
            found.append(f"throttled: {', '.join(decode_clock_reasons(mask & THROTTLE_BITS))}")
        if g.get("xid_count"):
            found.append(f"XID {g.get('xid_last') if g.get('xid_last') is not None else '?'}")
        if g.get("row_remap_pending"):
            found.append("row remap pending")
        for text in found:
            per_gpu.setdefault(text, []).append(index)
    for text, gpus in per_gpu.items():
        reasons.append(f"GPU{'s' if len(gpus) > 1 else ''} {', '.join(map(str, gpus))} {text}")
    snap = row.snap or {}
    for section, metric, limit, text in NODE_CHECKS:
        value = (snap.get(section) or {}).get(metric)
        if value is not None and value >= limit:
            reasons.append(text.format(value=value))
    return reasons


def attention(view: FleetView) -> list[dict[str, Any]]:
    """The nodes to look at first: not live ones, then by number of reasons; at most ATTENTION_LIMIT."""
    found = [(r, attention_of(r)) for r in view.rows]
    found = [(r, why) for r, why in found if why and not (r.status == "down" and r.ts is None)]
    found.sort(key=lambda item: (item[0].status == "up", -len(item[1]), natural_key(item[0].node)))
    return [{"node": r.node, "pool": r.pool, "status": r.status, "ts": r.ts, "reasons": why}
            for r, why in found[:ATTENTION_LIMIT]]


_alerts_cache: tuple[float, int] | None = None


def firing_alerts(max_age_s: float = NODE_CACHE_S) -> int:
    """Firing, unsilenced alerts (the overview tile), read from PostgreSQL at most every few seconds per process."""
    global _alerts_cache
    with _node_lock:
        if _alerts_cache is not None and time.monotonic() - _alerts_cache[0] < max_age_s:
            return _alerts_cache[1]
        count = sum(firing_counts().values())
        _alerts_cache = (time.monotonic(), count)
        return count


def kpi_frame(view: FleetView, alerts_active: int | None = None) -> dict[str, Any]:
    """Fleet KPIs over nodes that are up (stale numbers would mislead).

    p95 TTFT is the worst node's p95 (max over up nodes): per-node p95s cannot be merged into a fleet p95, and the
    wall screen's job is to show the node that is hurting.
    """
    counts = {"up": 0, "stale": 0, "down": 0}
    gpus_total = gpus_up = 0
    utils: list[float] = []
    queue = 0.0
    ttft: float | None = None
    tokens = power = 0.0
    have = {"queue": False, "tokens": False, "power": False}
    for r in view.rows:
        counts[r.status] += 1
        gpus_total += len(r.gpus)
        if not r.live:
            continue
        gpus_up += len(r.gpus)
        inference = (r.snap or {}).get("inference") or {}
        for g in r.gpus.values():
            if g.get("gpu_util_pct") is not None:
                utils.append(float(g["gpu_util_pct"]))
            if g.get("power_w") is not None:
                power += float(g["power_w"])
                have["power"] = True
        if inference.get("requests_waiting") is not None:
            queue += float(inference["requests_waiting"])
            have["queue"] = True
        if inference.get("generation_tokens_s") is not None:
            tokens += float(inference["generation_tokens_s"])
            have["tokens"] = True
        if inference.get("ttft_p95_s") is not None:
            ttft = max(ttft or 0.0, float(inference["ttft_p95_s"]))
    values = {
        "nodes_up": counts["up"], "nodes_stale": counts["stale"], "nodes_down": counts["down"],
        "nodes_total": len(view.rows), "gpus": gpus_up, "gpus_total": gpus_total,
        "gpu_util_mean": round(sum(utils) / len(utils), 1) if utils else None,
        "gpu_util_max": round(max(utils), 1) if utils else None,
        "queue_total": int(queue) if have["queue"] else None,
        "ttft_p95_s": round(ttft, 3) if ttft is not None else None,
        "tokens_s": round(tokens, 1) if have["tokens"] else None,
        "power_w": round(power) if have["power"] else None,
        "alerts_active": alerts_active,
        "attention": attention(view),
    }
    return {"topic": "kpi", "kind": "kpi", "values": values, "seq": 0}


def tail_frame(view: FleetView, node: str) -> dict[str, Any]:
    row = view.by_name.get(node)
    if row is None:
        raise TopicError(f"unknown node {node!r}")
    return {"topic": f"tail:{node}", "kind": "tail", "node": node, "status": row.status,
            "sample": row.snap, "seq": 0}


def check_topic(topic: str) -> str:
    """Raise TopicError unless `topic` names something buildable (node existence is checked at build time)."""
    if not isinstance(topic, str) or not topic or len(topic) > 300:
        raise TopicError("topic must be a non-empty string of at most 300 characters")
    kind, _, arg = topic.partition(":")
    if topic == "kpi":
        return topic
    if kind == "gpu":
        if arg not in GPU_NAMES:
            raise TopicError(f"unknown GPU metric {arg!r}; see /api/v1/metrics/catalogue (scope gpu)")
        return topic
    if kind == "node":
        node_metrics_of(arg)
        return topic
    if kind == "tail":
        if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?", arg):
            raise TopicError(f"{arg!r} is not a node name")
        return topic
    raise TopicError(f"unknown topic {topic!r}: use kpi, gpu:<metric>, node:default|<metrics>, tail:<node>")


def build(topic: str, view: FleetView) -> dict[str, Any]:
    kind, _, arg = check_topic(topic).partition(":")
    if kind == "kpi":
        return kpi_frame(view, firing_alerts())
    if kind == "gpu":
        return gpu_frame(view, arg)
    if kind == "node":
        return node_frame(view, arg)
    return tail_frame(view, arg)


# --- deltas ----------------------------------------------------------------------------------------------------

_META = {"gpu": ("unit", "label", "zmin", "zmax"), "node": ("scales", "units", "labels")}

Change = Literal["none", "delta", "full"]


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[Change, dict[str, Any] | None]:
    """('none', None) when nothing changed, ('delta', changes) or ('full', None) when the shape changed.

    A delta carries `cells` ([row, col, z] or [row, col, z, raw] for node frames), `rows` ([row, status, ts]) and
    `set` (changed scalars such as zmin/zmax); a kpi delta carries the changed `values`. `seq` is not set here.
    """
    if old is None or old.get("kind") != new["kind"] or old.get("topic") != new["topic"]:
        return "full", None
    kind = new["kind"]
    if kind == "tail":
        same = old.get("sample") == new["sample"] and old.get("status") == new["status"]
        return ("none", None) if same else ("full", None)
    if kind == "kpi":
        if old["values"].keys() != new["values"].keys():
            return "full", None
        changed = {k: v for k, v in new["values"].items() if old["values"][k] != v}
        return ("delta", {"values": changed}) if changed else ("none", None)
    if old["columns"] != new["columns"] or [r["node"] for r in old["rows"]] != [r["node"] for r in new["rows"]]:
        return "full", None
    out: dict[str, Any] = {}
    sets = {k: new[k] for k in _META[kind] if old.get(k) != new.get(k)}
    if sets:
        out["set"] = sets
    rows = [[i, n["status"], n["ts"]] for i, (o, n) in enumerate(zip(old["rows"], new["rows"], strict=True))
            if o["status"] != n["status"] or o["ts"] != n["ts"] or o["pool"] != n["pool"]]
    if any(old["rows"][i]["pool"] != new["rows"][i]["pool"] for i, *_ in rows):
        return "full", None  # a node moved pools: the grouping changed
    if rows:
        out["rows"] = rows
    cells: list[list[Any]] = []
    oz, nz = old["z"], new["z"]
    oraw, nraw = old.get("raw"), new.get("raw")
    for i, (orow, nrow) in enumerate(zip(oz, nz, strict=True)):
        if orow == nrow and (nraw is None or oraw[i] == nraw[i]):  # type: ignore[index]
            continue
        for j, (a, b) in enumerate(zip(orow, nrow, strict=True)):
            if nraw is None:
                if a != b:
                    cells.append([i, j, b])
            elif a != b or oraw[i][j] != nraw[i][j]:  # type: ignore[index]
                cells.append([i, j, b, nraw[i][j]])
    total = len(nz) * max(1, len(new["columns"]))
    if len(cells) > total * DELTA_MAX_SHARE:
        return "full", None
    if cells:
        out["cells"] = cells
    return ("delta", out) if out else ("none", None)


def apply(frame: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Apply a delta to a copy of a frame: what live.js does, here for tests and the benchmark."""
    out = orjson.loads(orjson.dumps(frame))
    out.update(delta.get("set", {}))
    if "values" in delta:
        out["values"].update(delta["values"])
    for i, status, ts in delta.get("rows", ()):
        out["rows"][i]["status"], out["rows"][i]["ts"] = status, ts
    for cell in delta.get("cells", ()):
        out["z"][cell[0]][cell[1]] = cell[2]
        if len(cell) > 3:
            out["raw"][cell[0]][cell[1]] = cell[3]
    out["seq"] = delta["seq"]
    return out
