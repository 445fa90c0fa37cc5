"""Fixed log-bucket histograms: mergeable by adding counts, so percentiles over any range come from summed buckets.

Bucket 0 holds values below 1 ms; bucket i (1..N-1) holds [GROWTH**(i-1), GROWTH**i) ms with GROWTH = 2**(1/8), so
a bucket is about 9 % wide and the last one (about 17 minutes up) also takes everything above. Every histogram has
the same boundaries everywhere (gateway log, minute rows, summaries), which is what makes adding them meaningful.
A percentile is interpolated inside its bucket on a log scale; its error is bounded by one bucket width (9 %).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

GROWTH = 2 ** (1 / 8)
BUCKETS = 8 * 20 + 1  # bucket 0 plus 20 doublings from 1 ms: 1 ms .. ~17.5 min
_LOG_GROWTH = math.log(GROWTH)


def empty() -> list[int]:
    return [0] * BUCKETS


def bucket_of(value_ms: float) -> int:
    """The bucket a (non-negative, finite) millisecond value falls into."""
    if not value_ms >= 1.0:  # also catches NaN
        return 0
    i = int(math.log(value_ms) / _LOG_GROWTH) + 1
    # Floating error at exact boundaries can land one bucket off; nudge it back to [lo, hi).
    if i > 1 and value_ms < bounds(i)[0]:
        i -= 1
    elif i < BUCKETS - 1 and value_ms >= bounds(i)[1]:
        i += 1
    return min(i, BUCKETS - 1)


def bounds(i: int) -> tuple[float, float]:
    """[low, high) of bucket i in milliseconds (the last bucket's high is where it starts taking everything)."""
    if i == 0:
        return 0.0, 1.0
    return GROWTH ** (i - 1), GROWTH**i


def add(counts: list[int], value_ms: float) -> None:
    counts[bucket_of(value_ms)] += 1


def merge(histograms: Iterable[Sequence[int]]) -> list[int]:
    total = empty()
    for h in histograms:
        for i, c in enumerate(h):
            if c:
                total[i] += c
    return total


def of(values: Iterable[float]) -> list[int]:
    counts = empty()
    for v in values:
        add(counts, v)
    return counts


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) in ms, or None for an empty histogram."""
    n = sum(counts)
    if n == 0:
        return None
    target = q * n
    cumulative = 0
    for i, c in enumerate(counts):
        if c == 0:
            continue
        if cumulative + c >= target:
            fraction = min(1.0, max(0.0, (target - cumulative) / c))
            lo, hi = bounds(i)
            if i == 0:
                return lo + (hi - lo) * fraction
            return lo * (hi / lo) ** fraction  # log-linear: the buckets are geometric
        cumulative += c
    return bounds(len(counts) - 1)[1]


def percentiles(counts: Sequence[int]) -> dict[str, float | None]:
    """p50/p95/p99 in ms, rounded to 0.1 ms (finer than any bucket)."""
    out: dict[str, float | None] = {}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        v = percentile(counts, q)
        out[name] = None if v is None else round(v, 1)
    return out
