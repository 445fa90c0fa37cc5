"""GET /api/v1/routing/summary and /minutes: shape, numbers, permissions, bad parameters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from control.routing import histogram, tasks
from tests.routing.conftest import entry, gw_state, xadd

pytestmark = pytest.mark.django_db


def node_state(node: str, score: float | None, eligible: bool = True, reason: str = "",
               quarantined_until: float | None = None, in_flight: int = 1) -> dict[str, Any]:
    parts = {"gpu_free": 0.5, "cpu_load": 0.2, "latency": -0.05} if score is not None else {}
    return {"node": node, "pool": "pool-a", "eligible": eligible, "reason": reason, "score": score, "parts": parts,
            "in_flight": in_flight, "quarantined_until": quarantined_until}


def test_summary_shows_shares_scores_percentiles_and_counters(api: Callable[..., Any], stream: Any) -> None:
    now = time.time()
    # Stream ids are the time Redis took the entry: this one arrived 200 s ago (outside 60 s, inside 300 s).
    stream.xadd("sy:reqlog", entry(ts=now - 200, node="gpu-a-2"), id=f"{int((now - 200) * 1000)}-0")
    for i in range(30):
        xadd(stream, entry(ts=now - 5, node="gpu-a-1", cls="realtime", latency_ms=100 + i, ttft_ms=10 + i,
                           cache="hit" if i < 10 else "miss"))
    for i in range(10):
        xadd(stream, entry(ts=now - 5, node="gpu-a-2", cls="batch", latency_ms=1000 + i, retries=1))
    for _ in range(4):
        xadd(stream, entry(ts=now - 5, node="", pool="", cls="batch", status=429, ttft_ms=None, cache="off"))
    gw_state(stream, "gw-1", [node_state("gpu-a-1", 0.65), node_state("gpu-a-2", 0.4, in_flight=2),
                              node_state("gpu-a-3", None, eligible=False, reason="draining",
                                         quarantined_until=now + 30)])
    gw_state(stream, "gw-2", [node_state("gpu-a-2", 0.41, in_flight=3)], ts=now - 3)

    resp = api("viewer").get("/api/v1/routing/summary?window=60")
    assert resp.status_code == 200, resp.content
    s = resp.json()
    assert s["window_s"] == 60 and 60 <= s["span_s"] < 70  # whole 10-second slots back from now
    t = s["totals"]
    assert (t["requests"], t["routed"], t["status_429"], t["retries"]) == (44, 40, 4, 10)
    assert t["cache_hit_rate"] == pytest.approx(10 / 40)
    assert t["quarantined_nodes"] == 1 and t["quarantines_total"] == 2
    nodes = {n["node"]: n for n in s["nodes"]}
    assert nodes["gpu-a-1"]["share"] == pytest.approx(0.75) and nodes["gpu-a-2"]["share"] == pytest.approx(0.25)
    assert nodes["gpu-a-1"]["score"] == 0.65 and nodes["gpu-a-1"]["parts"]["gpu_free"] == 0.5
    assert nodes["gpu-a-2"]["in_flight"] == 5  # summed over both gateways
    assert nodes["gpu-a-2"]["gateway"] == "gw-1"  # the freshest gateway's view of the score
    assert nodes["gpu-a-3"]["eligible"] is False and nodes["gpu-a-3"]["reason"] == "draining"
    assert nodes["gpu-a-3"]["quarantined"] is True and s["quarantined"] == ["gpu-a-3"]
    assert s["scorers"] == ["cpu_load", "gpu_free", "latency"]
    classes = {c["class"]: c for c in s["classes"]}
    rt = classes["realtime"]
    assert rt["requests"] == 30
    assert 100 <= rt["latency_ms"]["p50"] <= 130 and 10 <= rt["ttft_ms"]["p99"] <= 45
    assert classes["batch"]["status_429"] == 4 and classes["batch"]["latency_ms"]["p95"] >= 900
    assert {g["id"] for g in s["gateways"]} == {"gw-1", "gw-2"}

    wider = api("viewer").get("/api/v1/routing/summary?window=300").json()
    assert wider["totals"]["requests"] == 45


def test_summary_with_no_traffic_and_no_gateway(api: Callable[..., Any], stream: Any) -> None:
    s = api("viewer").get("/api/v1/routing/summary").json()
    assert s["totals"]["requests"] == 0 and s["totals"]["cache_hit_rate"] is None
    assert s["nodes"] == [] and s["classes"] == [] and s["gateways"] == []


@pytest.mark.parametrize("window", ["30", "abc", "-60", "60.0", "100000"])
def test_summary_refuses_other_windows(api: Callable[..., Any], stream: Any, window: str) -> None:
    resp = api("viewer").get(f"/api/v1/routing/summary?window={window}")
    assert resp.status_code == 400
    assert resp.json()["fields"] == {"window": "one of 60, 300, 900"}
    assert "window must be one of 60, 300, 900" in resp.json()["error"]


@pytest.mark.parametrize("path", ["/api/v1/routing/summary", "/api/v1/routing/minutes"])
def test_routing_api_needs_a_viewer(api: Callable[..., Any], stream: Any, path: str) -> None:
    assert api(None).get(path).status_code in (401, 403)
    for role in ("viewer", "operator", "admin"):
        assert api(role).get(path).status_code == 200


def test_minutes_returns_rows_and_merged_totals(api: Callable[..., Any], stream: Any, transactional_db: None) -> None:
    base = (time.time() // 60 - 5) * 60
    for i in range(20):
        xadd(stream, entry(ts=base + i, node="gpu-a-1", cls="standard", latency_ms=100 + 10 * i))
        xadd(stream, entry(ts=base + 60 + i, node="gpu-a-2", cls="batch", latency_ms=500 + 10 * i))
    tasks.aggregate()
    client = api("viewer")
    allrows = client.get(f"/api/v1/routing/minutes?from={base - 60}&to=now").json()
    assert [(r["node"], r["class"], r["requests"]) for r in allrows["rows"]] == [("gpu-a-1", "standard", 20),
                                                                                ("gpu-a-2", "batch", 20)]
    assert allrows["total"]["requests"] == 40
    lat = allrows["total"]["latency_ms"]
    # Within a bucket (9 %) of the exact values: p50 between the two groups, p99 near the top (690 ms).
    assert 290 / histogram.GROWTH <= lat["p50"] <= 500 * histogram.GROWTH
    assert 690 / histogram.GROWTH <= lat["p99"] <= 690 * histogram.GROWTH
    one = client.get(f"/api/v1/routing/minutes?from={base - 60}&node=gpu-a-2").json()
    assert [r["node"] for r in one["rows"]] == ["gpu-a-2"]
    assert one["rows"][0]["latency_ms_mean"] == pytest.approx(595.0)
    by_class = client.get(f"/api/v1/routing/minutes?from={base - 60}&class=standard").json()
    assert by_class["total"]["requests"] == 20
    assert client.get(f"/api/v1/routing/minutes?from={base - 60}&limit=1").json()["truncated"] is True


@pytest.mark.parametrize(("query", "field", "message"), [
    ("from=yesterday", "from", "is not a time"),
    ("from=-1h&to=-2h", "to", "must be after from"),
    ("from=-40d", "from", "at most 31 days"),
    ("limit=0", "limit", "an integer from 1 to 10000"),
    ("limit=x", "limit", "an integer from 1 to 10000"),
])
def test_minutes_bad_parameters(api: Callable[..., Any], stream: Any, query: str, field: str, message: str) -> None:
    resp = api("viewer").get(f"/api/v1/routing/minutes?{query}")
    assert resp.status_code == 400
    assert message in resp.json()["fields"][field]
