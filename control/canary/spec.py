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


def analysis(value: Any) -> dict[str, Any]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SpecError({"analysis": "expected an object"})
    errors: dict[str, str] = {}
    for name in sorted(set(value) - set(ANALYSIS)):
        errors[f"analysis.{name}"] = f"unknown field; the fields are {', '.join(ANALYSIS)}"
    out: dict[str, Any] = {}
    for name, (default, low, high, integer, _) in ANALYSIS.items():
        v = _number(value.get(name, default), f"analysis.{name}", low, high, integer, errors)
        if v is not None:
            out[name] = v
    if errors:
        raise SpecError(errors)
    return out
