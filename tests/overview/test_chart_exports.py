"""Every chart exports PNG (Plotly's mode bar) and CSV from the same API call it is drawn from; page titles name
the page (and the node)."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.test import Client

from control.routing.models import RequestMinute
from dashboard.fleet.models import Pool
from tests.browser.conftest import Server, login
from tests.conftest import full_sample, make_node, make_user

CHART_CONTEXTS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
  id: gd.id, modebar: gd._context.displayModeBar,
  png: !(gd._context.modeBarButtonsToRemove || []).includes('toImage'),
  csv: (gd._context.modeBarButtonsToAdd || []).some(b => b.name === 'Download data as CSV')}))"""


def rows_of(resp: Any) -> list[list[str]]:
    assert resp.status_code == 200, resp.content[:300]
    assert resp["Content-Type"].startswith("text/csv")
    assert resp["Content-Disposition"].startswith("attachment; filename=")
    return list(csv.reader(io.StringIO(resp.content.decode())))


@pytest.mark.usefixtures("clean_samples")
def test_csv_of_the_heatmap_kpi_routing_and_forecast_calls(push: Any) -> None:
    token = make_node("gpu-a-1")
    assert push(token, {"node": "gpu-a-1", "samples": [full_sample(1, gpus=2, base=30.0)]}).status_code == 200
    viewer = Client(HTTP_AUTHORIZATION=f"Token {make_user('vera', 'viewer')}")

    heat = rows_of(viewer.get("/api/v1/live/gpu:gpu_util_pct", {"format": "csv"}))
    frame = viewer.get("/api/v1/live/gpu:gpu_util_pct").json()
    assert heat[0] == ["node", "pool", "status", *map(str, frame["columns"])]
    assert heat[1][:3] == ["gpu-a-1", "pool-a", "up"] and float(heat[1][3]) == frame["z"][0][0]
    node = rows_of(viewer.get("/api/v1/live/node:default", {"format": "csv"}))
    assert node[1][0] == "gpu-a-1"
    kpi = dict(rows_of(viewer.get("/api/v1/live/kpi", {"format": "csv"}))[1:])
    assert kpi["nodes_up"] == "1"
    bad = viewer.get("/api/v1/live/gpu:nope", {"format": "csv"})
    assert bad.status_code == 400 and bad.json()["fields"]["topic"]

    RequestMinute.objects.create(minute="2026-01-01T00:00:00Z", node="gpu-a-1", pool="pool-a",
                                 request_class="standard", requests=3, status_2xx=3)
    routing = rows_of(viewer.get("/api/v1/routing/summary", {"format": "csv"}))
    assert routing[0][:5] == ["node", "pool", "share", "requests", "score"]

    Pool.objects.get_or_create(name="web")
    forecast = rows_of(viewer.get("/api/v1/scaling/pools/web/forecast/", {"format": "csv"}))
    assert forecast[0] == ["time", "actual_request_rate", "forecast_request_rate"]
    assert viewer.get("/api/v1/scaling/pools/web/forecast/", {"format": "csv", "hours": "0"}).status_code == 400


def test_every_chart_has_png_and_csv_in_its_mode_bar_and_titles_name_the_page(page: Any, server: Server) -> None:
    token = make_node("gpu-a-1")
    r = server.ingest(token, {"node": "gpu-a-1", "samples": [full_sample(1, gpus=2, base=30.0)]})
    assert r.status_code == 200
    login(page, server, "vera", "viewer")
    pages = {
        "/": ("Fleet overview · Switchyard", 6),
        "/heatmap/": ("Heatmap · Switchyard", 2),
        "/nodes/gpu-a-1/": ("Node gpu-a-1 · Switchyard", 5),
        "/scaling/": ("Scaling · Switchyard", 4),
        "/routing/": ("Routing · Switchyard", 2),
    }
    for path, (title, at_least) in pages.items():
        page.goto(f"{server.url}{path}")
        assert page.title() == title
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {at_least}", timeout=20_000)
        charts = page.evaluate(CHART_CONTEXTS)
        assert charts and all(c["modebar"] is not False and c["png"] and c["csv"] for c in charts), (path, charts)
    assert page.js_errors == []
