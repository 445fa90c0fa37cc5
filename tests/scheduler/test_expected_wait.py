"""The speed-aware `expected_wait` scorer (Little's law per node, measured by the gateway) and fleet-normalised
latency over the eligible nodes only. No I/O: the core on its own."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from control.policy.defaults import default_document
from control.policy.schemas import validate
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler

NOW = 1_800_000_000.0
CLASSIC = [{"metric": "gpu_free", "weight": 0.6, "invert": False},
           {"metric": "cpu_load", "weight": 0.3, "invert": True},
           {"metric": "latency", "weight": -0.1, "invert": False}]


def config(expected_wait: float = 3.0, **sections: dict[str, object]) -> Config:
    doc = default_document("scheduler")
    doc["scorers"] = [*CLASSIC, {"metric": "expected_wait", "weight": expected_wait, "invert": True}]
    for name, values in sections.items():
        doc[name].update(values)
    return Config.from_document(validate("scheduler", doc))


def metrics(age: float = 1.0, rtt: float = 1.0) -> Metrics:
    return Metrics(NOW - age, 1, 50.0, 30.0, rtt, 0.1, 0, 0, 10.0)


def fleet(names: list[str], cfg: Config, seed: int = 1) -> Scheduler:
    sched = Scheduler(cfg, random.Random(seed))
    specs = [NodeSpec(n, "p", "active", f"http://{n}", ("m",)) for n in names]
    sched.update(NOW, specs=specs, samples={n: metrics() for n in names})
    return sched


def teach(sched: Scheduler, name: str, latency_s: float, times: int = 30) -> None:
    """`times` requests served alone, each taking `latency_s`: the node's seconds per slot become latency_s."""
    node = sched.nodes[name]
    for i in range(times):
        rid = hash((name, i))
        t = NOW + i * (latency_s + 0.1)  # one after the other, never overlapping
        sched.sent(node, rid, t)
        sched.finished(node, rid, ttft_s=0.01, now=t + latency_s)


def burst(sched: Scheduler, n: int) -> Counter[str]:
    """n requests picked and sent on one snapshot, none finishing: the in-flight count each node ends up with."""
    got: Counter[str] = Counter()
    for rid in range(10_000, 10_000 + n):
        node = sched.pick("m").node
        assert node is not None
        sched.sent(node, rid, NOW + 100)
        got[node.name] += 1
    return got


def test_a_fast_node_gets_in_flight_in_proportion_to_its_speed() -> None:
    sched = fleet(["fast", "slow"], config(load={"burst_correction": 0.0}))  # the scorer alone
    teach(sched, "fast", 0.5)
    teach(sched, "slow", 2.0)
    assert sched.nodes["fast"].slot_s == pytest.approx(0.5)
    assert sched.nodes["slow"].slot_s == pytest.approx(2.0)
    sched.update(NOW + 100, samples={n: metrics(age=-99) for n in ("fast", "slow")})  # the refresh: new scale
    got = burst(sched, 100)
    # Equal expected waits: 0.5 (k_fast + 1) = 2.0 (k_slow + 1), so about 4:1 (80 / 20).
    assert 76 <= got["fast"] <= 84, got
    fast, slow = sched.nodes["fast"], sched.nodes["slow"]
    assert sched.expected_wait(fast) == pytest.approx(sched.expected_wait(slow), rel=0.15)


def test_the_default_policy_sends_a_fast_node_clearly_more() -> None:
    """With the default policy (classic weights, expected_wait, burst correction) on equal samples."""
    sched = fleet(["fast", "slow"], Config.from_document(validate("scheduler", default_document("scheduler"))))
    teach(sched, "fast", 0.5)
    teach(sched, "slow", 2.0)
    sched.update(NOW + 100, samples={n: metrics(age=-99) for n in ("fast", "slow")})
    got = burst(sched, 100)
    assert got["fast"] >= 65, got  # the burst correction (equal per request) pulls towards even, not to it


def test_slot_time_follows_littles_law_under_concurrency() -> None:
    """Four requests at once that each take 2 s: the node serves a slot every 0.5 s."""
    sched = fleet(["a"], config())
    node = sched.nodes["a"]
    for rid in range(4):
        sched.sent(node, rid, NOW)
    for rid in range(4):
        sched.finished(node, rid, ttft_s=0.1, now=NOW + 2.0)
    assert node.slot_s == pytest.approx(2.0 / 4, rel=0.05)


def test_a_failed_request_teaches_nothing() -> None:
    sched = fleet(["a"], config())
    node = sched.nodes["a"]
    sched.sent(node, 1, NOW)
    sched.finished(node, 1, ttft_s=None, now=NOW + 0.001)  # connection refused at once: not a fast node
    assert node.slot_s is None and node.in_flight == 0


