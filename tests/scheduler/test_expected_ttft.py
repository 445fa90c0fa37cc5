"""expected_ttft (issue 14): a streamed request also weighs how soon a node's streamed requests got their first
token; a non-streamed one is routed as before. No I/O: the core on its own (the gateway path is in
test_gateway.py)."""

from __future__ import annotations

import math
import random

import pytest

from control.policy.defaults import default_document
from control.policy.schemas import validate
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler
from tests.scheduler.core_fleet import NOW, default_fleet, serve_rounds


def teach(sched: Scheduler, name: str, latency_s: float, ttft_s: float, k: int = 4, rounds: int = 30) -> None:
    """Rounds of k requests sent together, each taking latency_s; half of them streamed with a first token after
    ttft_s (the other half non-streamed: their `ttft_s` is the whole answer, as the proxy reports it)."""
    serve_rounds(sched, name, k, latency_s, rounds, since_s=900.0, streamed_ttft_s=ttft_s)


def taught(ttft_s: dict[str, float]) -> Scheduler:
    """The default fleet of these nodes, each taught 2-s requests whose streamed ones got their first token after
    its ttft_s."""
    sched = default_fleet(list(ttft_s))
    for name, ttft in ttft_s.items():
        teach(sched, name, 2.0, ttft)
    sched.recompute(NOW)
    return sched


def two_nodes() -> Scheduler:
    """'quick' and 'slow' finish their requests alike (same slot, same latency), but quick's streamed requests got
    their first token after 0.07 s and slow's after 0.18 s (an h100's and an l40s's prefill step)."""
    return taught({"quick": 0.07, "slow": 0.18})


def test_a_streamed_request_goes_where_the_first_token_comes_soonest_a_plain_one_as_before() -> None:
    sched = two_nodes()
    quick, slow = sched.nodes["quick"], sched.nodes["slow"]
    assert quick.stream_ttft_s == pytest.approx(0.07) and slow.stream_ttft_s == pytest.approx(0.18)
    assert quick.latency_s == pytest.approx(slow.latency_s) and quick.slot_s == pytest.approx(slow.slot_s)
    # quick has 4 requests in flight (past the 4 its requests ran at: expected 2.5 s against slow's 2.0 s), so
    # without the streamed term slow is the better node for anyone.
    for rid in range(4):
        sched.sent(quick, rid, NOW - 2)  # sent before the sample: no burst correction, only expected_wait sees it
    assert sched.expected_wait(quick) > sched.expected_wait(slow)
    assert sched.base_score(slow) > sched.base_score(quick)
    assert sched.pick("m").node is slow  # non-streamed: expected_wait decides, as before
    assert sched.pick("m", stream=True).node is quick  # streamed: its first token comes 0.11 s sooner there


def test_a_streamed_request_leaves_the_quick_node_when_its_queue_outweighs_the_first_token() -> None:
    sched = two_nodes()
    picks = []
    for rid in range(40):  # streamed requests only, none finishing: quick's expected wait grows with each one
        node = sched.pick("m", stream=True).node
        assert node is not None
        sched.sent(node, 100 + rid, NOW + 1)
        picks.append(node.name)
    assert picks[0] == "quick"
    assert "slow" in picks  # it does not herd: past some queue, slow starts sooner after all
    assert picks.count("quick") > picks.count("slow")


def test_a_plain_answer_does_not_teach_the_time_to_first_token() -> None:
    sched = default_fleet(["n"])
    node = sched.nodes["n"]
    sched.sent(node, 1, NOW)
    sched.finished(node, 1, ttft_s=3.0, now=NOW + 3, ok=True)  # non-streamed: its first byte is its whole answer
    assert node.stream_ttft_s is None and node.latency_s == pytest.approx(3.0)
    sched.sent(node, 2, NOW + 4)
    sched.finished(node, 2, ttft_s=0.2, now=NOW + 7, ok=True, stream=True)
    assert node.stream_ttft_s == pytest.approx(0.2)
    sched.sent(node, 3, NOW + 8)
    sched.finished(node, 3, ttft_s=None, now=NOW + 8.5, ok=False, stream=True)  # a failure teaches nothing
    assert node.stream_ttft_s == pytest.approx(0.2)
    assert sched.describe(NOW + 9)[0]["stream_ttft_s"] == pytest.approx(0.2)


