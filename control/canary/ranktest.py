"""A one-sided rank test (Mann-Whitney U) over the switchback periods of one analysis window.

Requests of one period are not independent of each other: they share the fleet's queues of that period (and of the
one before it), so the number of requests says little about how far a window's on/off difference could be noise.
The periods are the units that were switched, so the test ranks the periods' figures: the probability, were the
candidate without effect, that the on periods would come out at least this much worse than the off periods. Exact
(every way of labelling the periods) while that is cheap, else the normal approximation.
"""

from __future__ import annotations

import itertools
import math

EXACT_UP_TO = 20_000  # labellings enumerated exactly; a 60-s window of 10-s periods has at most C(6, 3) = 20


def u_statistic(worse: list[float], better: list[float]) -> float:
    """How many (worse, better) pairs have worse > better, ties counting half."""
    return sum(1.0 if w > b else 0.5 if w == b else 0.0 for w in worse for b in better)


def p_worse(worse: list[float], better: list[float]) -> float:
    """One-sided p-value that `worse` ranks above `better` no more than chance would; 1.0 when either is empty."""
    n, m = len(worse), len(better)
    if not n or not m:
        return 1.0
    observed = u_statistic(worse, better)
    values = worse + better
    if math.comb(n + m, n) <= EXACT_UP_TO:
        count = total = 0
        for chosen in itertools.combinations(range(n + m), n):
            picked = set(chosen)
            a = [values[i] for i in chosen]
            b = [values[i] for i in range(n + m) if i not in picked]
            count += u_statistic(a, b) >= observed - 1e-9
            total += 1
        return count / total
    mean, sd = n * m / 2, math.sqrt(n * m * (n + m + 1) / 12)
    z = (observed - 0.5 - mean) / sd
    return 0.5 * math.erfc(z / math.sqrt(2))
