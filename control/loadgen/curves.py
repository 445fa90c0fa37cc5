"""Arrival-rate curves: requests per second as a function of seconds since the start.

`daily` compresses a working day into `day_s` seconds: a night trough, a morning ramp and the 14:00 peak that the
design is about (a Gaussian bump around 14/24 of the day on top of a sinusoid), repeated for as many days as run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Curve = Callable[[float], float]


@dataclass(frozen=True)
class CurveSpec:
    kind: str = "constant"  # constant | step | daily
    rate: float = 10.0  # constant rate; the base (night) rate for daily; the rate before the step
    step_rate: float = 0.0  # rate after the step
    step_at_s: float = 0.0
    peak_rate: float = 0.0  # daily: the rate at the 14:00 peak
    day_s: float = 600.0  # daily: the length of one compressed day
    peak_hour: float = 14.0

    def check(self) -> None:
        if self.kind not in ("constant", "step", "daily"):
            raise ValueError(f"unknown curve {self.kind!r}; use constant, step or daily")
        if not 0 < self.rate <= 100_000:
            raise ValueError(f"rate {self.rate:g} must be above 0 and at most 100000 req/s")
        if self.kind == "step" and not (0 < self.step_rate <= 100_000 and self.step_at_s >= 0):
            raise ValueError("a step curve needs --step-rate in (0, 100000] and --step-at >= 0")
        if self.kind == "daily":
            if not self.rate < self.peak_rate <= 100_000:
                raise ValueError(f"--peak-rate ({self.peak_rate:g}) must be above --rate ({self.rate:g})")
            if not 10 <= self.day_s <= 7 * 86400:
                raise ValueError(f"--day-seconds {self.day_s:g} must be between 10 and 604800")
            if not 0 <= self.peak_hour < 24:
                raise ValueError("--peak-hour must be in [0, 24)")


def build(spec: CurveSpec) -> Curve:
    spec.check()
    if spec.kind == "constant":
        return lambda t: spec.rate
    if spec.kind == "step":
        return lambda t: spec.rate if t < spec.step_at_s else spec.step_rate
    return lambda t: daily_rate(t, spec)


def daily_rate(t: float, spec: CurveSpec) -> float:
    hour = (t / spec.day_s * 24.0) % 24.0
    # Daytime swell (low at 04:00, high at 16:00) plus a sharp peak of about two hours around peak_hour.
    swell = 0.5 - 0.5 * math.cos((hour - 4.0) / 24.0 * 2 * math.pi)
    distance = min(abs(hour - spec.peak_hour), 24 - abs(hour - spec.peak_hour))
    peak = math.exp(-0.5 * (distance / 0.9) ** 2)
    level = min(1.0, 0.45 * swell + 0.55 * peak + 0.1 * swell * peak)
    return spec.rate + (spec.peak_rate - spec.rate) * level


def peak_of(curve: Curve, duration_s: float) -> float:
    return max(curve(duration_s * i / 1000) for i in range(1001))
