"""The current value of every series a rule looks at, from the latest sample of each node (Redis `sy:latest`)
and Node.last_seen (for nodes that stopped reporting).

A series is a label set {pool, node[, gpu]} and a float. Nulls (a metric the GPU does not support) are absent,
never 0. A node whose latest sample is older than STALE_S contributes no sample-based series: its old values
must not keep alerts firing (or start them); `node-not-reporting` covers it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents.catalogue import GPU_NAMES, HOST_NAMES, THROTTLE_BITS
from control.alerts.schema import DERIVED_NODE, Matcher
from dashboard.fleet.models import Node
from dashboard.metrics.latest import all_latest

log = logging.getLogger(__name__)

STALE_S = 60.0
Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable


@dataclass
class Fleet:
    now: datetime
    nodes: dict[str, dict[str, Any]]  # name -> {"pool", "last_seen"}
    snapshots: dict[str, dict[str, Any]] | None  # None: Redis could not be read (sample-based rules are skipped)
    _cache: dict[str, dict[Labels, float]] = field(default_factory=dict)


def collect(now: datetime) -> Fleet:
    nodes = {n.name: {"pool": n.pool.name, "last_seen": n.last_seen}
             # A node the controller removed is silent on purpose: no "node not reporting" alert for it.
             for n in Node.objects.exclude(state=Node.State.REMOVED).select_related("pool")
             .only("name", "pool__name", "last_seen")}
    try:
        raw = all_latest()
    except Exception:  # Redis down: say "unknown", never "all clear"
        log.warning("alerts: cannot read the latest samples; sample-based rules are not evaluated", exc_info=True)
        raw = None
    snapshots = None
    if raw is not None:
        snapshots = {}
        for name, snap in raw.items():
            if name not in nodes:
                continue  # deleted node with a leftover entry
            received = _parse(snap.get("received"))
            if received is None or (now - received).total_seconds() > STALE_S:
                continue
            snapshots[name] = snap
    return Fleet(now, nodes, snapshots)


def _parse(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def needs_samples(metric: str) -> bool:
    return metric not in DERIVED_NODE


def _throttled(g: dict[str, Any]) -> float | None:
    mask = g.get("clocks_event_reasons")
    return None if not isinstance(mask, int) else (1.0 if mask & THROTTLE_BITS else 0.0)


def _ecc_or_remap(g: dict[str, Any]) -> float | None:
    parts = [g.get("ecc_uncorrected_total"), g.get("remapped_rows_uncorrectable"), g.get("row_remap_pending")]
    known = [p for p in parts if isinstance(p, int | float)]
    return None if not known else (1.0 if any(p > 0 for p in known) else 0.0)


GPU_DERIVED = {"throttle_power_or_thermal": _throttled, "ecc_or_remap": _ecc_or_remap}


def native(fleet: Fleet, metric: str) -> dict[Labels, float]:
    """Every series of `metric` at its own granularity (per GPU or per node)."""
    if metric in fleet._cache:
        return fleet._cache[metric]
    out: dict[Labels, float] = {}
    if metric == "node_last_seen_age_s":
        for name, info in fleet.nodes.items():
            if info["last_seen"] is not None:  # never reported: not "stopped reporting"
                age = max(0.0, (fleet.now - info["last_seen"]).total_seconds())
                out[(("node", name), ("pool", info["pool"]))] = age
    else:
        for name, snap in (fleet.snapshots or {}).items():
            pool = fleet.nodes[name]["pool"]
            if metric in GPU_NAMES or metric in GPU_DERIVED:
                for g in snap.get("gpus") or []:
                    value = GPU_DERIVED[metric](g) if metric in GPU_DERIVED else g.get(metric)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        out[(("gpu", str(g.get("index"))), ("node", name), ("pool", pool))] = float(value)
            else:
                section = snap.get("host" if metric in HOST_NAMES else "inference") or {}
                value = section.get(metric)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out[(("node", name), ("pool", pool))] = float(value)
    fleet._cache[metric] = out
    return out


SCOPE_KEYS = {"gpu": ("gpu", "node", "pool"), "node": ("node", "pool"), "pool": ("pool",), "fleet": ()}


def values(fleet: Fleet, rule: dict[str, Any]) -> dict[Labels, float]:
    """The rule's series: native series filtered by its matchers, aggregated to its scope."""
    matchers = [Matcher.model_validate(m) for m in rule.get("matchers") or []]
    keys = SCOPE_KEYS[rule["scope"]]
    groups: dict[Labels, list[float]] = defaultdict(list)
    for labels, value in native(fleet, rule["metric"]).items():
        as_dict = {**dict(labels), "alertname": rule["name"], "severity": rule["severity"]}
        if all(m.matches(as_dict) for m in matchers):
            groups[tuple((k, v) for k, v in labels if k in keys)].append(value)
    how = rule.get("aggregate", "max")
    agg = {"max": max, "min": min, "sum": sum, "avg": lambda xs: sum(xs) / len(xs)}[how]
    return {labels: float(agg(xs)) for labels, xs in groups.items()}
