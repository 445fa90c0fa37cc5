"""In a real browser: the scheduler editor's what-if preview on a live (ingested) fleet, and the canary page's
analysis runs and controls."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from control.canary import service as canary
from control.canary.models import AnalysisRun, Canary
from control.policy import service as policy
from core.audit.context import Origin
from tests.browser.conftest import Server, login, screenshot
from tests.canary.helpers import classic
from tests.conftest import full_sample, make_node


def feed(server: Server, name: str, gpu: float) -> None:
    token = make_node(name, "pool-a")
    s = full_sample(1, datetime.now(UTC), gpus=1)
    s["gpus"][0]["gpu_util_pct"] = gpu
    s["inference"].update(requests_running=0, requests_waiting=0, kv_cache_usage_pct=10.0)
    r = server.ingest(token, {"node": name, "endpoint": "http://127.0.0.1:9/", "models": ["m"], "samples": [s]})
    assert r.status_code == 200, r.text


def test_the_whatif_preview_shows_shares_under_both_policies(page: Any, server: Server) -> None:
    feed(server, "idle-node", 5.0)
    feed(server, "busy-node", 94.0)
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/policies/scheduler/")
    document = json.loads(page.input_value("#document"))
    for s in document["scorers"]:
        if s["metric"] == "gpu_free":
            s["weight"] = -0.6  # prefer the busy node: the preview must show the traffic moving there
        if s["metric"] == "expected_wait":
            s["weight"] = 0.0
    page.fill("#document", json.dumps(document, indent=2))
    page.click("#whatif-run")
    page.wait_for_selector("#whatif-table tr[data-node='busy-node']")
    busy = page.locator("#whatif-table tr[data-node='busy-node']")
    idle = page.locator("#whatif-table tr[data-node='idle-node']")

    def share(row: Any, cls: str) -> float:
        return float(row.locator(f"td.{cls}").inner_text().split()[0])

    assert share(idle, "share-active") > share(busy, "share-active")
    assert share(busy, "share-candidate") > share(idle, "share-candidate")
    assert "would go to another node" in page.inner_text("#whatif-summary")
    screenshot(page, "whatif")

    # A bad value: the panel shows the server's error naming the field, and nothing was saved.
    document["filters"]["max_gpu_util_pct"] = 140
    page.fill("#document", json.dumps(document, indent=2))
    page.click("#whatif-run")
    page.wait_for_selector("#whatif-error")
    assert "filters.max_gpu_util_pct" in page.inner_text("#whatif-out")
    assert policy.active("scheduler").version == 1
    assert page.js_errors == []


def test_the_canary_page_shows_runs_and_an_operator_aborts_with_a_reason(page: Any, server: Server) -> None:
    stable = policy.active("scheduler")
    rev = policy.create_revision("scheduler", classic(), "candidate", stable.pk, Origin.system("t"),
                                 activate=False).revision
    c = canary.start("scheduler", {"revision": rev.pk, "steps": [{"weight": 5, "pause_s": 60}],
                                   "reason": "try classic"}, Origin.system("olga"))
    now = datetime.now(UTC)
    AnalysisRun.objects.create(
        canary=c, step=0, weight=5, window_from=now, window_to=now, verdict="fail",
        arms={"stable": {"requests": 500, "p95_latency_ms": 100, "p95_ttft_ms": 40, "error_rate": 0, "rate_429": 0,
                         "goodput": 1}, "canary": {"requests": 40, "p95_latency_ms": 400, "p95_ttft_ms": 90,
                                                   "error_rate": 0, "rate_429": 0, "goodput": 0.9}},
        checks=[], summary="latency_p95_ratio 4.0 past 1.25")
    from control.canary.models import ArmMinute
    from control.routing import histogram

    minute = now.replace(second=0, microsecond=0)
    for arm, ms in (("stable", 100.0), ("canary", 400.0)):
        ArmMinute.objects.create(minute=minute, canary=c, arm=arm, requests=10, status_2xx=10, good=10,
                                 latency_buckets=histogram.of([ms] * 10), ttft_buckets=histogram.of([ms / 4] * 10))
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/routing/")
    assert "5.0 % of requests" in page.inner_text("#canary-banner")
    page.click("#canary-banner a")
    page.wait_for_selector("#canary-runs tbody tr.verdict-fail")
    page.wait_for_selector("#chart-latency.js-plotly-plot")  # both arms per minute, charted
    traces = page.evaluate("document.getElementById('chart-latency').data.map(t => [t.name, t.y.length])")
    assert traces == [["stable", 1], ["canary", 1]]
    assert "latency_p95_ratio 4.0 past 1.25" in page.inner_text("#canary-runs")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#canary-controls button[data-action=abort]")
    assert "a reason is required" in page.inner_text("#canary-message")
    assert Canary.objects.get().state == "running"
    page.fill("#canary-reason", "p95 four times the stable arm")
    page.click("#canary-controls button[data-action=abort]")
    page.wait_for_function("document.getElementById('canary-state').textContent === 'aborted'")
    c.refresh_from_db()
    assert c.state == "aborted" and c.outcome == "p95 four times the stable arm"
    screenshot(page, "canary")
    assert page.js_errors == []


def test_the_scaling_canary_section_shows_the_pools_runs_and_pauses_it(page: Any, server: Server) -> None:
    import copy

    from control.controller.models import PoolProvider
    from dashboard.fleet.models import Pool

    pool = Pool.objects.create(name="trial")
    PoolProvider.objects.create(pool=pool, kind="local", config={"url": "http://127.0.0.1:9"})
    stable = policy.active("scaling")
    doc = copy.deepcopy(stable.document)
    doc["pools"] = {"trial": {**copy.deepcopy(doc["default"]), "max_nodes": 7}}
    rev = policy.create_revision("scaling", doc, "candidate", stable.pk, Origin.system("t"), activate=False).revision
    c = canary.start("scaling", {"revision": rev.pk, "pool": "trial", "duration_s": 3600,
                                 "reason": "one pool first"}, Origin.system("olga"))
    now = datetime.now(UTC)
    window = {"minutes": 30, "requests": 9000, "violation_minutes": 1, "violation_share": 1 / 30, "gpu_hours": 4.0,
              "gpu_hours_per_1k": 0.444}
    AnalysisRun.objects.create(
        canary=c, step=0, weight=100, window_from=now, window_to=now, verdict="pass",
        arms={"baseline": window, "canary": {**window, "gpu_hours_per_1k": 0.401}}, checks=[],
        summary="every check within its bound")
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/policies/scaling/canary/")  # leads to the canary page's scaling section
    page.wait_for_selector("#scaling-canary-runs tbody tr.verdict-pass")
    assert "0.401" in page.inner_text("#scaling-canary-runs") and "trial" in page.inner_text("#scaling-canary")
    page.fill("#scaling-canary-reason", "look at the evening first")
    page.click("#scaling-canary-controls button[data-action=pause]")
    page.wait_for_function("document.getElementById('scaling-canary-state').textContent === 'paused'")
    c.refresh_from_db()
    assert c.state == "paused"
    screenshot(page, "canary-scaling")
    assert page.js_errors == []
