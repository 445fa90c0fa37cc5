"""The canary request (`steps`, `analysis`): checked field by field, defaults filled in. Errors name the field by
its path (`steps[1].weight`, `analysis.failure_limit`) so the API can answer 400 naming it."""

from __future__ import annotations

import math
from typing import Any

MAX_STEPS = 20
MAX_PAUSE_S = 7 * 86400
# name -> (default, low, high, integer, meaning)
ANALYSIS: dict[str, tuple[float, float, float, bool, str]] = {
    "interval_s": (30, 1, 3600, True, "seconds between analysis runs"),
    "window_s": (120, 10, 900, True, "each run compares the arms over the last this many seconds of the step"),
    "initial_delay_s": (30, 0, 3600, True,
                        "seconds into each step before its first run (Argo initialDelay)"),
    "settle_s": (60, 0, 900, True,
                 "each run judges the requests that arrived in a window ending this many seconds ago, so every one "
                 "of them has ended and is in the log (at least the longest request: the first-byte timeout)"),
    "baseline_s": (120, 10, 3600, True,
                   "latency_against=before: the stable policy alone over this many seconds before the canary started "
                   "is what the whole fleet's latency, TTFT and goodput are compared with"),
    "switchback_s": (15, 2, 300, True,
                     "latency_against=switchback: the length of each period, on (the candidate routes) or off (the "
                     "stable policy alone) at random, two of each per block of four periods (at most half of window_s)"),
    "switchback_periods": (4, 2, 100, True,
                           "latency_against=switchback: whole on periods and whole off periods (each) a verdict "
                           "needs; the compared span reaches back within the step as far as it takes, else the run "
                           "is inconclusive"),
    "early_settle_s": (0, 0, 900, True,
                       "0: off. Else each run also judges a window ending this many seconds ago (below settle_s), "
                       "counting the requests still open at the gateways as at least as slow as their age, and "
                       "fails the run when even those lower bounds put the p95 latency past its bound"),
    "min_requests": (100, 1, 10_000_000, True, "requests each arm needs in the window before a verdict"),
    "failure_limit": (1, 0, 1000, True, "failed runs tolerated; one more aborts (Argo failureLimit)"),
    "inconclusive_limit": (20, 0, 100_000, True,
                           "consecutive inconclusive runs before the canary pauses for a person (0: never)"),
    "max_latency_p95_ratio": (1.25, 1.0, 100.0, False, "canary p95 latency / stable p95 latency at most"),
    "max_ttft_p95_ratio": (1.25, 1.0, 100.0, False, "canary p95 TTFT / stable p95 TTFT at most"),
    "max_error_rate_diff": (0.02, 0.0, 1.0, False, "canary 5xx rate minus stable 5xx rate at most"),
    "max_429_rate_diff": (0.02, 0.0, 1.0, False, "canary 429 rate minus stable 429 rate at most"),
    "min_goodput_ratio": (0.9, 0.0, 1.0, False, "canary goodput / stable goodput at least"),
    "goodput_ttft_ms": (2000, 1, 600_000, False, "a 2xx answer counts as good when its TTFT is at most this"),
}


# Settings that are a choice, not a number: name -> (choices, default, meaning).
CHOICES: dict[str, dict[str, tuple[tuple[str, ...], str, str]]] = {
    "scheduler": {
        "latency_against": (("before", "arms", "switchback"), "before",
                            "before: the whole fleet's p95 latency / TTFT and goodput during the canary against the "
                            "stable policy alone before it (both arms share the nodes, so an arm's own latency also "
                            "shows what the other arm left it); arms: canary arm against stable arm (Argo's); "
                            "switchback: the candidate on or off at random every switchback_s (two of each per four periods), the whole fleet and "
                            "the canary arm in the on periods against the stable policy alone in the off periods "
                            "of the same window (a drift of the fleet shows in both and cancels)"),
    },
}

# The scaling canary's analysis: one pool's SLO-violation minutes and GPU-hours per 1000 requests during the canary,
# against the same pool over the baseline_s before it started (docs/canary.md says why not against other pools).
SCALING_ANALYSIS: dict[str, tuple[float, float, float, bool, str]] = {
    "interval_s": (60, 1, 3600, True, "seconds between analysis runs"),
    "window_s": (1800, 300, 86400, True, "each run judges the last this many seconds of the canary (from its start)"),
    "baseline_s": (3600, 300, 7 * 86400, True,
                   "the pool's period right before the canary started that the canary is compared with"),
    "min_minutes": (10, 1, 10_000, True, "minutes with traffic each window needs before a verdict"),
    "min_requests": (100, 1, 10_000_000, True, "requests each window needs before a verdict"),
    "failure_limit": (1, 0, 1000, True, "failed runs tolerated; one more aborts (Argo failureLimit)"),
    "inconclusive_limit": (60, 0, 100_000, True,
                           "consecutive inconclusive runs before the canary pauses for a person (0: never)"),
    "slo_p95_latency_ms": (10_000, 1, 3_600_000, False,
                           "a minute violates the SLO when the pool's p95 latency is above this ..."),
    "slo_error_rate": (0.05, 0.0, 1.0, False, "... or its 5xx rate is above this"),
    "max_slo_violation_share_diff": (0.05, 0.0, 1.0, False,
                                     "canary share of minutes in violation minus the baseline's, at most"),
    "max_gpu_hours_ratio": (1.2, 0.01, 100.0, False,
                            "canary GPU-hours per 1000 requests / the baseline's, at most"),
}
MAX_DURATION_S = 7 * 86400


