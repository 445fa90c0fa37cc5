"""The autoscaler's decision with a controllable clock: cooldown, tolerance, stabilization, min/max, step,
precedence, predictive. Pure functions; no database."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from control.controller.autoscaler import (
    Decision,
    decide,
    lead_minutes,
    learn_per_node,
    needed_for,
    rule_key,
)
from control.controller.forecast import forecast
from control.policy.defaults import default_document
from control.policy.schemas import validate

NOW = 1_800_000_000.0
GPU, QUEUE = "gpu_util_pct>85", "queue_length>50"


def policy(**changes: Any) -> dict[str, Any]:
    """The default pool policy (gpu_util_pct>85 step 2 cooldown 300, queue_length>50 step 1 cooldown 600,
    tolerance 0.1, scale-down below 30 % after 300 s, min 1, max 64), validated, with `changes` applied."""
    doc = default_document("scaling")
    pool = doc["default"]
    for key, value in changes.items():
        if isinstance(value, dict):
            pool[key].update(value)
        else:
            pool[key] = value
    return validate("scaling", doc)["default"]


def obs(**values: float | None) -> Callable[[str, int], float | None]:
    """An observer returning fixed values per metric (missing metrics: no data)."""
    return lambda metric, window_s: values.get(metric)


def run(pol: dict[str, Any], current: int, observe: Callable[[str, int], float | None], *, now: float = NOW,
        last_fired: dict[str, float] | None = None, recs: list[tuple[float, int]] | None = None,
        **kw: Any) -> Decision:
    return decide(pol, current, observe, now=now, last_fired=last_fired or {}, recommendations=recs or [], **kw)


# --- rule keys and helpers -------------------------------------------------------------------------------------
def test_rule_key_formats_the_threshold_compactly() -> None:
    assert rule_key({"metric": "gpu_util_pct", "threshold": 85.0}) == GPU
    assert rule_key({"metric": "ttft_p95_s", "threshold": 1.5}) == "ttft_p95_s>1.5"


def test_needed_for_rounds_up_and_refuses_a_bad_per_node() -> None:
    assert needed_for(95, 10) == 10
    assert needed_for(100, 10) == 10
    assert needed_for(100.0000000001, 10) == 10  # float noise does not buy a node
    assert needed_for(100.5, 10) == 11
    assert needed_for(0, 10) == 0 and needed_for(-5, 10) == 0
    with pytest.raises(ValueError, match="per_node must be a positive number, not 0"):
        needed_for(10, 0)
    with pytest.raises(ValueError, match="demand must be a finite number"):
        needed_for(math.nan, 10)


def test_lead_is_boot_time_plus_buffer_but_at_least_the_horizon() -> None:
    assert lead_minutes(policy(predictive={"boot_time_s": 180, "buffer_min": 2, "horizon_min": 10})) == 10
    assert lead_minutes(policy(predictive={"boot_time_s": 610, "buffer_min": 2, "horizon_min": 10})) == 13


def test_learn_per_node_uses_healthy_minutes_only_and_needs_enough() -> None:
    healthy = [(float(d), 10, True) for d in range(50, 100)]  # 5..9.9 per node
    assert learn_per_node(healthy[:29]) is None
    learned = learn_per_node(healthy)
    assert learned is not None and 9.0 <= learned <= 9.9  # a high percentile, not the mean
    # Overloaded minutes (the SLO missed) must not teach that a node serves 20.
    assert learn_per_node(healthy + [(200.0, 10, False)] * 100) == learned
    assert learn_per_node([(0.0, 10, True)] * 100 + [(50.0, 0, True)] * 100) is None


# --- reactive scale-out -----------------------------------------------------------------------------------------
def test_a_rule_above_threshold_adds_its_step_and_reports_the_values() -> None:
    d = run(policy(), 4, obs(gpu_util_pct=96.0, queue_length=3.0))
    assert (d.kind, d.target, d.rule) == ("scale_out", 6, GPU)
    assert d.metrics[GPU] == 96.0 and d.metrics[QUEUE] == 3.0
    assert "gpu_util_pct 96" in d.reason and "4 -> 6" in d.reason
    d = run(policy(), 4, obs(gpu_util_pct=50.0, queue_length=80.0))
    assert (d.kind, d.target, d.rule) == ("scale_out", 5, QUEUE)


def test_tolerance_band_around_the_threshold_does_nothing() -> None:
    # 85 x 1.05 = 89.25 is above the threshold but inside the 10 % band: no scale-out, and no scale-in either.
    d = run(policy(), 4, obs(gpu_util_pct=85 * 1.05, queue_length=0.0))
    assert (d.kind, d.target, d.rule) == ("none", 4, "")
    assert d.recommendation == 4
    assert run(policy(), 4, obs(gpu_util_pct=85 * 1.11, queue_length=0.0)).kind == "scale_out"
    assert run(policy(tolerance=0.0), 4, obs(gpu_util_pct=85 * 1.05, queue_length=0.0)).kind == "scale_out"


def test_cooldown_blocks_a_rule_until_it_has_passed() -> None:
    hot = obs(gpu_util_pct=97.0, queue_length=0.0)
    d = run(policy(), 6, hot, last_fired={GPU: NOW - 299})
    assert d.kind == "none" and d.target == 6
    assert "cooling down for 1 s" in d.reason
    d = run(policy(), 6, hot, last_fired={GPU: NOW - 300})
    assert (d.kind, d.target, d.rule) == ("scale_out", 8, GPU)
    # Cooldowns are per rule: the queue rule fires while the GPU rule cools down.
    d = run(policy(), 6, obs(gpu_util_pct=97.0, queue_length=90.0), last_fired={GPU: NOW - 10})
    assert (d.kind, d.target, d.rule) == ("scale_out", 7, QUEUE)


def test_cooldown_over_a_sequence_of_ticks() -> None:
    pol, size, fired = policy(), 2, {}
    sizes = []
    for tick in range(0, 700, 60):  # one tick a minute, GPU hot throughout
        d = run(pol, size, obs(gpu_util_pct=99.0, queue_length=0.0), now=NOW + tick, last_fired=fired)
        if d.kind == "scale_out":
            fired[d.rule] = NOW + tick
            size = d.target
        sizes.append(size)
    # Fires at 0 s, 300 s and 600 s: never twice within 300 s.
    assert sizes == [4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 8, 8]


def test_no_data_never_fires() -> None:
    d = run(policy(), 3, obs())
    assert d.kind == "none" and d.metrics[GPU] is None and d.metrics[QUEUE] is None


def test_largest_target_wins_and_ties_go_to_the_first_rule() -> None:
    both = obs(gpu_util_pct=99.0, queue_length=99.0)
    assert run(policy(), 4, both).rule == GPU  # +2 beats +1
    rules = default_document("scaling")["default"]["rules"]
    bigger_queue = [dict(rules[0]), dict(rules[1], step=3)]
    d = run(policy(rules=bigger_queue), 4, both)
    assert (d.target, d.rule) == (7, QUEUE)
    equal = [dict(rules[0]), dict(rules[1], step=2)]
    assert run(policy(rules=equal), 4, both).rule == GPU
    assert run(policy(rules=list(reversed(equal))), 4, both).rule == QUEUE


# --- bounds ------------------------------------------------------------------------------------------------------
def test_below_min_scales_out_to_min_and_above_max_scales_in_at_once() -> None:
    d = run(policy(min_nodes=3), 1, obs(gpu_util_pct=10.0, queue_length=0.0))
    assert (d.kind, d.target, d.rule) == ("scale_out", 3, "min_nodes")
    # No stabilization history at all, yet the pool above max shrinks now.
    d = run(policy(max_nodes=5), 9, obs(gpu_util_pct=99.0, queue_length=0.0))
    assert (d.kind, d.target, d.rule) == ("scale_in", 5, "max_nodes")
    assert "above max_nodes 5" in d.reason


def test_targets_are_clamped_to_max_and_a_clamp_to_current_is_no_action() -> None:
    hot = obs(gpu_util_pct=99.0, queue_length=0.0)
    d = run(policy(max_nodes=5), 4, hot)
    assert (d.kind, d.target) == ("scale_out", 5) and "clamped to max_nodes 5" in d.reason
    d = run(policy(max_nodes=5), 5, hot)
    assert (d.kind, d.target) == ("none", 5) and "at max_nodes 5" in d.reason


def test_scale_in_never_goes_below_min() -> None:
    pol = policy(min_nodes=2)
    cold = obs(gpu_util_pct=5.0, queue_length=0.0)
    recs = [(NOW - s, 1) for s in range(0, 330, 30)]
    assert run(pol, 2, cold, recs=recs).kind == "none"
    d = run(pol, 3, cold, recs=recs)
    assert (d.kind, d.target) == ("scale_in", 2)


# --- scale-in and stabilization ----------------------------------------------------------------------------------
def replay(pol: dict[str, Any], size: int, utils: list[float], tick_s: int = 30) -> list[int]:
    """One tick every tick_s with the given GPU utilisations; the recommendations are stored as the runtime does."""
    recs: list[tuple[float, int]] = []
    sizes = []
    for i, util in enumerate(utils):
        now = NOW + i * tick_s
        d = run(pol, size, obs(gpu_util_pct=util, queue_length=0.0), now=now, recs=recs)
        recs.append((now, d.recommendation))
        size = d.target
        sizes.append(size)
    return sizes


def test_a_dip_shorter_than_the_window_does_not_scale_in() -> None:
    # 300-s window, ticks every 30 s: 4 minutes idle between busy periods.
    utils = [60.0] * 12 + [10.0] * 8 + [60.0] * 12
    assert replay(policy(), 6, utils) == [6] * len(utils)


def test_a_sustained_dip_scales_in_by_one_step_after_the_window() -> None:
    utils = [60.0] * 12 + [10.0] * 30
    sizes = replay(policy(), 6, utils)
    first = sizes.index(5)
    # The first idle recommendation is at tick 12; the busy ones (6) leave the window 300 s later.
    assert first == 12 + 10
    assert sizes[first - 1] == 6
    # Then one node per window (the window holds 11 ticks, both ends included), not all at once.
    assert sizes[first: first + 11] == [5] * 11 and sizes[first + 11] == 4


def test_highest_recommendation_in_the_window_wins() -> None:
    cold = obs(gpu_util_pct=10.0, queue_length=0.0)
    pol = policy(scale_down={"step": 3})
    # This tick recommends 5 (8 - 3); an older one within the window recommended 7; one outside said 8.
    recs = [(NOW - 400, 8), (NOW - 310, 8), (NOW - 290, 5), (NOW - 200, 7), (NOW - 60, 5)]
    d = run(pol, 8, cold, recs=recs)
    assert (d.kind, d.target, d.rule) == ("scale_in", 7, "scale_down")
    assert d.recommendation == 5 and d.metrics["stabilized"] == 7
    recs[3] = (NOW - 200, 8)
    assert run(pol, 8, cold, recs=recs).kind == "none"


def test_no_scale_in_without_recommendations_covering_the_window() -> None:
    cold = obs(gpu_util_pct=10.0, queue_length=0.0)
    d = run(policy(), 6, cold, recs=[])  # a fresh pool, or a controller that just started
    assert d.kind == "none" and "do not cover the 300 s stabilization window" in d.reason
    assert d.recommendation == 5  # still stored, so that coverage builds up
    assert run(policy(), 6, cold, recs=[(NOW - s, 5) for s in range(0, 240, 30)]).kind == "none"
    # Old history from before a controller outage does not count as coverage.
    stale = [(NOW - 3600 - s, 5) for s in range(0, 600, 30)] + [(NOW - 60, 5)]
    assert run(policy(), 6, cold, recs=stale).kind == "none"
    covered = [(NOW - s, 5) for s in range(0, 300, 30)] + [(NOW - 290, 5)]
    assert run(policy(), 6, cold, recs=covered).kind == "scale_in"


def test_scale_in_needs_every_rule_below_its_band_and_low_gpu() -> None:
    recs = [(NOW - s, 1) for s in range(0, 330, 30)]
    # GPU idle but the queue rule is inside its band (50 x 0.9 = 45): no recommendation to shrink.
    d = run(policy(), 4, obs(gpu_util_pct=10.0, queue_length=46.0), recs=recs)
    assert d.kind == "none" and d.recommendation == 4 and "queue_length 46 is not below" in d.reason
    # Rules quiet but the GPU above scale_down.gpu_util_below_pct.
    d = run(policy(), 4, obs(gpu_util_pct=40.0, queue_length=0.0), recs=recs)
    assert d.kind == "none" and d.recommendation == 4 and "gpu_util_pct 40 is not below 30" in d.reason
    assert run(policy(), 4, obs(gpu_util_pct=10.0, queue_length=0.0), recs=recs).kind == "scale_in"


def test_missing_data_some_rules_ignored_all_rules_block_scale_in() -> None:
    recs = [(NOW - s, 1) for s in range(0, 330, 30)]
    d = run(policy(), 4, obs(gpu_util_pct=10.0), recs=recs)  # the queue has no data: ignored
    assert (d.kind, d.target) == ("scale_in", 3)
    gpu_only_in_scale_down = lambda metric, window: 10.0 if window == 60 and metric == "gpu_util_pct" else None  # noqa: E731
    rules = [dict(r, window_s=120) for r in default_document("scaling")["default"]["rules"]]
    d = run(policy(rules=rules), 4, gpu_only_in_scale_down, recs=recs)
    assert d.kind == "none" and d.recommendation == 4 and "no rule has data" in d.reason
    d = run(policy(), 4, obs(queue_length=0.0), recs=recs)  # no GPU data: no evidence the pool is idle
    assert d.kind == "none" and "no gpu_util_pct data" in d.reason


def test_scale_out_does_not_wait_for_stabilization_and_holds_scale_in_after_it() -> None:
    recs = [(NOW - s, 3) for s in range(30, 330, 30)]  # low recommendations all window long
    d = run(policy(), 4, obs(gpu_util_pct=99.0, queue_length=0.0), recs=recs)
    assert (d.kind, d.target) == ("scale_out", 6)
    assert d.recommendation == 6  # stored: the pool does not shrink again within the window


# --- predictive --------------------------------------------------------------------------------------------------
PRED = {"enabled": True, "per_node": 10.0, "boot_time_s": 480, "buffer_min": 2}


def test_predictive_raises_capacity_to_what_the_forecast_peak_needs() -> None:
    calm = obs(gpu_util_pct=60.0, queue_length=0.0)
    d = run(policy(predictive=PRED), 4, calm, forecast_peak=95.0)
    assert (d.kind, d.target, d.rule) == ("scale_out", 10, "predictive")
    assert d.metrics["forecast_peak"] == 95.0 and d.metrics["forecast_needed"] == 10.0
    assert "needs 10 nodes" in d.reason
    # Disabled, no forecast, or no per_node known: nothing.
    assert run(policy(), 4, calm, forecast_peak=95.0).kind == "none"
    assert run(policy(predictive=PRED), 4, calm).kind == "none"
    assert run(policy(predictive=dict(PRED, per_node=None)), 4, calm, forecast_peak=95.0).kind == "none"
    # A learned per_node serves when the policy has none; the policy's wins when it has one.
    assert run(policy(predictive=dict(PRED, per_node=None)), 4, calm, forecast_peak=95.0, per_node=5.0).target == 19
    assert run(policy(predictive=PRED), 4, calm, forecast_peak=95.0, per_node=5.0).target == 10
    assert run(policy(predictive=PRED, max_nodes=8), 4, calm, forecast_peak=95.0).target == 8


def test_predictive_never_lowers_capacity() -> None:
    d = run(policy(predictive=PRED), 9, obs(gpu_util_pct=60.0, queue_length=0.0), forecast_peak=5.0)
    assert (d.kind, d.target) == ("none", 9)


def test_reactive_wins_a_tie_with_predictive_and_the_larger_target_wins() -> None:
    hot = obs(gpu_util_pct=99.0, queue_length=0.0)
    assert run(policy(predictive=PRED), 8, hot, forecast_peak=100.0).rule == GPU  # both want 10
    d = run(policy(predictive=PRED), 8, hot, forecast_peak=150.0)
    assert (d.target, d.rule) == (15, "predictive")


def test_predictive_blocks_premature_scale_in_before_a_peak() -> None:
    cold = obs(gpu_util_pct=10.0, queue_length=0.0)
    recs = [(NOW - s, 5) for s in range(30, 330, 30)]
    assert run(policy(predictive=PRED), 6, cold, recs=recs, forecast_peak=20.0).kind == "scale_in"
    d = run(policy(predictive=PRED), 6, cold, recs=recs, forecast_peak=55.0)
    assert (d.kind, d.target) == ("none", 6)
    assert d.recommendation == 6 and "needs 6 nodes" in d.reason


def day_trace(days: int) -> tuple[np.ndarray, np.ndarray]:
    """1-minute demand (req/s) without and with 1 % noise: a floor of 30, a morning step at 08:30 and a peak of
    230 at 14:00."""
    rng = np.random.default_rng(7)
    h = (np.arange(days * 1440) % 1440) / 60
    base = 30 + 40 / (1 + np.exp(-(h - 8.5) * 4)) + 160 * np.exp(-0.5 * ((h - 14) / 2) ** 2)
    return base, base * (1 + rng.normal(0, 0.01, base.size))


def test_predictive_raises_capacity_the_boot_time_before_the_daily_peak() -> None:
    """The issue's test: on a multi-day trace with a daily peak, decide() + forecast() have the peak's capacity
    ordered at least the boot time before the peak minute. The rules see no data here, so only the forecast can
    add capacity: with predictive off the pool stays where it started."""
    smooth, demand = day_trace(5)
    pol = policy(predictive=PRED)  # 10 req/s per node, boot 8 min, lead 10 min
    boot_min = PRED["boot_time_s"] // 60
    lead = lead_minutes(pol)
    day5, start = 4 * 1440, 4 * 1440 + 11 * 60
    peak_minute = day5 + int(np.argmax(smooth[day5:day5 + 1440]))  # 14:00, 230 req/s without the noise
    needed = needed_for(float(smooth[peak_minute]), 10.0)

    def replay_day(pol: dict[str, Any]) -> dict[int, int]:
        size = needed_for(float(demand[start]), 10.0)
        sizes: dict[int, int] = {}
        fc: list[float] = []
        made = -1
        for t in range(start, peak_minute + 1):
            if made < 0 or t - made >= 5:  # refit every 5 minutes, as the runtime does
                fc, made = forecast(demand[:t + 1].tolist(), step_s=60, horizon_steps=lead + 5), t
            d = decide(pol, size, obs(), now=t * 60.0, last_fired={}, recommendations=[],
                       forecast_peak=max(fc[t - made:t - made + lead]))
            assert d.kind != "scale_in"
            size = d.target
            sizes[t] = size
        return sizes

    sizes = replay_day(pol)
    assert sizes[start] < needed - 3  # it grows towards the peak, it does not start there
    ordered = min((t for t, s in sizes.items() if s >= needed), default=None)
    assert ordered is not None, f"the pool never reached the {needed} nodes the peak needs: {max(sizes.values())}"
    assert ordered <= peak_minute - boot_min, f"capacity for the peak ordered {peak_minute - ordered} min before it"
    # And on the whole way up: the nodes each minute's demand needs were ordered a boot time before that minute.
    late = [(t - day5, sizes[t - boot_min], needed_for(float(smooth[t]), 10.0))
            for t in range(start + boot_min, peak_minute + 1) if sizes[t - boot_min] < needed_for(float(smooth[t]), 10.0)]
    assert not late, f"(minute of day, size a boot time before, needed) short: {late[:5]}"
    assert sizes == dict(sorted(sizes.items())) and list(sizes.values()) == sorted(sizes.values())  # only grows
    off = replay_day(policy(predictive=dict(PRED, enabled=False)))
    assert set(off.values()) == {needed_for(float(demand[start]), 10.0)}
