"""The burst correction stops at the score's span (issue 14): a fast node that gets many requests between two of
its samples must not lose to a much slower node whose expected wait is far longer. No I/O: the core on its own."""

from __future__ import annotations

import pytest

from control.scheduler.core import Scheduler
from tests.scheduler.core_fleet import NOW, default_fleet


def teach(sched: Scheduler, name: str, latency_s: float, times: int = 30) -> None:
    """Requests served one at a time, each taking `latency_s`: the node's seconds per slot become latency_s."""
    node = sched.nodes[name]
    for i in range(times):
        rid = hash((name, i))
        t = NOW - 90 + i * (latency_s + 0.1)
        sched.sent(node, rid, t)
        sched.finished(node, rid, ttft_s=0.01, now=t + latency_s)


def send(sched: Scheduler, name: str, n: int, first_id: int) -> None:
    """n requests to the node after its sample was taken (unseen by it), none finished yet."""
    for rid in range(first_id, first_id + n):
        sched.sent(sched.nodes[name], rid, NOW + 1)


def test_unseen_requests_past_capacity_take_no_more_than_the_span() -> None:
    sched = default_fleet(["a"])
    node = sched.nodes["a"]
    span = sched.config.span  # 0.6 + 0.3 + 0.1 with the default weights
    send(sched, "a", 8, 0)
    assert sched.dynamic(node)["burst"] == pytest.approx(-span * 8 / 32)  # below capacity: as before, per request
    send(sched, "a", 112, 100)
    assert node.unseen == 120
    assert sched.dynamic(node)["burst"] == pytest.approx(-span)  # 120 unseen, capacity 32: the whole span, no more


def test_a_fast_busy_node_still_beats_a_slow_one_whose_wait_is_far_longer() -> None:
    # "fast" serves a request slot every 0.02 s, "slow" every 2 s. With 80 unseen requests in flight the fast node
    # expects 1.6 s for the next one, the slow node with 10 expects 22 s. Uncapped, the correction (80 x 0.031 =
    # -2.5) outweighed expected_wait's whole difference between them and sent the request to the slow node.
    sched = default_fleet(["fast", "slow"])
    teach(sched, "fast", 0.02)
    teach(sched, "slow", 2.0)
    sched.recompute(NOW)  # the fleet median slot, as the gateway's once-a-second refresh takes it
    send(sched, "fast", 80, 1000)
    send(sched, "slow", 10, 2000)
    fast, slow = sched.nodes["fast"], sched.nodes["slow"]
    assert sched.expected_wait(fast) < sched.expected_wait(slow) / 10
    assert sched.dynamic(fast)["burst"] == pytest.approx(-sched.config.span)
    picked = sched.pick("m").node
    assert picked is fast, {n.name: (sched.score(n), sched.dynamic(n)) for n in (fast, slow)}
