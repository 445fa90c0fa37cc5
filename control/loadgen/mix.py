"""Weighted mixes given on the command line as `value:weight,value:weight` (e.g. `64:0.7,1024:0.3`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T", int, str)


@dataclass(frozen=True)
class Mix(Generic[T]):
    values: tuple[T, ...]
    weights: tuple[float, ...]

    def pick(self, rng: random.Random) -> T:
        return rng.choices(self.values, self.weights)[0]

    def describe(self) -> str:
        total = sum(self.weights)
        return ", ".join(f"{v} {w / total:.0%}" for v, w in zip(self.values, self.weights, strict=True))


def parse_mix(text: str, kind: type, what: str, lo: float | None = None, hi: float | None = None) -> Mix:
    """Parse `a:w,b:w` (a weight may be left out: 1). Raises ValueError naming the bad part."""
    values: list = []
    weights: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"{what}: empty entry in {text!r}")
        raw, _, w = part.partition(":")
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ValueError(f"{what}: {raw.strip()!r} is not a valid {kind.__name__}") from None
        if kind is int and not (lo is None or lo <= value) or kind is int and not (hi is None or value <= hi):
            raise ValueError(f"{what}: {value} is outside [{lo}, {hi}]")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"{what}: weight {w!r} is not a number") from None
        if not 0 < weight < 1e9:
            raise ValueError(f"{what}: weight {w} must be above 0")
        if value in values:
            raise ValueError(f"{what}: {value} appears twice")
        values.append(value)
        weights.append(weight)
    return Mix(tuple(values), tuple(weights))
