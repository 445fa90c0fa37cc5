"""bench/routing.py --sweep's verdict and its engine-side figures (the figures themselves come from running it)."""

from __future__ import annotations

from typing import Any

from bench.routing import engine_means, streamed_tail, sweep_report
from control.loadgen.runner import Outcome


def result(p95: float, ttft: float, goodput: float) -> dict[str, Any]:
    return {"latency": {"p95": p95}, "ttft": {"p95": ttft}, "goodput": goodput}


def point(share: float, rr: tuple[float, float, float], lif: tuple[float, float, float],
          sy: tuple[float, float, float]) -> dict[str, Any]:
    return {"share": share, "rate": 10 * share,
            "results": {"round_robin": result(*rr), "least_in_flight": result(*lif), "switchyard": result(*sy)}}


def test_every_target_at_every_point_or_the_sweep_is_not_met() -> None:
    good = [point(0.5, (8, 2, 5), (6, 1, 6), (4, 0.5, 7)), point(1.1, (30, 20, 3), (20, 10, 4), (15, 8, 4))]
    _, verdicts, ok = sweep_report(good)
    assert ok and verdicts[-1].endswith("MET") and verdicts[:2] == ["50%: met", "110%: met"]
    # TTFT at 0.9 x least_in_flight at one point: the whole sweep fails and the line says which target.
    bad = [good[0], point(1.1, (30, 20, 3), (20, 10, 4), (15, 9, 4))]
    _, verdicts, ok = sweep_report(bad)
    assert not ok and "p95 TTFT 0.90 x LIF > 0.85" in verdicts[1] and verdicts[-1].endswith("NOT met")
    # Less goodput than least_in_flight fails too.
    _, verdicts, ok = sweep_report([point(0.8, (30, 20, 3), (20, 10, 4), (15, 8, 3.9))])
    assert not ok and "goodput 0.97 x LIF < 1.0" in verdicts[0]


def test_at_light_load_the_default_must_not_lose_to_round_robin_either() -> None:
    # Beats least_in_flight by far, but round robin's TTFT is lower: a miss below 80 %, not at 80 %.
    light = point(0.65, (8, 0.2, 5), (16, 1, 5), (6, 0.3, 6))
    _, verdicts, ok = sweep_report([light])
    assert not ok and "p95 TTFT 1.50 x RR > 1.0" in verdicts[0]
    _, verdicts, ok = sweep_report([{**light, "share": 0.8}])
    assert ok


def test_engine_means_are_per_profile_over_the_run_only() -> None:
    before = {"u1": {"e2e_sum": 10.0, "e2e_count": 5, "queue_sum": 0.0, "queue_count": 5, "ttft_sum": 1.0,
                     "ttft_count": 5}}
    after = {"u1": {"e2e_sum": 40.0, "e2e_count": 15, "queue_sum": 2.0, "queue_count": 15, "ttft_sum": 3.0,
                    "ttft_count": 15},
             "u2": {"e2e_sum": 9.0, "e2e_count": 3, "queue_sum": 0.0, "queue_count": 3, "ttft_sum": 0.3,
                    "ttft_count": 3}}
    means = engine_means(before, after, {"u1": "h100", "u2": "h100"})
    # u1 served 10 requests in the run (30 s), u2 3 (9 s): 39 s / 13 requests.
    assert means["h100"]["e2e"] == 39.0 / 13
    assert means["h100"]["queue"] == 2.0 / 13


def test_round_robin_is_left_out_past_light_load_and_the_verdict_still_reads() -> None:
    # The sweep runs round robin only below 80 % (a target there only): its columns read '-' and the verdict
    # judges against least_in_flight alone.
    heavy = point(0.95, (30, 20, 3), (20, 10, 4), (15, 8, 4))
    del heavy["results"]["round_robin"]
    text, verdicts, ok = sweep_report([point(0.5, (8, 2, 5), (6, 1, 6), (4, 0.5, 7)), heavy])
    assert ok and verdicts[1] == "95%: met"
    assert "| 95% | 9.5 | - / 20.00 s / 15.00 s | - / 10.00 s / 8.00 s | - / 4.0 / 4.0 |" in text


def test_the_client_time_split_separates_headers_streaming_and_the_gateway() -> None:
    from bench.routing import time_split
    from control.loadgen.runner import Outcome

    outs = [Outcome(0.0, "standard", True, 200, latency_s=3.0, headers_s=0.5),
            Outcome(0.1, "standard", True, 200, latency_s=5.0, headers_s=1.5),
            Outcome(0.2, "standard", False, 200, latency_s=4.0, headers_s=4.0),
            Outcome(0.3, "standard", False, 503, latency_s=0.1, headers_s=0.1)]  # not answered: left out
    gw0 = {"gw_total_sum": 10.0, "gw_total_count": 5, "gw_first_sum": 1.0, "gw_first_count": 5}
    gw1 = {"gw_total_sum": 21.6, "gw_total_count": 8, "gw_first_sum": 4.0, "gw_first_count": 8}
    split = time_split(outs, gw0, gw1)
    assert split["client"] == 4.0 and split["plain"] == 4.0
    assert split["stream_headers"] == 1.0 and split["stream_body"] == 3.0
    assert split["gateway_total"] == (21.6 - 10.0) / 3 and split["gateway_first"] == 1.0


def test_the_streamed_tail_says_which_nodes_serve_the_fleets_ttft_p95() -> None:
    def out(node: str, ttft: float | None, stream: bool = True, status: int = 200) -> Outcome:
        o = Outcome(sent_at=0.0, cls="standard", stream=stream)
        o.status, o.node, o.ttft_s = status, node, ttft
        return o

    profiles = {"h": "h100", "a": "a100", "l": "l40s"}
    outs = ([out("h", 0.07) for _ in range(12)] + [out("a", 0.12) for _ in range(6)] + [out("l", 0.17)] * 2
            + [out("l", 5.0, stream=False), out("h", None, status=500)])  # neither counts: not streamed, failed
    tail = streamed_tail(outs, profiles)
    # 20 streamed answers: the p95 is the 19th fastest, an l40s one; both l40s answers are in the tail.
    assert tail["requests"] == 20 and tail["ttft_p95"] == 0.17
    per = tail["per_profile"]
    assert (per["l40s"]["share"], per["l40s"]["tail"], per["a100"]["tail"], per["h100"]["tail"]) == (0.1, 2, 0, 0)
    assert per["h100"]["ttft_p95"] == 0.07 and "l40s 10% (TTFT p95 0.17 s, 2 in the tail)" in tail["line"]
