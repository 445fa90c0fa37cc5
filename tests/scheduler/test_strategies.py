"""The baseline pickers (`picker.strategy`: round_robin, least_in_flight) next to the default `highest`: they ignore
the scores but keep every filter, and the policy schema refuses a strategy it does not know."""

from __future__ import annotations

import copy
import random
from collections import Counter
from typing import Any

import pytest
from rest_framework.test import APIClient

from control.policy.defaults import default_document
from control.policy.models import PolicyRevision
from control.policy.schemas import DocumentError, validate
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler
from tests.conftest import make_user

NOW = 1_800_000_000.0


def config(strategy: str, **filters: Any) -> Config:
    doc = default_document("scheduler")
    doc["picker"]["strategy"] = strategy
    doc["filters"].update(filters)
    return Config.from_document(validate("scheduler", doc))


def metrics(gpu: float = 50.0, running: int = 0, seq: int = 1) -> Metrics:
    return Metrics(NOW - 1, seq, gpu, 30.0, 1.0, 0.1, running, 0, 10.0)


def fleet(strategy: str, names: list[str], states: dict[str, str] | None = None,
          gpu: dict[str, float] | None = None, seed: int = 1, **filters: Any) -> Scheduler:
    states, gpu = states or {}, gpu or {}
    sched = Scheduler(config(strategy, **filters), random.Random(seed))
    specs = [NodeSpec(n, "p", states.get(n, "active"), f"http://{n}", ("m",)) for n in names]
    sched.update(NOW, specs=specs, samples={n: metrics(gpu=gpu.get(n, 50.0)) for n in names})
    return sched


def send(sched: Scheduler, rid: int, exclude: frozenset[str] = frozenset()) -> str:
    pick = sched.pick("m", exclude)
    assert pick.node is not None, pick.verdict
    sched.sent(pick.node, rid, NOW)
    return pick.node.name


# --- round robin ------------------------------------------------------------------------------------------------
def test_round_robin_visits_every_eligible_node_equally_whatever_the_scores() -> None:
    names = [f"n{i}" for i in range(5)]
    # n0 has by far the best score: `highest` would send it everything on this snapshot without burst correction.
    sched = fleet("round_robin", names, gpu={"n0": 0.0, "n1": 95.0, "n2": 60.0, "n3": 60.0, "n4": 90.0})
    order = [send(sched, rid) for rid in range(50)]
    assert Counter(order) == {n: 10 for n in names}
    assert order[:5] == order[5:10] == order[45:]  # a fixed cycle, not a random draw
    assert sorted(order[:5]) == names


def test_round_robin_skips_drained_cordoned_and_quarantined_nodes() -> None:
    names = ["a", "b", "c", "d", "e"]
    sched = fleet("round_robin", names, states={"b": "draining", "d": "cordoned"})
    for _ in range(sched.config.quarantine_failures):
        sched.failed(sched.nodes["e"], NOW)
    assert sched.nodes["e"].quarantined_until is not None
    assert Counter(send(sched, rid) for rid in range(40)) == {"a": 20, "c": 20}
    # A node coming back from drain joins the cycle.
    sched.update(NOW, specs=[NodeSpec(n, "p", "active" if n != "d" else "cordoned", f"http://{n}", ("m",))
                             for n in names])
    assert Counter(send(sched, rid) for rid in range(100, 130)) == {"a": 10, "b": 10, "c": 10}


def test_round_robin_skips_saturated_nodes_and_retries_elsewhere() -> None:
    sched = fleet("round_robin", ["a", "b", "c"], max_gpu_util_pct=90.0, gpu={"b": 95.0})
    assert Counter(send(sched, rid) for rid in range(10)) == {"a": 5, "c": 5}
    assert send(sched, 99, exclude=frozenset({"a"})) == "c"
    assert sched.pick("m", frozenset({"a", "c"})).verdict == "saturated"  # b is healthy, only full
    sched.update(NOW, specs=[NodeSpec(n, "p", "draining", f"http://{n}", ("m",)) for n in "abc"])
    assert sched.pick("m").verdict == "unavailable"


