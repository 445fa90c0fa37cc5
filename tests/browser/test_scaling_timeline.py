"""The scaling page's timeline in a real browser: an operator scales pool "web" (local provider, real simulated
fleet) from the page, the controller loop carries it out, and the timeline shows the action as a marker (rule,
from -> to, state) over desired / actual / reporting nodes, beside each rule's metric and its threshold.
(docs/img/scaling.png comes from bench/screenshots.py.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from playwright.sync_api import expect

from agents.sim.background import BackgroundFleet
from control.controller import loop
from control.controller.models import ScalingAction
from dashboard.metrics import rollups
from tests.browser.conftest import Server, login, screenshot
from tests.conftest import full_sample, make_node
from tests.controller.conftest import bind_local, fleet  # noqa: F401  (the simulated fleet fixture)
from tests.controller.test_actions import set_pool_policy

POOL = "web"
NODES_DRAWN = ("(() => { const d = window.switchyardTimeline && window.switchyardTimeline.doc;"
               " const c = document.getElementById('timeline-nodes');"
               " return !!(d && c && c.data && c.data.length === 4); })()")


def reported_minutes(server: Server) -> None:
    """Two nodes of the pool reported for the last few minutes (through the real ingest), rolled up."""
    now = datetime.now(UTC)
    for i, name in enumerate(("web-obs-1", "web-obs-2")):
        token = make_node(name, POOL)
        samples = []
        for k in range(6):
            s = full_sample(k + 1, now - timedelta(seconds=30 * (6 - k)), gpus=2)
            for g in s["gpus"]:
                g["gpu_util_pct"] = 50.0 + 10 * i
            samples.append(s)
        r = server.ingest(token, {"node": name, "samples": samples})
        assert r.status_code == 200, r.text
    minute = rollups.floor_to(now, timedelta(minutes=1))
    rollups.aggregate("1m", minute - timedelta(minutes=5), minute + timedelta(minutes=1))


def test_the_timeline_shows_an_action_made_during_the_test(page: Any, server: Server,
                                                          fleet: BackgroundFleet) -> None:  # noqa: F811
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=3)
    reported_minutes(server)
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/scaling/?pool={POOL}")
    page.wait_for_function(NODES_DRAWN, timeout=20_000)
    assert page.evaluate("() => window.switchyardTimeline.doc.actions.length") == 0

    form = page.locator(f"#pools tbody tr[data-pool={POOL}] form.scale-form")
    form.locator("input[name=size]").fill("2")
    form.locator("input[name=reason]").fill("load test at 15:00")
    page.once("dialog", lambda d: d.accept())
    with page.expect_navigation():
        form.locator("button[type=submit]").click()
    action = ScalingAction.objects.get()
    result = loop.tick()
    assert result.errors == {} and result.advanced == [action.pk], result
    action.refresh_from_db()
    assert action.state == "done"

    page.goto(f"{server.url}/scaling/?pool={POOL}")
    page.wait_for_function(NODES_DRAWN + " && window.switchyardTimeline.doc.actions.length === 1", timeout=20_000)
    marker = page.evaluate("""() => {
      const gd = document.getElementById('timeline-nodes');
      const m = gd.data.find(t => t.name === 'actions');
      const by = Object.fromEntries(gd.data.map(t => [t.name, t.y]));
      return {text: m.text, shapes: gd.layout.shapes.length, desired: by.desired.at(-1), actual: by.actual.at(-1),
              reporting: Math.max(...by.reporting)};
    }""")
    assert marker["text"] == [f"#{action.pk} <b>manual</b>: 0 → 2, done<br>by olga<br>load test at 15:00"], marker
    assert marker["shapes"] == 1
    assert (marker["desired"], marker["actual"], marker["reporting"]) == (2, 2, 2)
    # One chart per rule of the pool's policy, each with its threshold line, and the scale-in rule.
    rules = page.evaluate("""() => [...document.querySelectorAll('#timeline-rules .timeline-plot')].map(
      d => [d.dataset.metric, d.data.map(t => t.name), Math.max(...d.data[0].y.filter(v => v != null))])""")
    assert [r[0] for r in rules] == ["gpu_util_pct", "queue_length", "gpu_util_pct"], rules
    assert rules[0][1] == ["gpu_util_pct", "scale-out above 85"] and rules[0][2] == 55.0
    assert rules[2][1][1] == "scale-in below 30"
    expect(page.locator("#timeline-status")).to_contain_text("1 action(s) in the last 6h")

    # Range switch, and the CSV behind the chart (the mode bar's CSV button is this URL with format=csv).
    page.click("#timeline .range-picker button[data-range='1h']")
    page.wait_for_function("window.switchyardTimeline.doc.range === '1h'", timeout=10_000)
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    csv = httpx.get(f"{server.url}/api/v1/scaling/pools/{POOL}/timeline/?range=1h&format=csv", cookies=cookies)
    assert csv.status_code == 200 and csv.text.splitlines()[-1].split(",")[1:3] == ["2", "2"]
    screenshot(page, "scaling-timeline")
    assert page.js_errors == []
