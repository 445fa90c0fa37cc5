"""node.js in a real browser: it draws every chart, appends live samples, drops what falls out of the range,
and polls the history endpoint when there is no live connection.

The live connection is faked (window.SwitchyardLive with a subscribe that hands the callback to the test) so this
checks node.js's side of the contract alone; the real websocket is tested with live.js.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dashboard.live import history
from tests.browser.conftest import Server, login, screenshot
from tests.conftest import full_sample, make_node

pytestmark = pytest.mark.browser
GPUS = 2
FAKE_LIVE = """
window.__tails = {};
window.SwitchyardLive = {connect() { return {subscribe(topic, cb) { window.__tails[topic] = cb; }}; }};
"""


def quiet(seq: int, ts: datetime, util: float = 20.0) -> dict[str, Any]:
    s = full_sample(seq, ts, gpus=GPUS, base=20.0)
    for g in s["gpus"]:
        g.update(gpu_util_pct=util, clocks_event_reasons=0, xid_count=0, xid_last=None, row_remap_pending=0)
    return s


def seed(server: Server, n: int = 6) -> str:
    token = make_node("gpu-a-1")
    start = datetime.now(UTC) - timedelta(seconds=5 * n)
    r = server.ingest(token, {"node": "gpu-a-1", "samples": [quiet(i + 1, start + timedelta(seconds=5 * i))
                                                             for i in range(n)]})
    assert r.status_code == 200, r.text
    return token


def charts(page: Any) -> dict[str, int]:
    return page.evaluate("() => window.switchyardNode.charts")


def test_live_samples_are_appended_and_old_points_dropped(page: Any, server: Server) -> None:
    seed(server)
    login(page, server, "vera", "viewer")
    # Only the fake connection: whatever the real live.js does is not this test's business.
    page.route("**/static/switchyard/live.js", lambda r: r.fulfill(body="", content_type="application/javascript"))
    page.add_init_script(FAKE_LIVE)
    page.goto(f"{server.url}/nodes/gpu-a-1/?range=15m")
    page.wait_for_function("() => window.switchyardNode && window.switchyardNode.mode === 'live'", timeout=10_000)
    assert page.evaluate("() => Object.keys(window.__tails)") == ["tail:gpu-a-1"]
    drawn = charts(page)
    assert set(drawn) == {c.id for c in history.CHARTS}
    assert drawn["gpu-util"] == 6 * GPUS and drawn["host-cpu"] == 6 * 2  # two traces: CPU and iowait
    assert len(page.query_selector_all("#chart-gpu-util .scatterlayer .trace")) == GPUS

    now = datetime.now(UTC)
    new = quiet(100, now + timedelta(seconds=1), util=77.0)
    new["gpus"][1].update(xid_count=1, xid_last=79, clocks_event_reasons=0x4)
    page.evaluate("s => window.__tails['tail:gpu-a-1'](s)", new)
    assert charts(page)["gpu-util"] == 7 * GPUS
    ys = page.evaluate("() => document.getElementById('chart-gpu-util').data.map(t => t.y[t.y.length - 1])")
    assert ys[:GPUS] == [77.0] * GPUS
    assert "XID 79 ×1" in page.inner_text("#event-table")
    assert "SW power cap" in page.inner_text(".gpu-chip[data-gpu='1']")
    assert "SW power cap" in page.inner_text("#throttle-table")

    # The same sample again (a reconnect replays the latest) is not drawn twice; a whole frame is accepted too.
    page.evaluate("s => window.__tails['tail:gpu-a-1']({status: 'up', sample: s})", new)
    assert charts(page)["gpu-util"] == 7 * GPUS

    # A sample 20 minutes on: everything older than 15 minutes before it leaves the charts.
    later = quiet(101, now + timedelta(minutes=20))
    page.evaluate("s => window.__tails['tail:gpu-a-1'](s)", later)
    after = charts(page)
    assert after["gpu-util"] == GPUS and after["host-cpu"] == 2
    # ...and so do the XID and the throttle interval of 20 minutes ago.
    assert "none in this range" in page.inner_text("#event-table")
    assert "none in this range" in page.inner_text("#throttle-table")
    assert page.evaluate("() => window.switchyardNode.samples") == 2
    screenshot(page, "node-live-tail")
    assert page.js_errors == []


def test_without_a_live_connection_it_polls_history(page: Any, server: Server) -> None:
    token = seed(server, n=3)
    login(page, server, "vera", "viewer")
    page.route("**/static/switchyard/live.js", lambda r: r.fulfill(status=404, body=""))
    page.goto(f"{server.url}/nodes/gpu-a-1/?range=15m")
    page.wait_for_function("() => window.switchyardNode && window.switchyardNode.mode === 'poll'", timeout=10_000)
    assert charts(page)["gpu-util"] == 3 * GPUS
    assert "raw samples, 5 s per point" in page.inner_text("#history-source")
    other = make_node("gpu-b-1")  # a second node's samples must not show up here
    assert server.ingest(other, {"node": "gpu-b-1", "samples": [quiet(1, datetime.now(UTC))]}).status_code == 200
    r = server.ingest(token, {"node": "gpu-a-1", "samples": [quiet(50, datetime.now(UTC), util=66.0)]})
    assert r.status_code == 200, r.text
    # The next poll (every 5 s on the 15 m range) draws it, without a reload.
    page.wait_for_function(f"() => window.switchyardNode.charts['gpu-util'] === {4 * GPUS}", timeout=8_000)
    ys = page.evaluate("() => document.getElementById('chart-gpu-util').data.map(t => t.y[t.y.length - 1])")
    assert ys[:GPUS] == [66.0] * GPUS
    assert page.js_errors == []