def test_without_the_scorer_a_streamed_request_is_routed_like_any_other() -> None:
    doc = default_document("scheduler")
    doc["scorers"] = [s for s in doc["scorers"] if s["metric"] != "expected_ttft"]
    sched = Scheduler(Config.from_document(validate("scheduler", doc)), random.Random(1))
    specs = [NodeSpec(n, "p", "active", f"http://{n}", ("m",)) for n in ("quick", "slow")]
    sched.update(NOW, specs=specs, samples={n: Metrics(NOW - 1, 1, 50.0, 30.0, 1.0, 0.1, 0, 0, 10.0)
                                            for n in ("quick", "slow")})
    teach(sched, "quick", 2.0, 0.07)
    teach(sched, "slow", 2.0, 0.18)
    sched.recompute(NOW)
    for rid in range(4):
        sched.sent(sched.nodes["quick"], rid, NOW - 2)
    assert sched.pick("m", stream=True).node is sched.nodes["slow"]


def test_no_measurement_anywhere_changes_nothing() -> None:
    # A fresh gateway: no node has a streamed TTFT yet, so the term is the same for every node (neutral).
    sched = default_fleet(["a", "b", "c"])
    sched.sent(sched.nodes["a"], 1, NOW - 2)
    sched.sent(sched.nodes["b"], 2, NOW - 2)
    assert sched.pick("m", stream=True).node is sched.nodes["c"]
    assert sched.pick("m").node is sched.nodes["c"]


def test_the_policy_field_is_validated() -> None:
    doc = default_document("scheduler")
    weights = {s["metric"]: (s["weight"], s["invert"]) for s in validate("scheduler", doc)["scorers"]}
    assert weights["expected_ttft"] == (3.0, True)
    assert "expected_ttft" in Config.from_document(validate("scheduler", doc)).weights
    # Not part of the span the burst correction is scaled by (a per-request term, like expected_wait).
    assert Config.from_document(validate("scheduler", doc)).span == pytest.approx(1.0)


def three_nodes() -> Scheduler:
    """'a' and 'b' start streams after 0.07 s, 'slow' after 0.5 s; all three finish requests alike."""
    return taught({"a": 0.07, "b": 0.07, "slow": 0.5})


def test_a_node_steered_away_from_drifts_back_to_the_fleet_median() -> None:
    sched = three_nodes()
    slow = sched.nodes["slow"]
    last = slow.stream_ttft_at
    assert slow.stream_ttft_s == pytest.approx(0.5)
    assert sched.pick("m", stream=True).node is not slow

    def at(t: float) -> None:  # fresh samples (the nodes stay healthy), then the gateway's periodic tick
        sched.update(t, samples={n: Metrics(t - 1, int(t), 50.0, 30.0, 1.0, 0.1, 0, 0, 10.0) for n in sched.nodes})
        sched.tick(t)

    at(last + 30)  # measured 30 s ago: it holds
    assert slow.stream_ttft_s == pytest.approx(0.5)
    at(last + 60 + 120)  # two minutes past the stale threshold: e^-1 of the gap to the median is left
    assert slow.stream_ttft_s == pytest.approx(0.07 + 0.43 * math.exp(-1))
    at(last + 60 + 240)  # step by step, the same curve
    assert slow.stream_ttft_s == pytest.approx(0.07 + 0.43 * math.exp(-2))
    for rid in range(16):  # a and b get 8 requests in flight each: the drifted slow node is now the better start
        sched.sent(sched.nodes["ab"[rid % 2]], 50 + rid, last + 298)  # before the sample: no burst correction
    assert sched.pick("m", stream=True).node is slow
    sched.sent(slow, 70, last + 300)
    sched.finished(slow, 70, ttft_s=0.08, now=last + 301, ok=True, stream=True)  # it did get faster: noticed
    assert slow.stream_ttft_s < 0.15 and slow.stream_ttft_at == last + 301


