"""The schema of each policy kind (pydantic v2, unknown keys refused) and the translation of errors into paths.

Scheduler score, as the gateway computes it from a `scheduler` document:

    score(node) = sum(s.weight * (1 - x if s.invert else x) for s in scorers), x = the metric normalised to [0, 1]

so the classic `0.6*gpu_free + 0.3*(1-cpu_load) - 0.1*latency` is the scorers
`{gpu_free, 0.6}`, `{cpu_load, 0.3, invert}` and `{latency, -0.1}` (a negative weight is a cost). `score()` below is
that formula, for the gateway and for tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from control.alerts.schema import Alerts
from control.policy.deployment import Deployment
from core.diffing import error_path

KINDS = ("scheduler", "scaling", "priorities", "power", "alerts", "deployment")

NAME = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
PoolName = Annotated[str, Field(pattern=NAME)]
Weight = Annotated[float, Field(ge=-10, le=10)]
Seconds = Annotated[int, Field(ge=0, le=7 * 86400)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)


# --- scheduler --------------------------------------------------------------------------------------------------
SCORER_METRICS = ("gpu_free", "cpu_load", "latency", "queue_depth", "kv_cache", "in_flight", "expected_wait",
                  "prefix_affinity", "expected_ttft")


class Scorer(Strict):
    metric: Literal["gpu_free", "cpu_load", "latency", "queue_depth", "kv_cache", "in_flight", "expected_wait",
                    "prefix_affinity", "expected_ttft"] = Field(
        description="gpu_free, cpu_load, latency, queue_depth, kv_cache: from the node's latest sample; in_flight: "
                    "the gateway's own requests in flight to the node / load.node_capacity; expected_wait: the time "
                    "a new request should take on the node, seconds per request slot as the gateway measured them "
                    "(Little's law, an average per node; the fleet median for a node not measured yet) x (in flight "
                    "+ 1), normalised as E / (E + scale), scale = the fleet median seconds per slot over the healthy "
                    "nodes x load.node_capacity (invert it: a shorter wait is better); prefix_affinity: the share "
                    "of the prompt's leading blocks the gateway recently sent to the node (its approximate prefix "
                    "cache, see the prefix section), 0 below prefix.min_match_blocks; expected_ttft (streamed "
                    "requests only): the time to first token the node's streamed requests recently had, as the "
                    "gateway measured it, normalised as T / (T + the fleet median T) (invert it)")
    weight: Weight
    invert: bool = Field(False, description="score 1 - x instead of x (x is the metric normalised to [0, 1])")


class Filters(Strict):
    require_model: bool = True
    exclude_states: list[Literal["draining", "cordoned"]] = ["draining", "cordoned"]
    max_gpu_util_pct: float = Field(99.0, ge=0, le=100)
    max_queue_depth: int = Field(256, ge=0, le=100_000)
    max_kv_cache_pct: float = Field(98.0, ge=0, le=100)
    max_stale_s: int = Field(15, ge=1, le=3600)
    require_inference_up: bool = Field(
        True, description="a node whose sample has no inference-server metrics (the agent could not scrape it) "
                          "counts as failed")


class Picker(Strict):
    strategy: Literal["highest", "round_robin", "least_in_flight", "cache_aware"] = Field(
        "highest", description="highest: the best score (ties within tie_epsilon broken by tie_break); "
                               "round_robin: cycle over the nodes that pass the filters, scores ignored; "
                               "least_in_flight: the node with the fewest requests this gateway has in flight to "
                               "it, random tie-break, scores ignored; cache_aware: SGLang's router policy (the "
                               "longest prefix match when it covers cache_threshold of the prompt, else the node "
                               "holding the least; the fewest in flight when the load is imbalanced), scores "
                               "ignored. The filters apply to all four")
    tie_break: Literal["random", "first"] = "random"
    tie_epsilon: float = Field(0.01, ge=0, le=1)
    cache_threshold: float = Field(0.5, ge=0, le=1, description="cache_aware: share of the prompt's blocks a node "
                                                                "must hold to get it by affinity")
    balance_abs_threshold: int = Field(32, ge=0, le=100_000, description="cache_aware: the load counts as "
                                       "imbalanced when the most loaded node has this many more requests in flight "
                                       "than the least")
    balance_rel_threshold: float = Field(1.1, ge=1, le=100, description="cache_aware: ... and more than this "
                                                                        "times as many")


class Prefix(Strict):
    """The gateway's approximate index of what each node has cached (control/scheduler/prefix_index.py), read by
    the prefix_affinity scorer and the cache_aware picker."""

    block_chars: int = Field(256, ge=8, le=4096, description="characters of prompt text per block (about 64 tokens "
                                                             "at 256: four of vLLM's 16-token blocks)")
    index_blocks: int = Field(10_000, ge=1, le=1_000_000, description="blocks remembered per node (an LRU): about "
                                                                      "the node's KV cache in blocks")
    min_match_blocks: int = Field(2, ge=1, le=100_000, description="prefix_affinity: a node holding fewer of the "
                                                                   "prompt's leading blocks scores 0")
    max_blocks: int = Field(128, ge=1, le=100_000, description="leading blocks of a prompt looked at (bounds the "
                                                                "cost of a very long prompt)")
    source: Literal["sent", "kv_events"] = Field(
        "sent", description="what fills the index: sent = the prompts the gateway sent to each node (approximate); "
                            "kv_events = the nodes' own KV-cache events (vLLM's BlockStored/BlockRemoved/"
                            "AllBlocksCleared over ZMQ, received on the gateway's SWITCHYARD_GATEWAY_KV_EVENTS "
                            "endpoint): what each node really caches. block_chars must then equal the engines' "
                            "block size. A node whose events have not arrived yet, or whose event sequence had a "
                            "gap in the last 10 s, is indexed by what was sent (docs/gateway.md)")


class Latency(Strict):
    source: Literal["rtt", "ttft", "max"] = Field(
        "rtt", description="rtt: the agent's net_rtt_ms; ttft: the gateway's own observed time to first byte "
                           "(falls back to the node's ttft_p50_s); max: the larger of the two")
    normalise: Literal["fixed", "fleet"] = Field(
        "fixed", description="fixed: x = latency / scale_ms, capped at 1; fleet: x = (latency - fleet min) / "
                             "(fleet max - fleet min)")
    scale_ms: float = Field(100.0, gt=0, le=600_000)


class Load(Strict):
    node_capacity: int = Field(32, ge=1, le=100_000, description="requests a node serves at once (normalises "
                                                                  "in_flight and the burst correction)")
    burst_correction: float = Field(
        1.0, ge=0, le=10, description="share of the score's span a node loses when requests sent to it since its "
                                      "last sample fill its capacity; keeps a burst from herding (0 turns it off)")


class Retry(Strict):
    max_attempts: int = Field(3, ge=1, le=10, description="nodes tried per request (failures before the first byte)")
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    first_byte_timeout_s: float = Field(60.0, gt=0, le=3600, description="time to the first byte of the answer")
    read_timeout_s: float = Field(120.0, gt=0, le=3600, description="longest pause between bytes after the first")


class Quarantine(Strict):
    failures: int = Field(3, ge=1, le=1000, description="consecutive failures that quarantine a node")
    cooldown_s: float = Field(30.0, gt=0, le=86_400, description="after it the node gets traffic again; its next "
                                                                 "failure sends it straight back (half-open)")


class Cache(Strict):
    enabled: bool = True
    ttl_s: int = Field(300, ge=1, le=7 * 86_400)
    max_entry_bytes: int = Field(1_048_576, ge=1024, le=64 * 1_048_576)
    shared: bool = Field(False, description="false: an answer is served only to the user who asked it (per-user "
                                             "keys, so timing cannot reveal another user's question); true: to "
                                             "every caller (one tenant)")


class Shedding(Strict):
    retry_after_s: int = Field(2, ge=1, le=3600, description="Retry-After on 429 and 503 answers")


class Slo(Strict):
    """The latency target the gateway routes for past saturation (issue 14): see docs/gateway.md (*The SLO*)."""

    latency_s: float | None = Field(
        None, gt=0, le=3600, description="seconds a request should finish within (the SLO goodput counts against); "
                                         "null: none, requests are routed by score alone")
    margin: float = Field(
        0.8, gt=0, le=1, description="a node counts as past the SLO when its expected wait exceeds latency_s x this "
                                     "(expected_wait is for the mean request; a longer answer takes longer), until "
                                     "the gateway has measured how far past their expected wait the node's slow "
                                     "requests end (its tail factor), which then replaces 1 / margin; past the SLO "
                                     "on every node, a request that asks for a longer answer than the fleet's mean "
                                     "goes to the best node, any other to the one with the fewest requests in flight")


class Scheduler(Strict):
    scorers: list[Scorer] = Field(min_length=1, max_length=len(SCORER_METRICS))
    filters: Filters = Field(default_factory=Filters)
    picker: Picker = Field(default_factory=Picker)
    # Sections added with the gateway; each has defaults so that older documents stay valid.
    latency: Latency = Field(default_factory=Latency)
    load: Load = Field(default_factory=Load)
    retry: Retry = Field(default_factory=Retry)
    quarantine: Quarantine = Field(default_factory=Quarantine)
    cache: Cache = Field(default_factory=Cache)
    shedding: Shedding = Field(default_factory=Shedding)
    prefix: Prefix = Field(default_factory=Prefix)
    slo: Slo = Field(default_factory=Slo)

    @field_validator("scorers")
    @classmethod
    def _unique_metrics(cls, scorers: list[Scorer]) -> list[Scorer]:
        seen = [s.metric for s in scorers]
        dupes = sorted({m for m in seen if seen.count(m) > 1})
        if dupes:
            raise ValueError(f"each metric may have one scorer; repeated: {', '.join(dupes)}")
        return scorers


def score(document: dict[str, Any], values: dict[str, float]) -> float:
    """A node's score under a scheduler document, `values` being each scorer metric normalised to [0, 1].
    A scorer with weight 0 contributes nothing, so its value may be left out."""
    total = 0.0
    for s in document["scorers"]:
        if s["weight"] == 0:
            continue
        x = values[s["metric"]]
        total += s["weight"] * ((1.0 - x) if s.get("invert") else x)
    return total


# --- scaling ----------------------------------------------------------------------------------------------------
SCALING_METRICS = ("gpu_util_pct", "queue_length", "kv_cache_usage_pct", "ttft_p95_s", "e2e_p95_s", "cpu_util_pct")


class ScaleRule(Strict):
    metric: Literal["gpu_util_pct", "queue_length", "kv_cache_usage_pct", "ttft_p95_s", "e2e_p95_s", "cpu_util_pct"]
    threshold: float = Field(ge=0, le=1_000_000, description="scale out when the pool's value is above this")
    step: int = Field(ge=1, le=100, description="nodes added")
    cooldown_s: Seconds
    window_s: int = Field(60, ge=10, le=3600, description="the pool's value is the mean over this many seconds")

    @model_validator(mode="after")
    def _percent_in_range(self) -> ScaleRule:
        if self.metric.endswith("_pct") and self.threshold > 100:
            raise ValueError(f"threshold {self.threshold:g} is above 100 for the percentage {self.metric}")
        return self


class ScaleDown(Strict):
    stabilization_window_s: Seconds
    step: int = Field(1, ge=1, le=100)
    gpu_util_below_pct: float = Field(30.0, ge=0, le=100)
    drain_timeout_s: int = Field(300, ge=0, le=86400, description="longest wait for a draining node's in-flight work")


class Predictive(Strict):
    enabled: bool = False
    horizon_min: int = Field(10, ge=1, le=24 * 60)
    metric: Literal["request_rate", "queue_length"] = Field("request_rate", description="the demand forecast")
    per_node: float | None = Field(None, gt=0, le=1_000_000,
                                   description="demand one node serves (req/s or queued requests); null = learned")
    boot_time_s: int = Field(180, ge=0, le=86400, description="how long a new node takes to serve")
    buffer_min: int = Field(2, ge=0, le=240, description="extra lead on top of the boot time")


class Guard(Strict):
    """Bounds for the guard that rolls a policy change back when the fleet gets worse after it."""

    enabled: bool = True
    watch_window_s: int = Field(600, ge=60, le=86400, description="how long a change is watched")
    baseline_s: int = Field(3600, ge=300, le=7 * 86400, description="the period before the change compared with")
    min_requests: int = Field(50, ge=1, le=10_000_000, description="fewer requests in the watch window: no verdict")
    p95_latency_ratio: float = Field(1.5, ge=1, le=100, description="roll back when p95 latency exceeds baseline x this")
    error_rate_increase_pct: float = Field(5.0, ge=0, le=100, description="roll back when the error rate rises this much")
    queue_ratio: float = Field(2.0, ge=1, le=100, description="roll back when the mean queue exceeds baseline x this")
    queue_floor: float = Field(10.0, ge=0, le=1_000_000, description="queues below this never count as degraded")
    kinds: list[Literal["scheduler", "scaling", "priorities", "power"]] = Field(
        default_factory=lambda: ["scheduler", "priorities", "power", "scaling"],
        description="policy kinds whose changes are watched")


class PoolScaling(Strict):
    min_nodes: int = Field(ge=0, le=10_000)
    max_nodes: int = Field(ge=0, le=10_000)
    tolerance: float = Field(0.1, ge=0, le=1, description="no action while within threshold x (1 +- tolerance)")
    rules: list[ScaleRule] = Field(max_length=32)
    scale_down: ScaleDown
    predictive: Predictive

    @field_validator("max_nodes")
    @classmethod
    def _max_not_below_min(cls, value: int, info: Any) -> int:
        low = info.data.get("min_nodes")
        if low is not None and value < low:
            raise ValueError(f"max_nodes {value} is below min_nodes {low}")
        return value


class Scaling(Strict):
    default: PoolScaling = Field(description="rules for every pool without its own entry")
    pools: dict[PoolName, PoolScaling] = Field(default_factory=dict, max_length=1000)
    guard: Guard = Field(default_factory=Guard, description="automatic rollback of policy changes")


# --- priorities -------------------------------------------------------------------------------------------------
class PriorityClass(Strict):
    name: str = Field(pattern=NAME)
    sheddable: bool = Field(description="refused with 429 + Retry-After when the fleet is saturated")
    queue_limit: int = Field(ge=0, le=1_000_000, description="requests that may wait; 0 = never queued")
    queue_timeout_s: float = Field(gt=0, le=3600)


class Priorities(Strict):
    classes: list[PriorityClass] = Field(min_length=1, max_length=16, description="most important first")
    default_class: str

    @model_validator(mode="after")
    def _names(self) -> Priorities:
        names = [c.name for c in self.classes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"class names must be unique; repeated: {', '.join(dupes)}")
        if self.default_class not in names:
            raise ValueError(f"default_class {self.default_class!r} is not one of the classes")
        return self


# --- power ------------------------------------------------------------------------------------------------------
class PoolPower(Strict):
    """uncapped; cap (cap_w watts per GPU); cap_pct (pct % of each card's default limit); off_peak (pct % of the
    default outside the peak hours [peak_start_hour, peak_end_hour) UTC, uncapped inside them)."""

    mode: Literal["uncapped", "cap", "cap_pct", "off_peak"] = "uncapped"
    cap_w: float | None = Field(None, ge=50, le=2000, description="per-GPU power limit in watts, when mode is cap")
    pct: float | None = Field(None, ge=10, le=100, description="percent of the card's default limit (cap_pct, off_peak)")
    peak_start_hour: int = Field(12, ge=0, le=23, description="off_peak: first peak hour (UTC)")
    peak_end_hour: int = Field(18, ge=0, le=24, description="off_peak: the hour the peak ends (UTC)")

    @model_validator(mode="after")
    def _cap_with_mode(self) -> PoolPower:
        if self.mode == "cap" and self.cap_w is None:
            raise ValueError("mode cap needs cap_w")
        if self.mode != "cap" and self.cap_w is not None:
            raise ValueError("cap_w is only allowed with mode cap")
        if self.mode in ("cap_pct", "off_peak") and self.pct is None:
            raise ValueError(f"mode {self.mode} needs pct (percent of the card's default power limit)")
        if self.mode not in ("cap_pct", "off_peak") and self.pct is not None:
            raise ValueError("pct is only allowed with mode cap_pct or off_peak")
        if self.mode == "off_peak" and self.peak_start_hour == self.peak_end_hour % 24:
            raise ValueError("peak_start_hour and peak_end_hour are equal: the peak would be empty")
        return self


class Power(Strict):
    default: PoolPower
    pools: dict[PoolName, PoolPower] = Field(default_factory=dict, max_length=1000)


# --- alerts: the schema lives in control/alerts/schema.py, beside the evaluator that reads it -------------------
SCHEMAS: dict[str, type[BaseModel]] = {
    "scheduler": Scheduler,
    "scaling": Scaling,
    "priorities": Priorities,
    "power": Power,
    "alerts": Alerts,
    "deployment": Deployment,  # control/policy/deployment.py, with the pool-fit check
}


class DocumentError(ValueError):
    """A document that its schema refuses; `fields` maps each bad path to the reason."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        first = next(iter(fields.items()))
        super().__init__(f"invalid document: {first[0]}: {first[1]}" + (
            f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""))


def validate(kind: str, document: Any) -> dict[str, Any]:
    """The document normalised by its schema (defaults filled in), or DocumentError with the path of each fault."""
    schema = SCHEMAS[kind]
    if not isinstance(document, dict):
        raise DocumentError({"$": f"a {kind} document must be a JSON object, not {type(document).__name__}"})
    try:
        model = schema.model_validate(document)
    except ValidationError as exc:
        fields: dict[str, str] = {}
        for err in exc.errors(include_url=False):
            # Drop pydantic's internal step names (e.g. 'function-after[...]') that are not part of the document.
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
            msg = err["msg"].removeprefix("Value error, ")
            fields.setdefault(error_path(loc), msg)
        raise DocumentError(fields) from None
    return model.model_dump(mode="json")


def for_pool(document: dict[str, Any], pool: str) -> dict[str, Any]:
    """A per-pool document's (scaling, power) entry for `pool`: its own under `pools`, else `default`. The document
    must be validated (validate() fills both in)."""
    return document["pools"].get(pool, document["default"])


def json_schema(kind: str) -> dict[str, Any]:
    return SCHEMAS[kind].model_json_schema()
