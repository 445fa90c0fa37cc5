"""The overview in a real browser: trend panels drawn from a simulated fleet's samples, a policy activation as a
marker naming its author and reason, the live point from the websocket, and the empty state of a fresh install.
(docs/img/overview.png comes from bench/screenshots.py, which has hours of history to show.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.sim.background import BackgroundFleet
from control.routing import aggregate as routing_aggregate
from dashboard.metrics import rollups
from dashboard.metrics.latest import redis_client
from tests.browser.conftest import ROOT, Server, login, screenshot
from tests.conftest import count, make_node, make_user
from tests.routing.conftest import entry, xadd

PANELS = ("gpu", "requests", "latency", "queue", "power", "energy")


@pytest.fixture
def busy_fleet(server: Server) -> Iterator[BackgroundFleet]:
    """Two simulated nodes whose own agents push to the server every second, serving a trickle of chat requests."""
    stop = threading.Event()
    with BackgroundFleet(pool="pool-a", gpus=2, server_url=server.url, register=lambda n, p: make_node(n, p),
                         interval_s=1, time_scale=10.0, seed=11) as fleet:
        nodes = [fleet.add_node() for _ in range(2)]

        def load() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    for n in nodes:
                        try:
                            c.post(f"{n.url}/v1/chat/completions", json={
                                "model": "sim-llm", "max_tokens": 64,
                                "messages": [{"role": "user", "content": "status of the fleet?"}]})
                        except httpx.HTTPError:
                            pass

        threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            yield fleet
        finally:
            stop.set()
            for t in threads:
                t.join(35)


def wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.3)


def tokens_reported() -> bool:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(DISTINCT node_id) FROM node_sample WHERE generation_tokens_s > 0")
        return cur.fetchone()[0] == 2


def test_trend_panels_draw_the_simulated_fleet_with_a_policy_marker(page: Any, server: Server,
                                                                   busy_fleet: BackgroundFleet) -> None:
    wait_for(tokens_reported, "tokens from both simulated nodes")
    # The gateway's request log, as the gateway writes it, folded into minutes by the real aggregator.
    now = time.time()
    for i in range(30):
        xadd(redis_client(), entry(ts=now - i, status=429 if i % 5 == 0 else 200))
    routing_aggregate.run()
    minute = rollups.floor_to(datetime.now(UTC), timedelta(minutes=1))
    rollups.aggregate("1m", minute - timedelta(minutes=2), minute + timedelta(minutes=1))
    assert count("metrics_fleet_1m") >= 1

    ops = httpx.Client(base_url=server.url, headers={"Authorization": f"Token {make_user('olga', 'operator')}"})
    active = ops.get("/api/v1/policies/scheduler/").json()
    r = ops.post("/api/v1/policies/scheduler/revisions/", json={
        "document": active["document"], "parent": active["id"], "reason": "raise the queue weight before the peak"})
    assert r.status_code == 201, r.text

    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/")
    page.wait_for_function(f"window.switchyardTrends && {list(PANELS)}.every(p => window.switchyardTrends.drawn[p])",
                           timeout=20_000)
    for panel in PANELS:
        drawn = page.evaluate("""(id) => {
          const gd = document.getElementById('trend-' + id);
          return {points: gd.data.filter(t => t.name !== 'changes').map(t => t.y.filter(v => v != null).length),
                  lines: gd.querySelectorAll('.scatterlayer .trace').length};
        }""", panel)
        assert max(drawn["points"]) >= 1, f"panel {panel} has no data: {drawn}"
        assert drawn["lines"] >= 1, f"panel {panel} drew nothing"
    energy = page.evaluate("() => window.switchyardTrends.doc.series.energy_per_token_j.filter(v => v != null)")
    assert energy and all(v > 0 for v in energy)  # power and tokens were both reported

    # The policy change: a marker on every panel whose hover names the author and the reason.
    hover = page.evaluate("""() => {
      const gd = document.getElementById('trend-latency');
      const m = gd.data.find(t => t.name === 'changes');
      return {text: m.text, shapes: gd.layout.shapes.length};
    }""")
    assert any("olga" in t and "raise the queue weight before the peak" in t for t in hover["text"]), hover
    assert hover["shapes"] >= 1
    row = page.locator("#changes tbody tr[data-kind=policy]").first
    assert "olga" in row.inner_text() and "raise the queue weight" in row.inner_text()

    # The last point follows the websocket: one more point than the API returned.
    page.wait_for_function("""() => {
      const s = window.switchyardTrends;
      return s.live && +document.getElementById('trend-gpu').dataset.points === s.doc.t.length + 1;
    }""", timeout=15_000)

    # Range switch: one API call for the new range, the CSV link follows.
    page.click(".range-picker button[data-range='24h']")
    page.wait_for_function("window.switchyardTrends.doc.range === '24h'", timeout=10_000)
    assert "range=24h" in page.get_attribute("#trends-csv", "href")
    assert "format=csv" in page.get_attribute("#trends-csv", "href")
    page.click(".range-picker button[data-range='1h']")
    page.wait_for_function("window.switchyardTrends.doc.range === '1h'", timeout=10_000)
    screenshot(page, "overview-trends")
    assert page.js_errors == []


def test_a_fresh_install_shows_how_to_add_a_node(page: Any, server: Server) -> None:
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/")
    box = page.locator("#empty-state")
    assert box.is_visible()
    assert page.inner_text("#cmd-createnode").startswith("python manage.py createnode ")
    agent = page.inner_text("#cmd-agent")
    assert f"--server {server.url} " in agent and "--token" in agent
    assert f"--server {server.url}" in page.inner_text("#cmd-simfleet")
    make_node("gpu-a-1")
    page.reload()
    assert page.locator("#empty-state").count() == 0
    assert page.js_errors == []


def test_the_favicon_is_served_and_linked(page: Any, server: Server) -> None:
    resp = httpx.get(f"{server.url}/favicon.ico", follow_redirects=True)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("image/")
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    page.goto(f"{server.url}/accounts/login/")
    href = page.get_attribute("link[rel=icon]", "href")
    assert href and httpx.get(f"{server.url}{href}").status_code == 200
    page.wait_for_load_state("networkidle")
    assert missing == []
    assert Path(ROOT / "static" / "switchyard" / "favicon.svg").exists()
