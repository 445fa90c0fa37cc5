"""The /scaling/ page in a real browser, as an operator: pool "web" bound to the local provider of a real simulated
fleet, its forecast drawn against what came, a scale by hand from the page that the real controller loop carries
out (the fleet grows), then a one-click revert; and a viewer who sees all of it but no forms.

The controller loop is run by the test (no beat here), so what the page shows is what the loop published. The
Django-client and API tests in tests/controller cover the views' status codes one by one; this covers what an
operator sees and clicks."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from playwright.sync_api import expect

from agents.sim.background import BackgroundFleet
from control.controller import loop, predict
from control.controller.models import ForecastPoint, ScalingAction
from control.routing.models import RequestMinute
from tests.browser.conftest import Server, login, screenshot
from tests.controller.conftest import bind_local, fleet  # noqa: F401  (fleet: the simulated fleet fixture)
from tests.controller.test_actions import set_pool_policy

POOL = "web"
MADE_AGO = timedelta(minutes=20)  # the forecast's age: its first 20 minutes have happened, so the MAPE is a number
CHART_TRACES = ("() => { const c = document.querySelector('#forecast-chart');"
                " return !!(c && c.data && c.data.length === 2); }")


def rate(t: datetime) -> float:
    """Requests per second: a gentle wave around 4, so the forecast has something to follow."""
    return 4 + math.sin(t.timestamp() / 1800)


def seed_requests(start: datetime, end: datetime) -> None:
    """The gateway's per-minute request log of the pool over [start, end) (what the forecast learns from)."""
    rows = []
    t = start
    while t < end:
        n = round(rate(t) * 60)
        rows.append(RequestMinute(minute=t, node="web-01", pool=POOL, request_class="standard", requests=n,
                                  status_2xx=n))
        t += timedelta(minutes=1)
    RequestMinute.objects.bulk_create(rows)


def predictive_pool(fleet: BackgroundFleet) -> None:  # noqa: F811
    bind_local(POOL, fleet)
    set_pool_policy(POOL, min_nodes=0, max_nodes=3, rules=[],
                    predictive={"enabled": True, "horizon_min": 30, "metric": "request_rate", "per_node": 5.0,
                                "boot_time_s": 60, "buffer_min": 1})
    # Real time, so the page's "last 6 hours" window holds it: three hours of history up to 20 minutes ago, the
    # forecast made then, and the 20 minutes (this one included) that came since.
    now = timezone.now().replace(second=0, microsecond=0)
    made = now - MADE_AGO
    seed_requests(made - timedelta(hours=3), made)
    out = predict.refit(made)
    assert out[POOL].get("points", 0) > 30, out  # reaches past now
    seed_requests(made, now + timedelta(minutes=1))
    assert ForecastPoint.objects.filter(pool__name=POOL, ts__lte=now).count() == 21


def submit_confirmed(page: Any, form: Any) -> str:
    """Submit a form that asks `window.confirm` first (control.js), accept the dialog; returns what it asked."""
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    with page.expect_navigation():  # the POST, its redirect and the new /scaling/
        form.locator("button[type=submit]").click()
    return asked[0]