# --- least in flight --------------------------------------------------------------------------------------------
def test_least_in_flight_picks_the_least_loaded_node_whatever_its_score() -> None:
    # c has the worst score (GPU 95 % busy by the last sample) but nothing in flight from this gateway.
    sched = fleet("least_in_flight", ["a", "b", "c"], gpu={"a": 5.0, "b": 10.0, "c": 95.0})
    nodes = sched.nodes
    for rid in range(4):
        sched.sent(nodes["a"], rid, NOW)
    for rid in range(4, 6):
        sched.sent(nodes["b"], rid, NOW)
    assert send(sched, 10) == "c"
    assert send(sched, 11) == "c"  # c: 1 < b: 2
    assert [nodes[n].in_flight for n in "abc"] == [4, 2, 2]
    # Finishing a's requests makes it the least loaded.
    for rid in range(4):
        sched.finished(nodes["a"], rid)
    assert send(sched, 12) == "a"


def test_least_in_flight_spreads_ties_at_random() -> None:
    firsts: Counter[str] = Counter()
    for seed in range(300):
        sched = fleet("least_in_flight", ["a", "b", "c", "d"], seed=seed)
        firsts[send(sched, 0)] += 1
    assert set(firsts) == {"a", "b", "c", "d"} and min(firsts.values()) > 40
    # And a burst on one snapshot goes round: in-flight counts never differ by more than one.
    sched = fleet("least_in_flight", ["a", "b", "c", "d"])
    for rid in range(41):
        send(sched, rid)
        counts = [n.in_flight for n in sched.nodes.values()]
        assert max(counts) - min(counts) <= 1


def test_least_in_flight_keeps_the_filters() -> None:
    sched = fleet("least_in_flight", ["a", "b", "c", "d"], states={"b": "draining"}, gpu={"d": 99.5})
    for _ in range(sched.config.quarantine_failures):
        sched.failed(sched.nodes["c"], NOW)
    assert {send(sched, rid) for rid in range(20)} == {"a"}  # b draining, c quarantined, d saturated (GPU)


def test_a_policy_change_switches_the_strategy_live() -> None:
    sched = fleet("highest", ["a", "b", "c"], gpu={"a": 0.0, "b": 90.0, "c": 90.0})
    doc = default_document("scheduler")
    classic = [s for s in doc["scorers"] if s["metric"] != "expected_wait"]  # the classic formula alone
    herd = Config.from_document(validate("scheduler", {**doc, "scorers": classic,
                                                       "load": {"node_capacity": 32, "burst_correction": 0}}))
    sched.update(NOW, config=herd)
    assert {send(sched, rid) for rid in range(9)} == {"a"}  # highest, no burst correction: the herd
    sched.update(NOW, config=config("round_robin"))
    assert Counter(send(sched, rid) for rid in range(100, 109)) == {"a": 3, "b": 3, "c": 3}
    sched.update(NOW, config=config("least_in_flight"))
    assert send(sched, 200) in ("b", "c")  # a has 12 in flight


# --- the schema -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["highest", "round_robin", "least_in_flight"])
def test_the_schema_accepts_the_three_strategies(strategy: str) -> None:
    doc = default_document("scheduler")
    doc["picker"]["strategy"] = strategy
    assert validate("scheduler", doc)["picker"]["strategy"] == strategy
    assert Config.from_document(validate("scheduler", doc)).strategy == strategy


@pytest.mark.parametrize("strategy", ["random", "Round_Robin", "", 3, None])
def test_the_schema_refuses_an_unknown_strategy_at_its_path(strategy: Any) -> None:
    doc = default_document("scheduler")
    doc["picker"]["strategy"] = strategy
    with pytest.raises(DocumentError) as err:
        validate("scheduler", doc)
    assert list(err.value.fields) == ["picker.strategy"]
    assert "highest" in err.value.fields["picker.strategy"]  # the message lists what is allowed


@pytest.mark.django_db
def test_the_policy_api_answers_400_naming_picker_strategy_and_stores_nothing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {make_user('operator', 'operator')}")
    current = client.get("/api/v1/policies/scheduler/").json()
    doc = copy.deepcopy(current["document"])
    doc["picker"]["strategy"] = "weighted_random"
    before = PolicyRevision.objects.count()
    bad = client.post("/api/v1/policies/scheduler/revisions/", {"document": doc, "reason": "try a baseline",
                                                                 "parent": current["id"]}, format="json")
    assert bad.status_code == 400, bad.content
    assert "picker.strategy" in bad.json()["fields"]
    assert PolicyRevision.objects.count() == before
    doc["picker"]["strategy"] = "least_in_flight"
    good = client.post("/api/v1/policies/scheduler/revisions/", {"document": doc, "reason": "baseline",
                                                                  "parent": current["id"]}, format="json")
    assert good.status_code == 201, good.content
    assert client.get("/api/v1/policies/scheduler/").json()["document"]["picker"]["strategy"] == "least_in_flight"
