"""The routing page in a real browser (Debian's chromium): charts drawn, tables filled, live refresh."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser.conftest import Server, login, screenshot
from tests.routing.conftest import entry, gw_state, xadd

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _fast_passwords() -> None:
    """Keep the real password hasher: the server process logging the user in does not know the tests' MD5 one."""


def wait_for_drawn_bar(page: Any, plot: str) -> None:
    """Wait until the plot has drawn a bar with a width. Plotly also makes a point for a term worth 0 in a stack
    (an empty path): waiting for the first point to be visible then depended on which term came first."""
    page.wait_for_function(
        "(sel) => [...document.querySelectorAll(sel + ' .barlayer .point')]"
        ".some(p => p.getBoundingClientRect().width > 0)", arg=plot, timeout=15_000)


def test_routing_page_draws_shares_scores_and_classes_and_follows_new_requests(page: Any, server: Server,
                                                                                redis_db: Any) -> None:
    now = time.time()
    for i in range(12):
        xadd(redis_db, entry(ts=now - 2, node="gpu-a-1" if i % 3 else "gpu-a-2", cls="standard",
                             latency_ms=200 + i))
    xadd(redis_db, entry(ts=now - 2, node="", pool="", cls="batch", status=429, ttft_ms=None))
    nodes = [{"node": n, "pool": "pool-a", "eligible": n != "gpu-a-3", "reason": "" if n != "gpu-a-3" else "draining",
              "score": 0.5 if n != "gpu-a-3" else None,
              "parts": {"gpu_free": 0.4, "cpu_load": 0.15, "latency": -0.05} if n != "gpu-a-3" else {},
              "in_flight": 1, "quarantined_until": None} for n in ("gpu-a-1", "gpu-a-2", "gpu-a-3")]
    # A gateway refreshes its state every second with a 10-s expiry; the test publishes once, so it keeps it for
    # longer than a login (real password hasher) and a page load take on a loaded CI machine.
    gw_state(redis_db, "gw-1", nodes, ttl_s=120)
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/routing/")
    page.wait_for_function("() => window.switchyardRouting && window.switchyardRouting.loads >= 1", timeout=15_000)
    page.wait_for_selector("#share-plot .barlayer .point", timeout=10_000)
    wait_for_drawn_bar(page, "#score-plot")
    assert page.locator('#routing-nodes tr[data-node="gpu-a-1"]').count() == 1
    assert "filtered" in page.locator('#routing-nodes tr[data-node="gpu-a-3"]').inner_text()
    assert page.locator('#routing-classes tr[data-class="standard"] td').nth(1).inner_text() == "12"
    assert page.locator('[data-tile="status_429"] .value').inner_text() == "1"
    screenshot(page, "routing")
    # New requests show without a reload (the summary is cached for 1 s, the page polls every 2 s).
    for _ in range(5):
        xadd(redis_db, entry(node="gpu-a-2", cls="standard"))
    gw_state(redis_db, "gw-1", nodes, ttl_s=120)
    page.wait_for_function(
        "() => document.querySelector('#routing-classes tr[data-class=\"standard\"] td:nth-child(2)')"
        ".textContent === '17'", timeout=15_000)
    page.select_option("#window", "900")
    page.wait_for_url("**/routing/?window=900")
    assert page.js_errors == []



def test_routing_page_shows_prefix_cache_hits_and_the_affinity_term(page: Any, server: Server, redis_db: Any,
                                                                     clean_samples: None) -> None:
    from datetime import UTC, datetime, timedelta

    from tests.conftest import make_node
    from tests.routing.test_prefix_hits import push

    now = time.time()
    from concurrent.futures import ThreadPoolExecutor

    tokens = {n: make_node(n, "pool-a") for n in ("gpu-a-1", "gpu-a-2")}
    with ThreadPoolExecutor(1) as pool:  # the ingest request runs its own event loop; Playwright's owns this thread
        for name, pct in (("gpu-a-1", 90.0), ("gpu-a-2", 30.0)):
            pool.submit(push, name, tokens[name], 1, datetime.now(UTC) - timedelta(seconds=10), pct).result()
    for i in range(8):
        xadd(redis_db, entry(ts=now - 2, node="gpu-a-1" if i % 4 else "gpu-a-2"))
    nodes = [{"node": n, "pool": "pool-a", "eligible": True, "reason": "", "score": 4.0,
              "parts": {"gpu_free": 0.4, "expected_wait": 3.0, "prefix_affinity": 1.5 if n == "gpu-a-1" else 0.0},
              "in_flight": 1, "quarantined_until": None} for n in ("gpu-a-1", "gpu-a-2")]
    gw_state(redis_db, "gw-1", nodes, ttl_s=120)
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/routing/")
    page.wait_for_function("() => window.switchyardRouting && window.switchyardRouting.loads >= 1", timeout=15_000)
    wait_for_drawn_bar(page, "#score-plot")
    # Fleet-wide: 6 requests at 90 % and 2 at 30 %.
    assert page.locator('[data-tile="prefix_hit_pct"] .value').inner_text() == "75.0"
    assert "90.0 %" in page.locator('#routing-nodes tr[data-node="gpu-a-1"]').inner_text()
    assert "30.0 %" in page.locator('#routing-nodes tr[data-node="gpu-a-2"]').inner_text()
    # The affinity term is one of the score's stacked bars.
    assert "prefix_affinity" in page.locator("#score-plot").inner_text()
    assert page.js_errors == []
