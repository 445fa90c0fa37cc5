"""Cache-aware routing in the scheduler core: the gateway's approximate prefix index, the prefix_affinity scorer
(one weighted term: it wins a request for the node holding the prefix until that node's queue costs more), the
SGLang-style cache_aware picker, and the policy fields' validation (400 naming the field, nothing stored)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from control.policy.defaults import default_document
from control.policy.schemas import DocumentError, validate
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler
from control.scheduler.prefix_index import PrefixIndex, block_keys, prompt_text
from tests.scheduler.policy_api import refused_then_stored

NOW = 1_800_000_000.0
SYSTEM = "You are the support assistant of a shop that sells very particular things. " * 40  # ~3,000 characters


def config(weight: float = 2.0, strategy: str = "highest", **prefix: Any) -> Config:
    doc = default_document("scheduler")
    doc["scorers"] = [s for s in doc["scorers"] if s["metric"] != "prefix_affinity"]
    if weight:
        doc["scorers"].append({"metric": "prefix_affinity", "weight": weight, "invert": False})
    doc["picker"]["strategy"] = strategy
    doc["prefix"] = {**doc.get("prefix", {}), **prefix}
    return Config.from_document(validate("scheduler", doc))


def fleet(cfg: Config, n: int = 4, seed: int = 1) -> Scheduler:
    sched = Scheduler(cfg, random.Random(seed))
    specs = [NodeSpec(f"n{i}", "p", "active", f"http://n{i}", ("m",)) for i in range(n)]
    sched.update(NOW, specs=specs,
                 samples={s.name: Metrics(NOW - 1, 1, 50.0, 30.0, 1.0, 0.1, 0, 0, 10.0) for s in specs})
    for node in sched.nodes.values():
        node.slot_s = 1.0  # every node equally fast (expected_wait), so load alone separates them
    sched.recompute(NOW)
    return sched


def keys(question: str, system: str = SYSTEM) -> tuple[int, ...]:
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    return block_keys(prompt_text(body), 64, 512)


def send(sched: Scheduler, rid: int, prefix: tuple[int, ...], exclude: frozenset[str] = frozenset()) -> str:
    pick = sched.pick("m", exclude, prefix)
    assert pick.node is not None, pick.verdict
    sched.sent(pick.node, rid, NOW, prefix)
    return pick.node.name


# --- the index --------------------------------------------------------------------------------------------------
def test_block_keys_are_chained_over_whole_blocks() -> None:
    a = block_keys("x" * 64 + "y" * 64 + "z" * 10, 64, 512)
    assert len(a) == 2  # the partial last block is not a block
    b = block_keys("w" * 64 + "y" * 64, 64, 512)
    assert a[1] != b[1]  # the same second block after another first one is another key
    assert block_keys("x" * 64 + "q" * 64, 64, 512)[0] == a[0]
    assert len(block_keys("x" * 64 * 1000, 64, 100)) == 100  # capped at max_blocks


def test_prompt_text_keeps_a_shared_message_prefix_a_text_prefix() -> None:
    one = prompt_text({"messages": [{"role": "system", "content": "abc"}, {"role": "user", "content": "q1"}]})
    two = prompt_text({"messages": [{"role": "system", "content": "abc"}, {"role": "user", "content": "q1"},
                                    {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]})
    assert two.startswith(one)
    assert prompt_text({"prompt": ["ab", "cd"]}) == "abcd"
    assert prompt_text({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}) == "user: hi"


def test_matches_count_the_leading_blocks_each_node_holds() -> None:
    idx = PrefixIndex(capacity=1000)
    long = block_keys("a" * 64 * 10, 64, 512)
    idx.add("A", long)
    idx.add("B", long[:4])
    idx.add("C", block_keys("b" * 64 * 10, 64, 512))
    assert idx.matches(long) == {"A": 10, "B": 4}
    assert idx.matches(long, among=["B", "C"]) == {"B": 4}
    assert idx.matches(()) == {}


def test_the_lru_bound_drops_the_oldest_blocks_first() -> None:
    idx = PrefixIndex(capacity=12)
    old, new = block_keys("a" * 64 * 8, 64, 512), block_keys("b" * 64 * 8, 64, 512)
    idx.add("A", old)
    idx.add("A", new)
    assert idx.size("A") == 12
    assert idx.matches(new) == {"A": 8}  # the newest prompt whole
    assert idx.matches(old) == {}  # the oldest lost its first blocks: no leading match left
    idx.add("A", old[:2])  # touched again: most recent now
    idx.resize(2)
    assert idx.matches(old) == {"A": 2} and idx.size("A") == 2


def test_a_block_shared_then_dropped_by_its_holders_is_looked_up_right_at_each_step() -> None:
    idx = PrefixIndex(capacity=1000)
    p = block_keys("a" * 64 * 6, 64, 512)
    idx.add("A", p)
    idx.add("A", p)  # again: still one holder
    assert idx.matches(p) == {"A": 6}
    idx.add("B", p[:3])
    idx.add("C", p[:3])
    assert idx.matches(p) == {"A": 6, "B": 3, "C": 3}
    idx.remove("A", p[3:])  # A's engine evicted its tail: the three share the whole match
    assert idx.matches(p) == {"A": 3, "B": 3, "C": 3}
    idx.forget("B")
    idx.remove("C", p)
    assert idx.matches(p) == {"A": 3}
    idx.add("C", p)
    assert idx.matches(p) == {"C": 6, "A": 3}
    idx.forget("A")
    idx.forget("C")
    assert idx.matches(p) == {} and idx.holders == {}


def test_a_block_one_node_holds_costs_under_200_bytes() -> None:
    """Most blocks are one node's (a prompt's own tail): at 1,000 nodes x 10,000 blocks the index is 10 M of them, and
    a one-entry dict of holders per block made it 359 bytes each (3.4 GiB) where it is now about 166."""
    import tracemalloc

    idx = PrefixIndex(capacity=100_000)
    rng = random.Random(1)
    prompts = [tuple(rng.getrandbits(63) for _ in range(31)) for _ in range(1000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, p in enumerate(prompts):
            idx.add(f"node-{i % 50}", p)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sum(idx.size(f"node-{n}") for n in range(50)) == 31_000
    assert used / 31_000 < 200, used / 31_000


def test_a_removed_or_failed_node_is_forgotten() -> None:
    sched = fleet(config())
    p = keys("q")
    first = send(sched, 1, p)
    assert sched.prefix.matches(p) == {first: len(p)}
    # Removed from the registry: its cache is gone with it.
    specs = [NodeSpec(n, "p", "active", f"http://{n}", ("m",)) for n in sched.nodes if n != first]
    sched.update(NOW, specs=specs)
    assert sched.prefix.matches(p) == {}
    # A node that fails (its inference server stops reporting) is forgotten too.
    second = send(sched, 2, p)
    sched.update(NOW, samples={second: Metrics(NOW, 2, 50.0, 30.0, 1.0, 0.1, None, None, None)})
    assert not sched.nodes[second].healthy
    assert sched.prefix.matches(p) == {}


# --- the scorer -------------------------------------------------------------------------------------------------
def test_a_prompt_whose_prefix_is_on_a_node_goes_there() -> None:
    sched = fleet(config())
    first = send(sched, 1, keys("first question"))
    sched.finished(sched.nodes[first], 1, 0.1, now=NOW + 1)
    later = [send(sched, rid, keys(f"question {rid}")) for rid in range(2, 6)]
    assert later == [first] * 4  # the system prompt is there: each follows it while the queue stays short
    assert sched.last_affinity > 0
    # Without the scorer the same requests spread by load.
    blind = fleet(config(weight=0))
    assert len({send(blind, rid, keys(f"question {rid}")) for rid in range(1, 6)}) > 1


def test_when_the_nodes_queue_costs_more_than_the_affinity_the_request_goes_elsewhere() -> None:
    sched = fleet(config(weight=2.0))
    home = send(sched, 1, keys("q1"))
    # Load the home node with unrelated work until its wait outweighs what the cached prefix saves.
    rid = 100
    while sched.base_score(sched.nodes[home]) + 2.0 > max(sched.base_score(n) for n in sched.nodes.values()
                                                             if n.name != home):
        sched.sent(sched.nodes[home], rid, NOW)
        rid += 1
    assert send(sched, 2, keys("q2")) != home
    # A hot prefix therefore spreads over a second node instead of piling onto the first.
    cold = fleet(config(weight=2.0))
    names = [send(cold, r, keys(f"hot {r}")) for r in range(60)]
    assert 2 <= len(Counter(names)) and max(Counter(names).values()) < 60


def test_no_match_means_the_pick_of_the_policy_without_the_scorer() -> None:
    with_scorer, without = fleet(config(weight=3.0), seed=5), fleet(config(weight=0), seed=5)
    a = [send(with_scorer, r, block_keys(f"[{r:x}] independent prompt " * 20, 64, 512)) for r in range(40)]
    b = [send(without, r, ()) for r in range(40)]
    assert a == b


def test_each_pick_is_the_best_full_score_among_the_prefix_holders() -> None:
    """The picker compares holders by the score their heap entry was made with (Node.base), not by re-scoring: after
    any mix of sends, finishes and new samples, its pick must still score (in full: base_score + affinity) at least
    as high as every eligible holder, and as the best node without affinity."""
    cfg = config(weight=2.0)
    sched = fleet(cfg, n=12, seed=3)
    rng = random.Random(11)
    systems = [f"System prompt number {g}. " * 30 for g in range(3)]
    in_flight: list[tuple[str, int]] = []
    spread = 0  # picks with more than one holder to choose from
    for rid in range(1, 400):
        p = keys(f"question {rid % 37} " * 12, system=rng.choice(systems))  # its own last blocks
        pick = sched.pick("m", frozenset(), p)
        assert pick.node is not None
        matches = sched.prefix.matches(p)
        spread += len(matches) > 1

        def full(node: Any, p: tuple[int, ...] = p, matches: dict[str, int] = matches) -> float:
            count = matches.get(node.name, 0)
            return sched.base_score(node) + (2.0 * count / len(p) if count >= cfg.prefix_min_match else 0.0)

        listed = [n for n in sched.nodes.values() if n.listed]
        best_holder = max((full(n) for n in listed if n.name in matches), default=float("-inf"))
        assert full(pick.node) >= best_holder - 1e-9
        assert full(pick.node) >= max(sched.base_score(n) for n in listed) - cfg.tie_epsilon - 1e-9
        sched.sent(pick.node, rid, NOW + rid * 0.01, p)
        in_flight.append((pick.node.name, rid))
        if len(in_flight) > 150 or rng.random() < 0.2:
            name, old = in_flight.pop(rng.randrange(len(in_flight)))
            sched.finished(sched.nodes[name], old, rng.uniform(0.05, 0.5), now=NOW + rid * 0.01)
        if rid % 50 == 0:  # fresh samples for a few nodes: their static scores change
            sched.update(NOW + rid * 0.01, samples={
                f"n{i}": Metrics(NOW + rid * 0.01, rid, rng.uniform(10, 90), 30.0, 1.0, 0.1, 0, 0, 10.0)
                for i in rng.sample(range(12), 4)})
    assert spread > 100  # the hot prefixes did spread: holders were compared


def test_min_match_blocks_ignores_short_shared_beginnings() -> None:
    sched = fleet(config(weight=5.0, min_match_blocks=8))
    short = "preamble " * 12  # ~100 characters: one shared block
    home = send(sched, 1, keys("x" * 2000, system=short))
    sched.finished(sched.nodes[home], 1, 0.1, now=NOW + 1)
    picks = Counter(send(sched, r, keys(f"{r}" + "y" * 2000, system=short)) for r in range(2, 30))
    assert picks[home] < 20  # one matching block is below min_match_blocks: no pull towards home


def test_describe_shows_the_affinity_term_and_the_index_size() -> None:
    sched = fleet(config())
    home = send(sched, 1, keys("q"))
    send(sched, 2, keys("q2"))
    row = {r["node"]: r for r in sched.describe(NOW)}[home]
    assert row["parts"]["prefix_affinity"] > 0 and row["prefix_blocks"] == len(keys("q2"))


# --- SGLang-style cache_aware -------------------------------------------------------------------------------------
def test_cache_aware_follows_the_longest_match_above_the_threshold() -> None:
    sched = fleet(config(weight=0, strategy="cache_aware"))
    home = send(sched, 1, keys("q1"))
    assert all(send(sched, r, keys(f"q{r}")) == home for r in range(2, 10))
    # A new prefix goes to the node holding the fewest blocks, not to home.
    assert send(sched, 50, keys("other", system="Another system prompt entirely. " * 50)) != home


def test_cache_aware_balances_by_in_flight_when_imbalanced() -> None:
    sched = fleet(config(weight=0, strategy="cache_aware"))
    home = send(sched, 1, keys("q1"))
    for rid in range(100, 140):  # 41 in flight on home, 0 elsewhere: max - min > 32 and max > 1.1 x min
        sched.sent(sched.nodes[home], rid, NOW)
    assert send(sched, 2, keys("q2")) != home


# --- the policy fields ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, field, value", [
    ("prefix", "block_chars", 4), ("prefix", "block_chars", "sixty"), ("prefix", "index_blocks", 0),
    ("prefix", "min_match_blocks", 0), ("prefix", "max_blocks", 10**9), ("prefix", "unknown", 1),
    ("picker", "cache_threshold", 1.5), ("picker", "balance_abs_threshold", -1),
    ("picker", "balance_rel_threshold", 0.5), ("picker", "cache_threshold", float("nan")),
])
def test_the_schema_refuses_bad_prefix_fields_at_their_path(section: str, field: str, value: Any) -> None:
    doc = default_document("scheduler")
    doc.setdefault(section, {})[field] = value
    with pytest.raises(DocumentError) as err:
        validate("scheduler", doc)
    assert list(err.value.fields) == [f"{section}.{field}"]


def test_the_schema_refuses_a_misspelt_or_repeated_affinity_scorer() -> None:
    doc = default_document("scheduler")
    i = next(i for i, s in enumerate(doc["scorers"]) if s["metric"] == "prefix_affinity")
    doc["scorers"][i]["metric"] = "prefix_affinty"
    with pytest.raises(DocumentError) as err:
        validate("scheduler", doc)
    assert list(err.value.fields) == [f"scorers[{i}].metric"]
    assert "prefix_affinity" in err.value.fields[f"scorers[{i}].metric"]
    doc["scorers"][i]["metric"] = "prefix_affinity"
    doc["scorers"][0]["metric"] = "prefix_affinity"
    with pytest.raises(DocumentError) as err:
        validate("scheduler", doc)
    assert "repeated: prefix_affinity" in err.value.fields["scorers"]


@pytest.mark.django_db
@pytest.mark.parametrize("section, field, value", [
    ("prefix", "index_blocks", -5), ("prefix", "block_chars", "sixty-four"), ("picker", "strategy", "cache-aware"),
    ("picker", "balance_rel_threshold", 1e9),
])
def test_the_policy_api_answers_400_naming_the_field_and_stores_nothing(settings: Any, section: str, field: str,
                                                                        value: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    good = {"picker": {"strategy": "cache_aware"},
            "prefix": {"block_chars": 128, "index_blocks": 5000, "min_match_blocks": 4, "max_blocks": 256}}
    stored = refused_then_stored(section, field, value, good)
    assert stored["prefix"]["block_chars"] == 128 and stored["picker"]["strategy"] == "cache_aware"
