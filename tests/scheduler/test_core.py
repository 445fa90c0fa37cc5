"""The scheduler core on its own: scorer maths, filters, burst correction, picker, quarantine (no I/O)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import pytest

from control.policy.defaults import default_document
from control.policy.schemas import score, validate
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler, metrics_from_snapshot

NOW = 1_800_000_000.0


def config(**changes: object) -> Config:
    doc = default_document("scheduler")
    for path, value in changes.items():
        section, _, key = path.partition("__")
        if key:
            doc[section][key] = value
        else:
            doc[section] = value
    return Config.from_document(validate("scheduler", doc))


def metrics(gpu: float = 50.0, cpu: float = 30.0, rtt: float | None = 1.0, running: int | None = 0,
            waiting: int | None = 0, kv: float | None = 10.0, age: float = 1.0, seq: int = 1) -> Metrics:
    return Metrics(NOW - age, seq, gpu, cpu, rtt, 0.1, running, waiting, kv)


def fleet(n: int, cfg: Config | None = None, seed: int = 1, **m: object) -> Scheduler:
    sched = Scheduler(cfg or config(), random.Random(seed))
    specs = [NodeSpec(f"n{i}", "pool-a", "active", f"http://n{i}", ("m",)) for i in range(n)]
    sched.update(NOW, specs=specs, samples={s.name: metrics(**m) for s in specs})  # type: ignore[arg-type]
    return sched


CLASSIC = [{"metric": "gpu_free", "weight": 0.6, "invert": False},
           {"metric": "cpu_load", "weight": 0.3, "invert": True},
           {"metric": "latency", "weight": -0.1, "invert": False}]


def classic_config(**changes: object) -> Config:
    """The literal classic formula: the default document with only its three classic scorers."""
    return config(scorers=CLASSIC, **changes)


def test_the_classic_formula_from_its_weights() -> None:
    doc = validate("scheduler", {**default_document("scheduler"), "scorers": CLASSIC})
    rng = random.Random(3)
    for _ in range(200):
        v = {m: rng.random() for m in ("gpu_free", "cpu_load", "latency", "queue_depth", "kv_cache")}
        assert score(doc, v) == pytest.approx(0.6 * v["gpu_free"] + 0.3 * (1 - v["cpu_load"]) - 0.1 * v["latency"],
                                              abs=1e-12)


def test_the_default_is_the_classic_formula_plus_the_expected_wait_prefix_affinity_and_expected_ttft() -> None:
    doc = validate("scheduler", default_document("scheduler"))
    rng = random.Random(3)
    for _ in range(200):
        v = {m: rng.random() for m in ("gpu_free", "cpu_load", "latency", "queue_depth", "kv_cache", "expected_wait",
                                       "prefix_affinity", "expected_ttft")}
        classic = 0.6 * v["gpu_free"] + 0.3 * (1 - v["cpu_load"]) - 0.1 * v["latency"]
        # expected_ttft counts for streamed requests only (tests/scheduler/test_expected_ttft.py)
        assert score(doc, v) == pytest.approx(classic + 5.0 * (1 - v["expected_wait"]) + 2.0 * v["prefix_affinity"]
                                              + 3.0 * (1 - v["expected_ttft"]), abs=1e-12)


def test_node_scores_equal_the_policy_score_of_their_normalised_metrics() -> None:
    doc = default_document("scheduler")
    weights = {"gpu_free": 0.5, "cpu_load": 0.2, "latency": -0.3, "queue_depth": 0.4, "kv_cache": 0.25}
    for s in doc["scorers"]:
        s["weight"] = weights.get(s["metric"], 0.0)
    doc = validate("scheduler", doc)
    sched = Scheduler(Config.from_document(doc), random.Random(1))
    rng = random.Random(5)
    specs = [NodeSpec(f"n{i}", "p", "active", "http://x", ("m",)) for i in range(50)]
    samples = {s.name: Metrics(NOW - 1, 1, rng.uniform(0, 100), rng.uniform(0, 100), rng.uniform(0, 300), None,
                               rng.randint(0, 10), rng.randint(0, 500), rng.uniform(0, 97)) for s in specs}
    sched.update(NOW, specs=specs, samples=samples)
    for name, node in sched.nodes.items():
        m = samples[name]
        expected = {"gpu_free": 1 - m.gpu_util_pct / 100, "cpu_load": m.cpu_util_pct / 100,
                    "latency": min(1.0, m.net_rtt_ms / 100), "queue_depth": min(1.0, m.waiting / 256),
                    "kv_cache": m.kv_cache_pct / 100}
        assert sched.normalised(node) == pytest.approx(expected)
        assert node.static == pytest.approx(score(doc, expected))
        assert sched.score(node) == pytest.approx(score(doc, expected))  # nothing sent yet: no dynamic part


@pytest.mark.parametrize("weights", [
    None,  # the classic weights: no load term at all
    {"gpu_free": 0.0, "cpu_load": 0.0, "latency": -1.0},  # only latency
    {"gpu_free": 5.0, "cpu_load": 0.0, "latency": 0.0},  # one large weight
])
@pytest.mark.parametrize("n", [4, 10, 30])
def test_a_burst_on_one_snapshot_does_not_herd(weights: dict[str, float] | None, n: int) -> None:
    cfg = config()
    if weights:
        doc = default_document("scheduler")
        for s in doc["scorers"]:
            s["weight"] = weights.get(s["metric"], 0.0)
        cfg = Config.from_document(validate("scheduler", doc))
    sched = fleet(n, cfg, seed=n)
    share: Counter[str] = Counter()
    for rid in range(100):  # 100 concurrent requests: none finishes, no new sample arrives
        pick = sched.pick("m")
        assert pick.node is not None
        sched.sent(pick.node, rid, NOW)
        share[pick.node.name] += 1
    assert max(share.values()) <= 2 * 100 / n, share


def test_without_the_correction_the_classic_weights_herd() -> None:
    """The failure the correction exists for: with it off, the whole burst lands on one node."""
    sched = fleet(10, classic_config(load={"node_capacity": 32, "burst_correction": 0.0}, picker__tie_break="first"))
    share = Counter()
    for rid in range(100):
        node = sched.pick("m").node
        assert node is not None
        sched.sent(node, rid, NOW)
        share[node.name] += 1
    assert share == {"n0": 100}


def test_unseen_requests_are_those_sent_after_the_sample() -> None:
    sched = fleet(1)
    node = sched.nodes["n0"]
    sched.sent(node, 1, NOW)
    sched.sent(node, 2, NOW + 2)
    assert (node.in_flight, node.unseen) == (2, 2)
    sched.update(NOW + 3, samples={"n0": Metrics(NOW + 1, 2, 50, 30, 1, None, 1, 0, 10)})
    assert (node.in_flight, node.unseen) == (2, 1)  # the sample at NOW+1 saw request 1, not request 2
    sched.finished(node, 1)
    assert (node.in_flight, node.unseen) == (1, 1)
    sched.finished(node, 2, ttft_s=0.2)
    assert (node.in_flight, node.unseen, node.ttft_ewma) == (0, 0, 0.2)


def test_in_flight_scorer_uses_its_weight() -> None:
    doc = default_document("scheduler")
    for s in doc["scorers"]:
        if s["metric"] == "in_flight":
            s["weight"] = 0.8
    sched = Scheduler(Config.from_document(validate("scheduler", doc)), random.Random(1))
    sched.update(NOW, specs=[NodeSpec("a", "p", "active", "http://a", ("m",))], samples={"a": metrics()})
    node = sched.nodes["a"]
    base = sched.score(node)
    for rid in range(8):
        sched.sent(node, rid, NOW)
    dyn = sched.dynamic(node)
    assert dyn["in_flight"] == pytest.approx(0.8 * (1 - 8 / 32))
    assert dyn["burst"] == pytest.approx(-1.0 * 1.0 / 32 * 8)  # span = 0.6 + 0.3 + 0.1; in_flight not counted
    assert sched.score(node) < base


def test_best_node_wins_and_ties_break_at_random() -> None:
    sched = Scheduler(config(), random.Random(2))
    specs = [NodeSpec(n, "p", "active", "http://x", ("m",)) for n in ("a", "b", "c")]
    sched.update(NOW, specs=specs, samples={"a": metrics(gpu=10), "b": metrics(gpu=60), "c": metrics(gpu=60.5)})
    assert sched.pick("m").node.name == "a"  # type: ignore[union-attr]
    sched.update(NOW, samples={"a": metrics(gpu=90, seq=2)})
    seen = Counter()
    for seed in range(200):
        sched.rng.seed(seed)
        sched.recompute(NOW)
        seen[sched.pick("m").node.name] += 1  # type: ignore[union-attr]
    assert set(seen) == {"b", "c"} and min(seen.values()) > 50  # within tie_epsilon: either, at random


def test_filters_and_verdicts() -> None:
    sched = Scheduler(config(), random.Random(1))
    specs = [NodeSpec("draining", "p", "draining", "http://x", ("m",)),
             NodeSpec("cordoned", "p", "cordoned", "http://x", ("m",)),
             NodeSpec("stale", "p", "active", "http://x", ("m",)),
             NodeSpec("failed", "p", "active", "http://x", ("m",)),
             NodeSpec("nosample", "p", "active", "http://x", ("m",)),
             NodeSpec("other-model", "p", "active", "http://x", ("other",)),
             NodeSpec("kv-full", "p", "active", "http://x", ("m",)),
             NodeSpec("queue-full", "p", "active", "http://x", ("m",)),
             NodeSpec("hot", "p", "active", "http://x", ("m",))]
    sched.update(NOW, specs=specs, samples={
        "draining": metrics(), "cordoned": metrics(), "stale": metrics(age=16), "failed": metrics(running=None),
        "other-model": metrics(), "kv-full": metrics(kv=98.0), "queue-full": metrics(waiting=256, running=32),
        "hot": metrics(gpu=99.5)})
    reasons = {n: sched.filter_reason(node, NOW) for n, node in sched.nodes.items()}
    assert reasons == {
        "draining": "draining", "cordoned": "cordoned", "stale": "stale: last sample 16 s ago",
        "failed": "failed: inference server not reporting", "nosample": "no sample yet", "other-model": "",
        "kv-full": "saturated: kv cache", "queue-full": "saturated: queue", "hot": "saturated: gpu util"}
    assert sched.pick("m").verdict == "saturated"  # healthy nodes exist, none has room
    assert sched.pick("other").node.name == "other-model"  # type: ignore[union-attr]
    assert sched.pick("nope").verdict == "unknown_model"
    sched.update(NOW, specs=[s for s in specs if s.name in ("stale", "failed", "draining")])
    assert sched.pick("m").verdict == "unavailable"  # nothing healthy: no point in queueing


def test_room_runs_out_as_unseen_requests_fill_the_queue() -> None:
    sched = fleet(1, config(filters__max_queue_depth=4), running=30, waiting=0)
    node = sched.nodes["n0"]
    assert node.room == 4 + 2  # queue room plus free batch slots (capacity 32, 30 running)
    for rid in range(6):
        assert sched.pick("m").node is node
        sched.sent(node, rid, NOW)
    assert sched.pick("m").verdict == "saturated"
    sched.finished(node, 0)
    assert sched.pick("m").node is node


def test_quarantine_and_half_open_return() -> None:
    sched = fleet(2, config(quarantine={"failures": 2, "cooldown_s": 10.0}))
    a = sched.nodes["n0"]
    assert sched.failed(a, NOW) is False
    assert sched.failed(a, NOW) is True
    assert sched.filter_reason(a, NOW) == "quarantined for 10 s"
    assert {sched.pick("m").node.name for _ in range(20)} == {"n1"}  # type: ignore[union-attr]
    assert sched.pick("m", exclude={"n1"}).verdict == "unavailable"
    sched.tick(NOW + 10)
    assert sched.filter_reason(a, NOW + 10) == ""  # back after the cooldown
    assert sched.failed(a, NOW + 11) is True  # half-open: the first failure sends it straight back
    sched.tick(NOW + 21)
    sched.succeeded(a)
    assert a.failures == 0 and sched.counters.quarantines == 2


def test_retry_skips_nodes_already_tried() -> None:
    sched = fleet(5)
    first = sched.pick("m").node
    assert first is not None
    tried = {first.name}
    while len(tried) < 5:
        nxt = sched.pick("m", exclude=frozenset(tried)).node
        assert nxt is not None and nxt.name not in tried
        tried.add(nxt.name)
    assert sched.pick("m", exclude=frozenset(tried)).verdict == "unavailable"


def test_registry_changes_apply() -> None:
    sched = fleet(3)
    sched.update(NOW, specs=[NodeSpec("n0", "pool-a", "draining", "http://n0", ("m",)),
                             NodeSpec("n1", "pool-a", "active", "http://n1", ("m", "m2"))])
    assert "n2" not in sched.nodes
    assert {sched.pick("m").node.name for _ in range(10)} == {"n1"}  # type: ignore[union-attr]
    assert sched.pick("m2").node.name == "n1"  # type: ignore[union-attr]


def test_snapshot_parsing() -> None:
    snap = {"node": "a", "ts": "2026-11-28T14:00:05.000Z", "received": "2026-11-28T14:00:04+00:00", "seq": 4,
            "endpoint": "http://a:8000", "models": ["m"], "host": {"cpu_util_pct": 35.0, "net_rtt_ms": None},
            "inference": {"requests_running": 3, "requests_waiting": 1, "kv_cache_usage_pct": 50.0},
            "gpus": [{"gpu_util_pct": 90.0}, {"gpu_util_pct": 70.0}, {"gpu_util_pct": None}]}
    m = metrics_from_snapshot(snap)
    assert m is not None
    assert m.ts == datetime(2026, 11, 28, 14, 0, 4, tzinfo=UTC).timestamp()  # capped at when it was received
    assert (m.gpu_util_pct, m.cpu_util_pct, m.net_rtt_ms, m.running, m.waiting, m.models) == \
        (80.0, 35.0, None, 3, 1, ("m",))
    assert metrics_from_snapshot({"ts": "garbage"}) is None


def test_nodes_whose_max_model_len_is_too_short_are_skipped_with_a_reason() -> None:
    from control.scheduler.length import exclude_for, need_tokens
    from control.scheduler.replies import Reply

    sched = Scheduler(config(), random.Random(1))
    specs = [NodeSpec(n, "pool-a", "active", f"http://{n}", ("m",)) for n in ("short", "long", "silent")]
    snaps = {"short": {"serving": {"max_model_len": 4096}}, "long": {"serving": {"max_model_len": 32768}},
             "silent": {}}
    samples = {n: metrics_from_snapshot({"ts": datetime.fromtimestamp(NOW - 1, UTC).isoformat(), "seq": 1,
                                         "inference": {"requests_running": 0}, **snaps[n]}) for n in snaps}
    sched.update(NOW, specs=specs, samples=samples)  # type: ignore[arg-type]
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 20_000}], "max_tokens": 1000}
    need = need_tokens(body)
    assert need == 5000 + 4 + 1000  # ceil(20000 / 4) + 4 for the message + max_tokens
    skip, note = exclude_for(sched, "m", need)
    assert skip == {"short"} and note == "max_model_len < 6004: short (4096)"
    # A node that advertises no length is never skipped; short prompts skip nobody.
    assert exclude_for(sched, "m", 100) == (set(), "")
    picks = {sched.pick("m", frozenset(skip)).node.name for _ in range(50)}  # type: ignore[union-attr]
    assert "short" not in picks
    assert exclude_for(sched, "m", 40_000)[0] == {"short", "long"}  # the silent node may still take it
    sched.update(NOW, specs=specs[:2], samples=samples)  # type: ignore[arg-type]
    with pytest.raises(Reply) as refused:
        exclude_for(sched, "m", 40_000)
    assert refused.value.status == 400 and refused.value.code == "context_length_exceeded"
    assert "longest context any node serving 'm' runs is max_model_len 32768" in refused.value.message
