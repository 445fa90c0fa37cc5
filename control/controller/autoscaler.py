"""What size a pool should have now: the autoscaler's decision, a pure function of the policy and what was observed.

No I/O here: the runtime observes the metrics (PostgreSQL/Redis), keeps the rules' last firing times and the
stored scale-in recommendations, calls `decide()` once per tick and turns a Decision into a ScalingAction. The
benchmark (bench/autoscale.py) and the tests run this same code. `policy` is one pool's validated scaling entry
(control.policy.schemas.PoolScaling, defaults filled in).

Semantics, in the order `decide()` applies them (docs/autoscaling.md has the long form):

1. Bounds. current < min_nodes: scale out to min_nodes (rule "min_nodes"), or further if a rule or the forecast
   asks for more. current > max_nodes: scale in to max_nodes at once (rule "max_nodes"; no stabilization). Every
   other target is clamped to [min_nodes, max_nodes]; a target clamped to the current size is no action.
2. Reactive scale-out. Rule r fires when v = observe(r.metric, r.window_s) > r.threshold x (1 + tolerance) and its
   cooldown has passed (now - last_fired[rule_key(r)] >= r.cooldown_s; a rule never fired has no cooldown).
   Its target is current + r.step. None (no data) never fires.
3. Predictive scale-out (predictive.enabled, a forecast_peak and a per_node known; the policy's per_node wins over
   the learned one): target = ceil(forecast_peak / per_node). It only ever adds capacity.
4. Precedence: the largest target wins; on equal targets the candidate listed first wins, in the order
   min_nodes, the rules as listed in the policy, predictive. Scale-out never waits for stabilization.
5. Scale-in, when nothing scales out. This tick's recommendation is current - scale_down.step when
   - every rule with a value is below threshold x (1 - tolerance) (a rule without data is ignored, but when no
     rule has data at all there is no evidence that the pool is idle and the recommendation stays current), and
   - the pool's gpu_util_pct, observed over SCALE_DOWN_GPU_WINDOW_S, is below scale_down.gpu_util_below_pct
     (no GPU data: no scale-in);
   otherwise current. With predictive on, a recommendation below what the forecast peak needs is raised to that
   (no scale-in just before a peak). Recommendations never go below min_nodes.
6. Stabilization (Kubernetes HPA's scaleDown.stabilizationWindowSeconds): the scale-in target is the highest of
   this tick's recommendation and the stored ones within [now - stabilization_window_s, now], and it is applied
   only when the stored recommendations cover the whole window: the oldest stored one not older than
   window + slack is at least window - slack old (slack = min(COVERAGE_SLACK_S, window / 2)). A fresh pool or a
   restarted controller (no history, or only history older than the window) therefore never scales in at once. One
   action removes at most scale_down.step nodes. A scale-out tick's recommendation is its target, so a pool that
   just grew does not shrink again before a whole window has passed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Observe = Callable[[str, int], float | None]  # (metric, window_s) -> the pool's mean over the window; None = no data

SCALE_DOWN_GPU_WINDOW_S = 60  # the window of the scale-down GPU check; the stabilization window adds the persistence
COVERAGE_SLACK_S = 30.0  # how much younger than the window the oldest recommendation may be (tick jitter)
LEARN_MIN_SAMPLES = 30  # healthy minutes needed before a per-node demand is learned
LEARN_PERCENTILE = 90.0


@dataclass(frozen=True)
class Decision:
    target: int  # the size the pool should have now; == current when there is nothing to do
    kind: Literal["scale_out", "scale_in", "none"]
    rule: str  # rule_key(rule), "predictive", "scale_down", "min_nodes", "max_nodes"; "" for none
    reason: str  # one sentence for the audit log, with the numbers
    metrics: dict[str, float | None] = field(default_factory=dict)  # every value looked at, by name
    recommendation: int = 0  # this tick's raw scale-in recommendation, to store for the stabilization window


def rule_key(rule: Mapping[str, Any]) -> str:
    """The name of a rule in actions and cooldowns: "gpu_util_pct>85"."""
    return f"{rule['metric']}>{float(rule['threshold']):g}"


def needed_for(demand: float, per_node: float) -> int:
    """Nodes needed to serve `demand` when one serves `per_node`: ceil(demand / per_node), never negative."""
    if not per_node > 0 or not math.isfinite(per_node):
        raise ValueError(f"per_node must be a positive number, not {per_node!r}")
    if not math.isfinite(demand):
        raise ValueError(f"demand must be a finite number, not {demand!r}")
    # The small tolerance keeps 20.000000001 / 10 from asking for a third node.
    return max(0, math.ceil(demand / per_node - 1e-9))


def lead_minutes(policy: Mapping[str, Any]) -> int:
    """How far ahead the predictive scale-out must look: the boot time (rounded up to minutes) plus the buffer,
    and never less than the policy's horizon."""
    p = policy["predictive"]
    return max(int(p["horizon_min"]), math.ceil(p["boot_time_s"] / 60) + int(p["buffer_min"]))


