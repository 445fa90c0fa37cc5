"""expected_wait is never below the latency a node's recent requests had (issue 14): an idle slow node is not
expected to serve a request in a fraction of the time its requests took. No I/O: the core on its own."""

from __future__ import annotations

import pytest

from control.scheduler.core import Scheduler
from tests.scheduler.core_fleet import NOW, default_fleet, serve_rounds


def serve_together(sched: Scheduler, name: str, k: int, latency_s: float, rounds: int = 30) -> None:
    """Rounds of k requests sent at once that each take latency_s (a batching engine running them side by side)."""
    serve_rounds(sched, name, k, latency_s, rounds)


def test_an_idle_node_is_expected_to_take_as_long_as_its_requests_took() -> None:
    sched = default_fleet(["slow"])
    serve_together(sched, "slow", 5, 4.8)  # five at a time, 4.8 s each: a slot every 0.96 s
    node = sched.nodes["slow"]
    assert node.slot_s == pytest.approx(0.96, rel=0.01)
    assert sched.expected_wait(node) == pytest.approx(4.8, rel=0.01)  # not 0.96: one request alone is no faster
    for rid in range(9):
        sched.sent(node, 100 + rid, NOW + 1)
    assert sched.expected_wait(node) == pytest.approx(0.96 * 10, rel=0.01)  # past what it was measured at: serial


def test_a_fast_node_with_requests_in_flight_beats_an_idle_slow_one_that_is_slower_still() -> None:
    # h100-like: 13 at a time, 2.0 s each (slot 0.154 s). l40s-like: 5 at a time, 4.8 s each (slot 0.96 s).
    # With 13 in flight the fast node expects 2.2 s; the idle slow node's requests take 4.8 s, not 0.96 s.
    sched = default_fleet(["fast", "slow"])
    serve_together(sched, "fast", 13, 2.0)
    serve_together(sched, "slow", 5, 4.8)
    sched.recompute(NOW)
    for rid in range(13):
        sched.sent(sched.nodes["fast"], 1000 + rid, NOW - 2)  # before the sample was taken: no burst correction
    fast, slow = sched.nodes["fast"], sched.nodes["slow"]
    assert sched.expected_wait(fast) < sched.expected_wait(slow)
    picked = sched.pick("m").node
    assert picked is fast, {n.name: (sched.expected_wait(n), sched.score(n)) for n in (fast, slow)}
