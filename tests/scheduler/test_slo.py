"""The slo policy section (issue 14): a request its best node cannot finish within the SLO goes to the node with the
fewest requests in flight instead of onto the fast nodes' queues. No I/O for the core; the policy API path at the
end (400 naming the field, nothing stored)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from control.policy.defaults import default_document
from control.policy.schemas import DocumentError, validate
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler
from control.scheduler.prefix_index import block_keys
from tests.scheduler.core_fleet import NOW, serve_rounds
from tests.scheduler.policy_api import refused_then_stored


def fleet(slo_s: float | None, margin: float = 0.8) -> Scheduler:
    """'fast' (2-s requests at 4 in flight: 0.5 s per slot) and two 'slow' nodes (6-s requests: 1.5 s per slot),
    on the default policy with slo.latency_s = slo_s."""
    doc = default_document("scheduler")
    doc["slo"] = {"latency_s": slo_s, "margin": margin}
    sched = Scheduler(Config.from_document(validate("scheduler", doc)), random.Random(1))
    names = ["fast", "slow1", "slow2"]
    specs = [NodeSpec(n, "p", "active", f"http://{n}", ("m",)) for n in names]
    sched.update(NOW, specs=specs, samples={n: Metrics(NOW - 1, 1, 50.0, 30.0, 1.0, 0.1, 0, 0, 10.0) for n in names})
    serve_rounds(sched, "fast", 4, 2.0)
    serve_rounds(sched, "slow1", 4, 6.0)
    serve_rounds(sched, "slow2", 4, 6.0)
    sched.recompute(NOW)
    return sched


def load_fast(sched: Scheduler, k: int) -> None:
    for rid in range(k):  # sent before the sample: only expected_wait sees them, not the burst correction
        sched.sent(sched.nodes["fast"], 10_000 + rid, NOW - 2)


def test_a_request_that_would_miss_the_slo_on_its_best_node_goes_where_fewest_are_in_flight() -> None:
    with_slo, without = fleet(5.0), fleet(None)
    for sched in (with_slo, without):
        load_fast(sched, 9)  # fast: 0.5 s x 10 = 5.0 s expected, still better than a slow node's 6 s
        sched.sent(sched.nodes["slow1"], 1, NOW - 2)
        fast = sched.nodes["fast"]
        assert sched.expected_wait(fast) == pytest.approx(5.0)
        assert sched.expected_wait(sched.nodes["slow2"]) == pytest.approx(6.0)
        assert max(sched.nodes.values(), key=sched.base_score) is fast
    assert without.pick("m").node is without.nodes["fast"]  # by score: onto the fast node's queue
    # 5.0 s > 5.0 x 0.8: the request misses there; slow2 has nothing in flight, so it delays nobody there.
    assert with_slo.pick("m").node is with_slo.nodes["slow2"]
    assert with_slo.counters.extra["past_slo"] == 1


def test_within_the_slo_the_score_decides_as_before() -> None:
    sched = fleet(5.0)
    load_fast(sched, 6)  # 3.5 s expected on fast: within 4.0 s
    assert sched.pick("m").node is sched.nodes["fast"]
    assert "past_slo" not in sched.counters.extra


def test_a_streamed_request_keeps_its_first_token_objective() -> None:
    sched = fleet(5.0)
    load_fast(sched, 9)
    assert sched.pick("m").node is not sched.nodes["fast"]
    assert sched.pick("m", stream=True).node is sched.nodes["fast"]


def test_past_the_slo_a_burst_spreads_instead_of_queueing_on_the_fast_node() -> None:
    picks = {}
    for slo in (None, 5.0):
        sched = fleet(slo)
        for rid in range(30):  # none finishes: every node's expected wait grows with its queue
            node = sched.pick("m").node
            assert node is not None
            sched.sent(node, rid, NOW - 2)
        picks[slo] = {n.name: n.in_flight for n in sched.nodes.values()}
    # Without an SLO the fast node takes requests until its expected wait matches the slow ones' (~ 2.5x their
    # count); with it, the fast node stops at the SLO (8 in flight: 0.5 s x 9 > 4 s) and the rest spread evenly.
    assert picks[None]["fast"] > 15
    assert picks[5.0]["fast"] <= 10
    assert abs(picks[5.0]["slow1"] - picks[5.0]["slow2"]) <= 1


def test_past_the_slo_a_node_holding_the_prompts_prefix_is_kept_within_one_request_of_the_fewest() -> None:
    sched = fleet(5.0)  # the default policy: prefix_affinity on
    cfg = sched.config
    prompt = block_keys("system: " + "the shared instructions " * 80, cfg.prefix_block_chars, cfg.prefix_max_blocks)
    load_fast(sched, 9)  # every node past the SLO: fast by its queue, the slow ones by their 6-s requests
    slow1, slow2 = sched.nodes["slow1"], sched.nodes["slow2"]
    sched.sent(slow1, 1, NOW - 2, prompt)  # slow1 holds the prompt, with 1 in flight; slow2 has none
    assert sched.pick("m").node is slow2  # no prompt: the fewest in flight, as before
    # The holder has one request more than the fewest: the cached prefill is worth that much, so it keeps the prompt.
    assert sched.pick("m", prefix=prompt).node is slow1
    assert sched.last_affinity > 0
    sched.sent(slow1, 2, NOW - 2, prompt)  # two more than slow2: the cache no longer pays for the queue
    assert sched.pick("m", prefix=prompt).node is slow2
    assert sched.counters.extra["past_slo"] == 3


def test_past_the_slo_without_the_affinity_scorer_the_prefix_is_not_looked_at() -> None:
    doc = default_document("scheduler")
    doc["scorers"] = [s for s in doc["scorers"] if s["metric"] != "prefix_affinity"]
    doc["slo"] = {"latency_s": 5.0, "margin": 0.8}
    sched = Scheduler(Config.from_document(validate("scheduler", doc)), random.Random(1))
    names = ["a", "b"]
    sched.update(NOW, specs=[NodeSpec(n, "p", "active", f"http://{n}", ("m",)) for n in names],
                 samples={n: Metrics(NOW - 1, 1, 50.0, 30.0, 1.0, 0.1, 0, 0, 10.0) for n in names})
    serve_rounds(sched, "a", 4, 6.0)
    serve_rounds(sched, "b", 4, 6.0)
    sched.recompute(NOW)
    prompt = block_keys("system: " + "the shared instructions " * 80, 256, 128)
    sched.prefix.add("a", prompt)
    sched.sent(sched.nodes["a"], 1, NOW - 2)
    assert sched.pick("m", prefix=prompt).node is sched.nodes["b"]


def test_the_default_has_no_slo_and_the_section_reaches_the_config() -> None:
    doc = validate("scheduler", default_document("scheduler"))
    assert doc["slo"] == {"latency_s": None, "margin": 0.8}
    assert Config.from_document(doc).slo_s == 0.0
    doc["slo"] = {"latency_s": 8.7, "margin": 0.7}
    cfg = Config.from_document(validate("scheduler", doc))
    assert (cfg.slo_s, cfg.slo_margin) == (8.7, 0.7)
    old = default_document("scheduler")
    old.pop("slo")  # a document stored before the section existed
    assert validate("scheduler", old)["slo"] == {"latency_s": None, "margin": 0.8}


@pytest.mark.parametrize("field, value", [
    ("latency_s", 0), ("latency_s", -3), ("latency_s", "fast"), ("latency_s", float("inf")), ("margin", 0),
    ("margin", 1.5), ("margin", None), ("unknown", 1),
])
def test_the_schema_refuses_bad_slo_fields_at_their_path(field: str, value: Any) -> None:
    doc = default_document("scheduler")
    doc["slo"][field] = value
    with pytest.raises(DocumentError) as err:
        validate("scheduler", doc)
    assert list(err.value.fields) == [f"slo.{field}"]


@pytest.mark.django_db
@pytest.mark.parametrize("field, value", [("latency_s", -1), ("margin", 2.0), ("latency_s", "soon")])
def test_the_policy_api_answers_400_naming_the_slo_field_and_stores_nothing(settings: Any, field: str,
                                                                            value: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    stored = refused_then_stored("slo", field, value, {"slo": {"latency_s": 8.7, "margin": 0.75}})
    assert stored["slo"] == {"latency_s": 8.7, "margin": 0.75}