def test_a_measured_node_does_not_drift() -> None:
    sched = three_nodes()
    a = sched.nodes["a"]
    before = a.stream_ttft_s
    sched.tick(a.stream_ttft_at + 59)
    assert a.stream_ttft_s == before


def test_a_streamed_request_learns_the_prefill_rate_from_the_tokens_its_first_token_waited_for() -> None:
    sched = default_fleet(["n"])
    node = sched.nodes["n"]
    sched.sent(node, 1, NOW, prompt=1000)  # no rate anywhere yet: only its own prompt is known to be ahead of it
    sched.finished(node, 1, ttft_s=0.1, now=NOW + 1, ok=True, stream=True)
    assert node.prefill_tps == pytest.approx(10_000)
    # Two prompts at once: the second one's first token waits for both prefills (2,000 tokens).
    sched.sent(node, 2, NOW + 10, prompt=1000)
    sched.sent(node, 3, NOW + 10, prompt=1000)
    assert node.sent_work == {2: 1000, 3: 2000}
    sched.finished(node, 2, ttft_s=3.0, now=NOW + 13, ok=True)  # non-streamed: its TTFT is the whole answer
    assert node.prefill_tps == pytest.approx(10_000)
    sched.finished(node, 3, ttft_s=0.4, now=NOW + 13, ok=True, stream=True)  # 2,000 tokens in 0.4 s: 5,000/s
    assert node.prefill_tps == pytest.approx(0.8 * 10_000 + 0.2 * 5_000)
    assert sched.describe(NOW + 13)[0]["prefill_tps"] == pytest.approx(9_000)
    # A prompt sent after the backlog was worked off waits for itself only.
    sched.sent(node, 4, NOW + 20, prompt=500)
    assert node.sent_work[4] == 500


def prefill_taught() -> Scheduler:
    """'quick' and 'slow' finish requests alike; quick's streamed 1,000-token prompts got their first token after
    0.07 s, slow's after 0.18 s."""
    sched = default_fleet(["quick", "slow"])
    serve_rounds(sched, "quick", 4, 2.0, since_s=900.0, streamed_ttft_s=0.07, prompt=1000)
    serve_rounds(sched, "slow", 4, 2.0, since_s=900.0, streamed_ttft_s=0.18, prompt=1000)
    sched.recompute(NOW)
    return sched


@pytest.mark.parametrize("queued", [False, True])
def test_a_streamed_request_avoids_a_node_with_long_prompts_queued(queued: bool) -> None:
    sched = prefill_taught()
    quick, slow = sched.nodes["quick"], sched.nodes["slow"]
    assert quick.prefill_tps > 2 * slow.prefill_tps > 0
    # Three 8,000-token prompts just sent to quick (before its sample: no burst correction). Counted as queued
    # prefills, quick's first token is now seconds away; counted as requests only (no prompt length given),
    # quick stays the sooner start, as before.
    for rid in range(3):
        sched.sent(quick, 500 + rid, NOW - 2, prompt=8000 if queued else 0)
    assert sched.pick("m", stream=True).node is (slow if queued else quick)
    assert sched.pick("m").node is slow  # a plain request: expected_wait decides either way (3 in flight)
    if queued:
        assert sched.expected_ttft(quick) > 3 * sched.expected_ttft(slow)


