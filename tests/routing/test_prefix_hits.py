"""The routing summary's prefix-cache hit rates: each node's own rate (what its agent read from vLLM or SGLang)
averaged over the window, and the fleet's weighted by the requests each node was routed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import asgi_request, full_sample, make_node
from tests.routing.conftest import entry, xadd

pytestmark = pytest.mark.usefixtures("clean_samples")


def push(name: str, token: str, seq: int, ts: datetime, pct: float | None) -> None:
    s = full_sample(seq, ts, gpus=1)
    s["inference"]["prefix_cache_hit_pct"] = pct
    data = json.dumps({"node": name, "samples": [s]}).encode()
    resp = asgi_request("POST", "/api/v1/ingest", {"Content-Type": "application/json",
                                                   "Content-Length": str(len(data)),
                                                   "Authorization": f"Bearer {token}"}, data)
    assert resp.status_code == 200, resp.content


def test_summary_shows_each_nodes_hit_rate_and_the_fleets(api: Callable[..., Any], stream: Any) -> None:
    now = datetime.now(UTC)
    a, b, c = make_node("gpu-a-1", "pool-a"), make_node("gpu-a-2", "pool-a"), make_node("gpu-a-3", "pool-a")
    push("gpu-a-1", a, 1, now - timedelta(seconds=20), 80.0)
    push("gpu-a-1", a, 2, now - timedelta(seconds=10), 90.0)
    push("gpu-a-1", a, 3, now - timedelta(seconds=200), 0.0)  # outside the 60-s window
    push("gpu-a-2", b, 1, now - timedelta(seconds=10), 20.0)
    push("gpu-a-3", c, 1, now - timedelta(seconds=10), None)  # a server that reports no prefix cache
    t = time.time()
    for _ in range(30):
        xadd(stream, entry(ts=t - 5, node="gpu-a-1"))
    for _ in range(10):
        xadd(stream, entry(ts=t - 5, node="gpu-a-2"))
    s = api("viewer").get("/api/v1/routing/summary?window=60").json()
    nodes = {n["node"]: n for n in s["nodes"]}
    assert nodes["gpu-a-1"]["prefix_cache_hit_pct"] == pytest.approx(85.0)
    assert nodes["gpu-a-2"]["prefix_cache_hit_pct"] == pytest.approx(20.0)
    # By requests routed: 30 at 85 % and 10 at 20 %.
    assert s["totals"]["prefix_hit_pct"] == pytest.approx((30 * 85 + 10 * 20) / 40)
    longer = api("viewer").get("/api/v1/routing/summary?window=300").json()
    assert {n["node"]: n for n in longer["nodes"]}["gpu-a-1"]["prefix_cache_hit_pct"] == pytest.approx(170 / 3, abs=0.01)


def test_no_node_reporting_a_prefix_cache_shows_none_not_zero(api: Callable[..., Any], stream: Any) -> None:
    s = api("viewer").get("/api/v1/routing/summary?window=60").json()
    assert s["totals"]["prefix_hit_pct"] is None