def test_operator_scales_a_pool_by_hand_the_loop_carries_it_out_and_a_revert_undoes_it(
        page: Any, server: Server, fleet: BackgroundFleet, chromium: Any) -> None:  # noqa: F811
    predictive_pool(fleet)
    assert fleet.nodes == []
    login(page, server, "olga", "operator")
    page.goto(f"{server.url}/scaling/")

    row = page.locator("#pools tbody tr[data-pool=web]")
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(1)).to_contain_text("local")
    expect(row.locator("td.desired")).to_have_text("–")  # the loop has not looked at it yet

    # The forecast chart: Plotly's traces on the element, both with points, and the error of the past forecasts.
    page.wait_for_function(CHART_TRACES, timeout=20_000)
    traces = page.evaluate("() => document.querySelector('#forecast-chart').data.map(t => [t.name, t.x.length])")
    assert [name for name, _ in traces] == ["actual", "forecast"], traces
    assert all(n > 0 for _, n in traces), traces
    expect(page.locator("#forecast-mape")).to_have_text(re.compile(r"^MAPE: \d+\.\d %$"))

    form = row.locator("form.scale-form")
    form.locator("input[name=size]").fill("2")
    form.locator("input[name=reason]").fill("launch of the EU tenant")
    assert submit_confirmed(page, form) == "scale web?"

    action = ScalingAction.objects.get()
    assert (action.actor, action.rule, action.from_size, action.to_size, action.state) == (
        "olga", "manual", 0, 2, "pending")
    expect(page.locator(".messages .success")).to_have_text(f"web: scaling 0 → 2 (action #{action.pk}).")
    logged = page.locator(f"#actions tbody tr[data-action='{action.pk}']")
    expect(logged).to_contain_text("0 → 2")
    expect(logged.locator("td").nth(4)).to_have_text("manual")
    expect(logged.locator("td").nth(6)).to_have_text("olga")
    expect(logged).to_contain_text("launch of the EU tenant")
    expect(logged.locator("td.state")).to_have_text("pending")
    expect(logged.locator("form.revert-form")).to_have_count(0)  # only a done action can be reverted
    expect(page.locator("#pools tbody tr[data-pool=web] td").nth(7)).to_have_text(f"#{action.pk}")

    # One controller tick: the open action goes to the provider and the simulated fleet grows.
    result = loop.tick()
    assert result.errors == {} and result.advanced == [action.pk], result
    assert len(fleet.nodes) == 2
    page.reload()
    expect(page.locator("#pools tbody tr[data-pool=web] td.desired")).to_have_text("2")
    expect(page.locator("#pools tbody tr[data-pool=web] td.actual")).to_have_text("2")
    logged = page.locator(f"#actions tbody tr[data-action='{action.pk}']")
    expect(logged.locator("td.state")).to_have_text("done")
    revert_form = logged.locator("form.revert-form")
    expect(revert_form).to_have_count(1)
    page.wait_for_function(CHART_TRACES, timeout=20_000)  # the chart is fetched after load: wait, then shoot
    screenshot(page, "scaling-done")

    revert_form.locator("input[name=reason]").fill("tenant launch postponed")
    assert submit_confirmed(page, revert_form) == f"revert #{action.pk}?"
    undo = ScalingAction.objects.get(reverts=action)
    assert (undo.actor, undo.rule, undo.kind, undo.from_size, undo.to_size, undo.reason) == (
        "olga", f"revert #{action.pk}", "scale_in", 2, 0, "tenant launch postponed")
    expect(page.locator(".messages .success")).to_have_text(
        f"reverting #{action.pk}: web 2 → 0 (action #{undo.pk}).")
    reverting = page.locator(f"#actions tbody tr[data-action='{undo.pk}']")
    expect(reverting).to_contain_text("2 → 0")
    expect(reverting.locator("td").nth(4)).to_have_text(f"revert #{action.pk}")
    expect(reverting.locator("td").nth(6)).to_have_text("olga")
    expect(reverting).to_contain_text("tenant launch postponed")
    # Newest first: the revert sits above the action it undoes; the pool shows it in progress.
    assert page.locator("#actions tbody tr").first.get_attribute("data-action") == str(undo.pk)
    expect(page.locator("#pools tbody tr[data-pool=web] td").nth(7)).to_have_text(f"#{undo.pk}")
    page.wait_for_function(CHART_TRACES, timeout=20_000)
    screenshot(page, "scaling-reverting")
    assert page.js_errors == []

    # A viewer sees the pools, the chart and the log, and no way to scale or revert.
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    try:
        viewer = context.new_page()
        login(viewer, server, "vera", "viewer")
        viewer.goto(f"{server.url}/scaling/")
        expect(viewer.locator("#pools tbody tr[data-pool=web]")).to_have_count(1)
        expect(viewer.locator(f"#actions tbody tr[data-action='{undo.pk}']")).to_have_count(1)
        viewer.wait_for_function(CHART_TRACES, timeout=20_000)
        expect(viewer.locator("main form")).to_have_count(0)
        expect(viewer.locator("#pools thead")).not_to_contain_text("scale by hand")
        # No button that acts: the timeline's range picker and the charts' mode bars only change the view.
        expect(viewer.locator("main button:not([data-range]):not(.modebar-btn)")).to_have_count(0)
    finally:
        context.close()