def test_the_prefill_backlog_is_worked_off_at_the_node_rate() -> None:
    sched = prefill_taught()
    quick = sched.nodes["quick"]
    idle = sched.expected_ttft(quick)
    sched.sent(quick, 600, NOW - 2, prompt=20_000)
    queued = sched.expected_ttft(quick)  # (the mean prompt it adds to the backlog moved up a little too)
    assert queued > idle and queued == pytest.approx((20_000 + sched._prompt_mean) / quick.prefill_tps)
    sched.tick(NOW - 2 + 10_000 / quick.prefill_tps)  # half of it worked off
    assert sched.expected_ttft(quick) == pytest.approx(queued - 10_000 / quick.prefill_tps)
    sched.tick(NOW + 60)  # all of it: the backlog stops at empty, and the estimate at what quick's streams had
    assert queued - 20_000 / quick.prefill_tps < quick.stream_ttft_s
    assert sched.expected_ttft(quick) == pytest.approx(quick.stream_ttft_s)


def test_a_node_whose_streams_slowed_is_no_sooner_start_than_they_were() -> None:
    """The floor: quick's last three streams took 1 s to their first token with nothing queued (a slowdown the
    prompt backlog does not see). Its learned rate, an average of rates, still says a 0.06-s start; the estimate
    takes what its streams had, and the stream goes to slow (issue 14, short prompts at 110 %)."""
    sched = prefill_taught()
    quick, slow = sched.nodes["quick"], sched.nodes["slow"]
    assert sched.pick("m", stream=True).node is quick
    for i in range(3):
        t = NOW - 100 + 10 * i
        sched.sent(quick, 900 + i, t, prompt=1000)
        sched.finished(quick, 900 + i, ttft_s=1.0, now=t + 2.0, ok=True, stream=True)
    assert 1000 / quick.prefill_tps < sched.expected_ttft(slow) < 0.5  # the rate alone: still the sooner start
    assert sched.expected_ttft(quick) == pytest.approx(quick.stream_ttft_s) and quick.stream_ttft_s > 0.5
    assert sched.pick("m", stream=True).node is slow


def test_an_unmeasured_node_is_assumed_to_prefill_as_its_latency_says_and_gets_no_stream_before_that() -> None:
    sched = default_fleet(["quick", "slow", "new"])
    serve_rounds(sched, "quick", 4, 2.0, since_s=900.0, streamed_ttft_s=0.1, prompt=1000)
    serve_rounds(sched, "slow", 4, 5.0, since_s=900.0, prompt=1000)  # plain requests only: no prefill rate
    sched.recompute(NOW)
    quick, slow, new = sched.nodes["quick"], sched.nodes["slow"], sched.nodes["new"]
    assert quick.prefill_tps > 0 and slow.prefill_tps == 0 and new.prefill_tps == 0
    assert quick.latency_s == pytest.approx(2.0) and slow.latency_s == pytest.approx(5.0)
    # slow's requests take 2.5 x as long as quick's: taken to prefill at 1 / 2.5 of quick's rate, so a 1,000-token
    # prompt's first token is 2.5 x as far there as its prefill at quick's rate
    assert sched.expected_ttft(slow) == pytest.approx(2.5 * 1000 / quick.prefill_tps)
    # new has served nothing: the slowest start of all until a request measures it
    assert sched.expected_ttft(new) == math.inf
    assert sched.pick("m", stream=True).node is quick
    # quick and slow busy (sent before their samples: no burst correction): a plain request goes to new and
    # measures it, a streamed one still does not
    for rid in range(8):
        sched.sent(quick if rid % 2 else slow, 700 + rid, NOW - 2, prompt=1000)
    assert sched.pick("m").node is new
    assert sched.pick("m", stream=True).node is not new
    sched.sent(new, 800, NOW)
    sched.finished(new, 800, ttft_s=4.0, now=NOW + 4.0, ok=True)
    assert sched.expected_ttft(new) == pytest.approx(
        1000 * 4.0 / (quick.prefill_tps * quick.latency_s))  # a mean prompt at the prior rate