def test_success_not_ttft_decides_what_teaches() -> None:
    sched = fleet(["a"], config())
    node = sched.nodes["a"]
    sched.sent(node, 1, NOW)
    sched.finished(node, 1, ttft_s=0.001, now=NOW + 0.002, ok=False)  # a quick 4xx: the node refused, not served
    assert node.slot_s is None
    sched.sent(node, 2, NOW + 1)
    sched.finished(node, 2, ttft_s=None, now=NOW + 3, ok=True)  # a stream that generated no text still took 2 s
    assert node.slot_s == pytest.approx(2.0)


def test_a_new_node_starts_at_the_fleet_median_neither_herded_nor_starved() -> None:
    sched = fleet(["a", "b", "c"], config())
    teach(sched, "a", 1.0)
    teach(sched, "b", 1.0)
    teach(sched, "c", 1.0)
    specs = [NodeSpec(n, "p", "active", f"http://{n}", ("m",)) for n in ("a", "b", "c", "new")]
    sched.update(NOW + 100, specs=specs, samples={n: metrics(age=-99) for n in ("a", "b", "c", "new")})
    new = sched.nodes["new"]
    assert new.slot_s is None
    assert sched.expected_wait(new) == pytest.approx(1.0)  # the fleet median, not 0 (herd) nor infinity (starve)
    got = burst(sched, 100)
    assert 15 <= got["new"] <= 35, got  # about a quarter, like the others


def test_with_nothing_measured_it_is_least_in_flight() -> None:
    sched = fleet([f"n{i}" for i in range(5)], config())
    got = burst(sched, 100)
    assert max(got.values()) - min(got.values()) <= 2, got


def test_the_scale_is_taken_over_healthy_nodes_only() -> None:
    sched = fleet(["a", "b", "old1", "old2"], config())
    for name, latency in (("a", 1.0), ("b", 1.0), ("old1", 50.0), ("old2", 50.0)):
        teach(sched, name, latency, times=1)
    sched.update(NOW + 100, samples={n: metrics(age=-99) for n in ("a", "b")})  # old1, old2 go stale
    sched.tick(NOW + 100)
    assert not sched.nodes["old1"].healthy and not sched.nodes["old2"].healthy
    sched.recompute(NOW + 100)  # counting the stale nodes, the median would be 50
    assert sched._slot_default == pytest.approx(1.0)
    assert sched._wait_scale == pytest.approx(1.0 * 32)  # median seconds per slot x load.node_capacity


def test_without_the_scorer_the_speed_is_ignored() -> None:
    """The same fleet under the classic weights alone: the burst correction spreads evenly, blind to speed."""
    doc = default_document("scheduler")
    doc["scorers"] = CLASSIC
    sched = fleet(["fast", "slow"], Config.from_document(validate("scheduler", doc)))
    teach(sched, "fast", 0.5)
    teach(sched, "slow", 2.0)
    got = burst(sched, 100)
    assert got["fast"] <= 60, got


def test_the_decision_reads_no_clock_and_stays_a_heap_top() -> None:
    """A send re-pushes one node; a finish without `now` uses the wall clock the gateway passes to `sent`."""
    import time

    sched = fleet(["a", "b"], config())
    node = sched.nodes["a"]
    t = time.time()
    sched.sent(node, 1, t - 1.0)
    sched.finished(node, 1, ttft_s=0.1)
    assert node.slot_s == pytest.approx(1.0, abs=0.2)
    assert len(sched.groups["m"].heap) <= 2 * 2 + 64


# --- latency.normalise: fleet over the eligible nodes -------------------------------------------------------------
def test_fleet_normalised_latency_ignores_stale_nodes() -> None:
    doc = default_document("scheduler")
    doc["latency"] = {"source": "rtt", "normalise": "fleet", "scale_ms": 100.0}
    sched = Scheduler(Config.from_document(validate("scheduler", doc)), random.Random(1))
    specs = [NodeSpec(n, "p", "active", f"http://{n}", ("m",)) for n in ("a", "b", "gone")]
    sched.update(NOW, specs=specs, samples={"a": metrics(rtt=10.0), "b": metrics(rtt=20.0),
                                            "gone": metrics(age=600.0, rtt=500.0)})  # an earlier run's sample
    assert not sched.nodes["gone"].healthy
    assert sched._fleet_latency == (10.0, 20.0)
    assert sched.normalised(sched.nodes["a"])["latency"] == 0.0
    assert sched.normalised(sched.nodes["b"])["latency"] == 1.0  # b is the slowest of the nodes that count
