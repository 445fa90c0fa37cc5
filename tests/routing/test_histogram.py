"""Log-bucket histograms: percentiles within one bucket of the exact ones, merging is adding."""

from __future__ import annotations

import random
import statistics

from hypothesis import given
from hypothesis import strategies as st

from control.routing import histogram

BUCKET_WIDTH = histogram.GROWTH - 1  # relative width of a bucket: the bound on a percentile's error


def exact(values: list[float], q: float) -> float:
    # statistics.quantiles with n=1000 gives cut points at 0.1 % steps (inclusive method, like numpy's default)
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def test_percentiles_of_lognormal_latencies_are_within_one_bucket_of_exact() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(5.0, 0.8) for _ in range(20_000)]  # median ~150 ms, long tail
    counts = histogram.of(values)
    for q in (0.5, 0.95, 0.99):
        got, want = histogram.percentile(counts, q), exact(values, q)
        assert abs(got - want) / want <= BUCKET_WIDTH, (q, got, want)


def test_percentiles_of_uniform_values_and_sub_millisecond_ones() -> None:
    values = [i / 10 for i in range(1, 10_001)]  # 0.1 .. 1000 ms
    counts = histogram.of(values)
    for q in (0.5, 0.95, 0.99):
        got, want = histogram.percentile(counts, q), exact(values, q)
        assert abs(got - want) / want <= BUCKET_WIDTH, (q, got, want)
    assert histogram.percentile(histogram.of([0.2, 0.4, 0.6]), 0.5) < 1.0


def test_merged_histograms_equal_the_histogram_of_all_values() -> None:
    rng = random.Random(3)
    parts = [[rng.expovariate(1 / 200) for _ in range(500)] for _ in range(5)]
    merged = histogram.merge(histogram.of(p) for p in parts)
    assert merged == histogram.of([v for p in parts for v in p])
    assert histogram.percentiles(merged) == histogram.percentiles(histogram.of([v for p in parts for v in p]))


def test_empty_histogram_has_no_percentiles() -> None:
    assert histogram.percentiles(histogram.empty()) == {"p50": None, "p95": None, "p99": None}


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_every_value_falls_inside_its_bucket(v: float) -> None:
    i = histogram.bucket_of(v)
    lo, hi = histogram.bounds(i)
    assert lo <= v < hi or i == histogram.BUCKETS - 1