def learn_per_node(samples: Sequence[tuple[float, int, bool]]) -> float | None:
    """The demand one node serves while the pool meets its SLO, from per-minute (demand, nodes, healthy) samples:
    the LEARN_PERCENTILE-th percentile of demand / nodes over the healthy minutes with nodes and demand. None with
    fewer than LEARN_MIN_SAMPLES such minutes. A pool that was always over-provisioned learns a low value, which errs
    on the side of capacity."""
    ratios = sorted(d / n for d, n, healthy in samples if healthy and n > 0 and d > 0 and math.isfinite(d))
    if len(ratios) < LEARN_MIN_SAMPLES:
        return None
    # Nearest-rank percentile: an observed ratio, not an extrapolation.
    rank = max(0, math.ceil(LEARN_PERCENTILE / 100 * len(ratios)) - 1)
    return ratios[rank]


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:.3g}"


def decide(policy: Mapping[str, Any], current: int, observe: Observe, *, now: float,
           last_fired: Mapping[str, float], recommendations: Sequence[tuple[float, int]],
           forecast_peak: float | None = None, per_node: float | None = None) -> Decision:
    """The size `current` pool should have now under `policy` (see the module docstring for the rules).

    last_fired: rule key -> unix time of that rule's last scale-out action. recommendations: (unix time, size)
    stored by earlier ticks, any age (this tick's is not among them; it is returned in the Decision).
    forecast_peak: the highest forecast demand over lead_minutes(policy). per_node: the learned demand per node,
    used when the policy has none."""
    if current < 0:
        raise ValueError(f"current pool size must be >= 0, not {current}")
    lo, hi = int(policy["min_nodes"]), int(policy["max_nodes"])
    tol = float(policy["tolerance"])
    metrics: dict[str, float | None] = {}

    def clamp(n: int) -> int:
        return max(lo, min(hi, n))

    # Observe every rule (the audit shows them all, fired or not).
    values: list[tuple[Mapping[str, Any], str, float | None]] = []
    for rule in policy["rules"]:
        key = rule_key(rule)
        value = observe(rule["metric"], int(rule["window_s"]))
        values.append((rule, key, value))
        metrics[key] = value

    # Predictive: what the forecast peak needs.
    pred = policy["predictive"]
    unit = pred.get("per_node") or per_node
    needed: int | None = None
    if pred["enabled"] and forecast_peak is not None and unit:
        needed = needed_for(forecast_peak, unit)
        metrics.update(forecast_peak=forecast_peak, per_node=unit, forecast_needed=float(needed))

    if current > hi:
        return Decision(hi, "scale_in", "max_nodes", f"pool has {current} nodes, above max_nodes {hi}: scale in to "
                        f"{hi} now", metrics, hi)

    # Scale-out candidates, in precedence order for ties: (target, rule, reason).
    candidates: list[tuple[int, str, str]] = []
    if current < lo:
        candidates.append((lo, "min_nodes", f"pool has {current} nodes, below min_nodes {lo}"))
    held: list[str] = []
    for rule, key, value in values:
        limit = rule["threshold"] * (1 + tol)
        if value is None or value <= limit:
            continue
        since = last_fired.get(key)
        if since is not None and now - since < rule["cooldown_s"]:
            held.append(f"{key} is at {_fmt(value)} but cooling down for {rule['cooldown_s'] - (now - since):.0f} s")
            continue
        want = current + rule["step"]
        candidates.append((clamp(want), key,
                           f"{rule['metric']} {_fmt(value)} over {rule['window_s']} s is above {rule['threshold']:g} "
                           f"x (1 + {tol:g}) = {limit:.3g}: add {rule['step']}"
                           + (f" (clamped to max_nodes {hi})" if want > hi else "")))
    if needed is not None and clamp(needed) > current:
        candidates.append((clamp(needed), "predictive",
                           f"forecast peak {_fmt(forecast_peak)} within {lead_minutes(policy)} min needs {needed} nodes "
                           f"at {unit:.3g} per node" + (f" (clamped to max_nodes {hi})" if needed > hi else "")))
    best: tuple[int, str, str] | None = None
    for cand in candidates:
        if best is None or cand[0] > best[0]:
            best = cand
    if best is not None and best[0] > current:
        target, rule, why = best
        return Decision(target, "scale_out", rule, f"{why}: scale out {current} -> {target}", metrics, target)
    if candidates:  # a rule fired but the pool is already at max_nodes
        held.append(f"{candidates[0][1]} fired but the pool is at max_nodes {hi}")

    # Scale-in: this tick's recommendation.
    down = policy["scale_down"]
    gpu = observe("gpu_util_pct", SCALE_DOWN_GPU_WINDOW_S)
    metrics["scale_down.gpu_util_pct"] = gpu
    blockers: list[str] = []
    seen = [(rule, key, v) for rule, key, v in values if v is not None]
    if values and not seen:
        blockers.append("no rule has data")
    for rule, _key, value in seen:
        floor = rule["threshold"] * (1 - tol)
        if value >= floor:
            blockers.append(f"{rule['metric']} {_fmt(value)} is not below {rule['threshold']:g} x (1 - {tol:g}) "
                            f"= {floor:.3g}")
    if gpu is None:
        blockers.append("no gpu_util_pct data")
    elif gpu >= down["gpu_util_below_pct"]:
        blockers.append(f"gpu_util_pct {_fmt(gpu)} is not below {down['gpu_util_below_pct']:g}")
    raw = current if blockers else current - int(down["step"])
    if needed is not None and needed > raw:
        if not blockers:
            blockers.append(f"the forecast peak {_fmt(forecast_peak)} needs {needed} nodes")
        raw = min(current, needed)
    raw = clamp(min(raw, current))
    metrics["recommendation"] = float(raw)

    # Stabilization: the highest recommendation in the window, and only with the whole window covered.
    window = float(down["stabilization_window_s"])
    slack = min(COVERAGE_SLACK_S, window / 2)
    in_window = [size for ts, size in recommendations if now - window <= ts <= now]
    stabilized = max([raw, *in_window])
    metrics["stabilized"] = float(stabilized)
    recent = [ts for ts, _ in recommendations if now - window - slack <= ts <= now]
    covered = window <= 0 or (bool(recent) and min(recent) <= now - window + slack)
    if stabilized < current:
        if not covered:
            return Decision(current, "none", "", f"would scale in to {stabilized}, but the recommendations do not "
                            f"cover the {window:.0f} s stabilization window yet", metrics, raw)
        target = max(stabilized, current - int(down["step"]), lo)
        return Decision(target, "scale_in", "scale_down",
                        f"every recommendation over the last {window:.0f} s is at most {stabilized} "
                        f"(gpu_util_pct {_fmt(gpu)} < {down['gpu_util_below_pct']:g}): scale in {current} -> {target}",
                        metrics, raw)
    if raw < current:
        reason = f"scale-in to {raw} held by the stabilization window: a recommendation of {stabilized} within " \
                 f"the last {window:.0f} s"
    else:
        reason = "; ".join(held + blockers) or "nothing to do"
    return Decision(current, "none", "", reason, metrics, raw)
