"""Which arm of a canary a request takes. Pure Python, no I/O: the gateway calls it on every request.

The arm is a function of the request's key and the canary's weight only, so every gateway puts the same request
on the same arm without talking to the others, and a conversation (one X-Session-Id) stays on one arm. Raising the
weight only moves keys from stable to canary, never back: a key's bucket is fixed, the threshold grows.
"""

from __future__ import annotations

import hashlib
import math

STABLE = "stable"
CANARY = "canary"
BUCKETS = 10_000  # weights are percent with two decimals


def bucket(key: str) -> int:
    """The key's fixed place in [0, BUCKETS); blake2b rather than hash(), whose value differs per process."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def arm(key: str, weight_pct: float) -> str:
    """CANARY for about weight_pct % of keys, STABLE for the rest."""
    if weight_pct <= 0:
        return STABLE
    if weight_pct >= 100:
        return CANARY
    return CANARY if bucket(key) < round(weight_pct * BUCKETS / 100) else STABLE


def switched_on(ts: float, anchor: float, period_s: float, canary_id: int) -> bool:
    """Switchback control: whether the candidate routes at unix time `ts` (True) or the stable policy alone (False).

    Periods of `period_s` seconds counted from `anchor` (the canary's creation), each on or off at random, half of
    each block of four periods (period_on). A function of its arguments alone, so every gateway
    (and the analysis, classifying a logged request by its arrival time) agrees on it without a local timer;
    period_s <= 0: always on (no switchback)."""
    if period_s <= 0:
        return True
    return period_on(canary_id, period_index(ts, anchor, period_s))


# Randomized switchback in blocks: every BLOCK consecutive periods (from the first) hold exactly half on and half
# off, in an order drawn per block. A fair coin per period made streaks: in one bench run 14 of the first 18 periods
# came up on, and the verdict (which needs a few whole periods of each kind) waited past the end of its step.
BLOCK = 4
_ARRANGEMENTS = tuple(
    tuple(bool(mask >> (BLOCK - 1 - i) & 1) for i in range(BLOCK))
    for mask in range(1 << BLOCK) if bin(mask).count("1") == BLOCK // 2)


def period_on(canary_id: int, index: int) -> bool:
    """Randomized switchback: whether period `index` of canary `canary_id` is on.

    Strictly alternating periods are a fixed cycle of two periods; a fleet that oscillates near that cycle (the
    classic formula herds in cycles of a few sample intervals) lines its peaks up with the on periods for minutes
    at a time, and the on periods then look consistently worse with no candidate effect at all. Here each block of
    BLOCK periods takes one of the balanced arrangements (two on, two off) at random, from a hash of (canary id,
    block index): independent of any fleet dynamics, so under "no effect" the on periods are a random half of each
    block and the analysis's rank test over periods (ranktest.p_worse) is a randomization test (blocking makes it, if
    anything, conservative: a drift between blocks lands on both kinds alike). Any 2 × BLOCK consecutive whole
    periods aligned on blocks hold BLOCK on and BLOCK off ones, so a verdict never waits on a streak."""
    block, pos = divmod(index, BLOCK)
    digest = hashlib.blake2b(f"switchback:{canary_id}:{block}".encode(), digest_size=8).digest()
    return _ARRANGEMENTS[int.from_bytes(digest, "big") % len(_ARRANGEMENTS)][pos]


def period_index(ts: float, anchor: float, period_s: float) -> int:
    """Which switchback period unix time `ts` falls in (0: the first); period_s > 0."""
    return math.floor((ts - anchor) / period_s)


def request_key(session_id: str, request_id: str, fallback: str) -> str:
    """The key a request is split by: its session (a conversation stays on one arm), else its request id, else a
    value unique to this request (the gateway's own id and counter)."""
    if session_id:
        return "s:" + session_id
    if request_id:
        return "r:" + request_id
    return "g:" + fallback
