"""The scheduler policy document turned into the plain values the core and the gateway read on every request.

Built once per policy change from a document that `control.policy.schemas.validate` has normalised (so every
section added after a document was stored is present with its default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from control.policy.defaults import default_document


@dataclass(frozen=True)
class PriorityClass:
    name: str
    rank: int  # 0 = most important
    sheddable: bool
    queue_limit: int
    queue_timeout_s: float


@dataclass(frozen=True)
class Priorities:
    classes: dict[str, PriorityClass]
    default_class: str

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Priorities:
        classes = {c["name"]: PriorityClass(c["name"], i, bool(c["sheddable"]), int(c["queue_limit"]),
                                            float(c["queue_timeout_s"]))
                   for i, c in enumerate(doc["classes"])}
        return cls(classes, doc["default_class"])

    def ordered(self) -> list[PriorityClass]:
        return sorted(self.classes.values(), key=lambda c: c.rank)

    @property
    def top_class(self) -> str:
        return self.ordered()[0].name

    def class_or_default(self, name: str) -> str:
        """`name` when the policy defines it, else the default class (a blank or since-removed class)."""
        return name if name in self.classes else self.default_class

    def ranks_above(self, name: str, other: str) -> bool:
        """True when class `name` is more important than class `other` (both defined)."""
        return self.classes[name].rank < self.classes[other].rank


@dataclass(frozen=True)
class Config:
    """Everything the core needs from a `scheduler` document."""

    weights: dict[str, tuple[float, bool]]  # metric -> (weight, invert); zero weights left out
    require_model: bool
    exclude_states: frozenset[str]
    max_gpu_util_pct: float
    max_queue_depth: int
    max_kv_cache_pct: float
    max_stale_s: float
    require_inference_up: bool
    tie_break: str
    tie_epsilon: float
    latency_source: str
    latency_normalise: str
    latency_scale_ms: float
    node_capacity: int
    burst_correction: float
    max_attempts: int
    connect_timeout_s: float
    first_byte_timeout_s: float
    read_timeout_s: float
    quarantine_failures: int
    quarantine_cooldown_s: float
    cache_enabled: bool
    cache_ttl_s: int
    cache_max_entry_bytes: int
    cache_shared: bool  # False: answers are cached per user, so timing cannot reveal what someone else asked
    retry_after_s: int
    strategy: str = "highest"  # picker: highest | round_robin | least_in_flight | cache_aware
    # The prefix index (prefix_affinity scorer, cache_aware picker) and SGLang's cache_aware thresholds.
    prefix_block_chars: int = 256
    prefix_index_blocks: int = 10_000
    prefix_min_match: int = 2
    prefix_max_blocks: int = 128
    prefix_source: str = "sent"  # what fills the index: the gateway's sends, or the nodes' KV events (kv_events.py)
    cache_threshold: float = 0.5
    balance_abs: int = 32
    balance_rel: float = 1.1
    # The SLO (slo section): 0 = none. A node is past it when its expected wait x its tail factor (1 / slo_margin
    # until measured) exceeds slo_s; past it everywhere, a short answer goes to the fewest in flight (core.py).
    slo_s: float = 0.0
    slo_margin: float = 0.8

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Config:
        f, p, lat, load = doc["filters"], doc["picker"], doc["latency"], doc["load"]
        retry, quar, cache, shed = doc["retry"], doc["quarantine"], doc["cache"], doc["shedding"]
        weights = {s["metric"]: (float(s["weight"]), bool(s.get("invert"))) for s in doc["scorers"]
                   if s["weight"] != 0}
        return cls(
            weights=weights, require_model=bool(f["require_model"]), exclude_states=frozenset(f["exclude_states"]),
            max_gpu_util_pct=float(f["max_gpu_util_pct"]), max_queue_depth=int(f["max_queue_depth"]),
            max_kv_cache_pct=float(f["max_kv_cache_pct"]), max_stale_s=float(f["max_stale_s"]),
            require_inference_up=bool(f["require_inference_up"]), tie_break=p["tie_break"],
            tie_epsilon=float(p["tie_epsilon"]), latency_source=lat["source"], latency_normalise=lat["normalise"],
            latency_scale_ms=float(lat["scale_ms"]), node_capacity=int(load["node_capacity"]),
            burst_correction=float(load["burst_correction"]), max_attempts=int(retry["max_attempts"]),
            connect_timeout_s=float(retry["connect_timeout_s"]),
            first_byte_timeout_s=float(retry["first_byte_timeout_s"]), read_timeout_s=float(retry["read_timeout_s"]),
            quarantine_failures=int(quar["failures"]), quarantine_cooldown_s=float(quar["cooldown_s"]),
            cache_enabled=bool(cache["enabled"]), cache_ttl_s=int(cache["ttl_s"]),
            cache_max_entry_bytes=int(cache["max_entry_bytes"]), cache_shared=bool(cache.get("shared", False)),
            retry_after_s=int(shed["retry_after_s"]),
            strategy=p.get("strategy", "highest"), **_prefix_fields(doc), **_slo_fields(doc),
        )

    @property
    def uses_prefix(self) -> bool:
        """Whether requests need their prompt's block keys (and sends recorded in the prefix index)."""
        return "prefix_affinity" in self.weights or self.strategy == "cache_aware"

    @property
    def span(self) -> float:
        """The width of the score's range (sum of |weight| of the metric scorers, not the per-request ones
        in_flight, expected_wait, prefix_affinity and expected_ttft); 1 when every weight is 0."""
        total = sum(abs(w) for m, (w, _) in self.weights.items()
                    if m not in ("in_flight", "expected_wait", "prefix_affinity", "expected_ttft"))
        return total or 1.0

    @property
    def burst_cost(self) -> float:
        """What one request sent since the node's last sample takes off its score: a node whose unseen requests
        fill its capacity loses `burst_correction` times the score's whole span, whatever the weights."""
        return self.burst_correction * self.span / self.node_capacity


def _prefix_fields(doc: dict[str, Any]) -> dict[str, Any]:
    pre, p = doc.get("prefix") or {}, doc["picker"]
    return dict(
        prefix_block_chars=int(pre.get("block_chars", 256)), prefix_index_blocks=int(pre.get("index_blocks", 10_000)),
        prefix_min_match=int(pre.get("min_match_blocks", 2)), prefix_max_blocks=int(pre.get("max_blocks", 128)),
        prefix_source=str(pre.get("source", "sent")),
        cache_threshold=float(p.get("cache_threshold", 0.5)), balance_abs=int(p.get("balance_abs_threshold", 32)),
        balance_rel=float(p.get("balance_rel_threshold", 1.1)),
    )


def _slo_fields(doc: dict[str, Any]) -> dict[str, Any]:
    slo = doc.get("slo") or {}
    return dict(slo_s=float(slo.get("latency_s") or 0.0), slo_margin=float(slo.get("margin", 0.8)))


def default_config() -> Config:
    from control.policy.schemas import validate

    return Config.from_document(validate("scheduler", default_document("scheduler")))


def default_priorities() -> Priorities:
    return Priorities.from_document(default_document("priorities"))