class SpecError(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def _number(value: Any, path: str, low: float, high: float, integer: bool, errors: dict[str, str],
            low_open: bool = False) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        errors[path] = f"{value!r} is not a number" if not isinstance(value, str) else f"{value!r} is not a number"
        return None
    if integer and value != int(value):
        errors[path] = f"{value} is not a whole number"
        return None
    if value < low or (low_open and value == low):
        errors[path] = f"{value} is below {'or at ' if low_open else ''}{low:g}"
        return None
    if value > high:
        errors[path] = f"{value} is above {high:g}"
        return None
    return int(value) if integer else float(value)


def steps(value: Any) -> list[dict[str, Any]]:
    errors: dict[str, str] = {}
    if not isinstance(value, list) or not value:
        raise SpecError({"steps": "a non-empty list of {weight, pause_s} is required"})
    if len(value) > MAX_STEPS:
        raise SpecError({"steps": f"at most {MAX_STEPS} steps"})
    out = []
    last = 0.0
    for i, step in enumerate(value):
        path = f"steps[{i}]"
        if not isinstance(step, dict):
            errors[path] = "expected an object {weight, pause_s}"
            continue
        unknown = sorted(set(step) - {"weight", "pause_s"})
        if unknown:
            errors[f"{path}.{unknown[0]}"] = "unknown field"
            continue
        for name in ("weight", "pause_s"):
            if name not in step:
                errors[f"{path}.{name}"] = "This field is required."
        if any(k.startswith(path) for k in errors):
            continue
        weight = _number(step["weight"], f"{path}.weight", 0, 100, False, errors, low_open=True)
        pause = _number(step["pause_s"], f"{path}.pause_s", 0, MAX_PAUSE_S, True, errors)
        if weight is None or pause is None:
            continue
        if weight < last:
            errors[f"{path}.weight"] = f"{weight:g} is below the previous step's {last:g} (weights only grow)"
            continue
        last = weight
        out.append({"weight": weight, "pause_s": pause})
    if errors:
        raise SpecError(errors)
    return out


def analysis(value: Any, fields: dict[str, tuple[float, float, float, bool, str]] | None = None) -> dict[str, Any]:
    """The analysis settings with defaults filled in; `fields`: the kind's table (ANALYSIS or SCALING_ANALYSIS)."""
    fields = ANALYSIS if fields is None else fields
    choices = CHOICES["scheduler"] if fields is ANALYSIS else {}
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SpecError({"analysis": "expected an object"})
    errors: dict[str, str] = {}
    for name in sorted(set(value) - set(fields) - set(choices)):
        errors[f"analysis.{name}"] = f"unknown field; the fields are {', '.join([*fields, *choices])}"
    out: dict[str, Any] = {}
    for name, (allowed, default, _) in choices.items():
        v = value.get(name, default)
        if v not in allowed:
            errors[f"analysis.{name}"] = f"{v!r} is not one of {', '.join(allowed)}"
        else:
            out[name] = v
    for name, (default, low, high, integer, _) in fields.items():
        v = _number(value.get(name, default), f"analysis.{name}", low, high, integer, errors)
        if v is not None:
            out[name] = v
    if not errors and fields is ANALYSIS:
        _cross(out, errors)
    if errors:
        raise SpecError(errors)
    return out


def _cross(a: dict[str, Any], errors: dict[str, str]) -> None:
    """Checks between fields of a scheduler canary's analysis (each error names the field to change)."""
    if a["latency_against"] == "switchback" and 2 * a["switchback_s"] > a["window_s"]:
        errors["analysis.switchback_s"] = (f"{a['switchback_s']} is above half of window_s ({a['window_s']}): a "
                                           "window must hold an on and an off period")
    if a["early_settle_s"] and a["early_settle_s"] >= a["settle_s"]:
        errors["analysis.early_settle_s"] = (f"{a['early_settle_s']} is not below settle_s ({a['settle_s']}): the "
                                             "early window must end later than the settled one")


def scaling_steps(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A scaling canary's phases from `duration_s` (one phase) or `steps` ([{pause_s}, ...]: an analysis must pass
    at the end of each before the next). The whole pool runs the candidate in every phase, so the stored weight is
    always 100 (there is no traffic share to grow)."""
    has_duration, has_steps = "duration_s" in data, "steps" in data
    if has_duration == has_steps:
        raise SpecError({"duration_s": "give duration_s (seconds) or steps ([{pause_s}, ...]), one of them"})
    if has_duration:
        errors: dict[str, str] = {}
        d = _number(data["duration_s"], "duration_s", 0, MAX_DURATION_S, True, errors, low_open=True)
        if d is None:
            raise SpecError(errors)
        return [{"weight": 100.0, "pause_s": d}]
    value = data["steps"]
    if not isinstance(value, list) or not value:
        raise SpecError({"steps": "a non-empty list of {pause_s} is required"})
    if len(value) > MAX_STEPS:
        raise SpecError({"steps": f"at most {MAX_STEPS} steps"})
    errors = {}
    out = []
    for i, step in enumerate(value):
        path = f"steps[{i}]"
        if not isinstance(step, dict):
            errors[path] = "expected an object {pause_s}"
            continue
        unknown = sorted(set(step) - {"pause_s"})
        if unknown:
            errors[f"{path}.{unknown[0]}"] = ("unknown field (a scaling canary runs on the whole pool: no weight)"
                                              if unknown[0] == "weight" else "unknown field")
            continue
        if "pause_s" not in step:
            errors[f"{path}.pause_s"] = "This field is required."
            continue
        pause = _number(step["pause_s"], f"{path}.pause_s", 0, MAX_PAUSE_S, True, errors, low_open=True)
        if pause is not None:
            out.append({"weight": 100.0, "pause_s": pause})
    if errors:
        raise SpecError(errors)
    return out
