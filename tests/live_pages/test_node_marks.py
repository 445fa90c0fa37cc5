"""The node page marks what happened on its charts' time axis: throttle intervals (shaded on every GPU chart), XID
events (red lines on every chart) and drains / cordons / uncordons (labelled lines whose label hovers who and why),
from GET /api/v1/nodes/<name>/history, which also exports its series as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from django.test import Client

from dashboard.live import history
from tests.browser.conftest import Server, login, screenshot
from tests.conftest import full_sample, make_node, make_user

GPUS = 2


def samples(start: datetime, n: int) -> list[dict[str, Any]]:
    """n samples 5 s apart; GPU 1 is power-capped (reason bit 4) for samples 2-4, and reports XID 79 at sample 3."""
    out = []
    for k in range(n):
        s = full_sample(k + 1, start + timedelta(seconds=5 * k), gpus=GPUS, base=20.0)
        for g in s["gpus"]:
            g.update(clocks_event_reasons=0, xid_count=0, xid_last=None, row_remap_pending=0,
                     ecc_corrected_total=0, ecc_uncorrected_total=0, remapped_rows_uncorrectable=0)
        if 2 <= k <= 4:
            s["gpus"][1]["clocks_event_reasons"] = 4
        if k == 3:
            s["gpus"][1].update(xid_count=1, xid_last=79)
        out.append(s)
    return out


def drain(base: str | None, client: Any, reason: str) -> None:
    r = client.post(f"{base or ''}/api/v1/nodes/gpu-a-1/drain/", json={"reason": reason}) if base else \
        client.post("/api/v1/nodes/gpu-a-1/drain/", {"reason": reason}, content_type="application/json")
    assert r.status_code == 200, r.content


@pytest.mark.usefixtures("clean_samples")
def test_history_carries_the_drains_with_who_and_why_and_exports_csv(push: Any) -> None:
    token = make_node("gpu-a-1")
    assert push(token, {"node": "gpu-a-1", "samples": samples(datetime.now(UTC) - timedelta(seconds=60), 8)}
                ).status_code == 200
    drain(None, Client(HTTP_AUTHORIZATION=f"Token {make_user('olga', 'operator')}"), "swap the PSU")
    viewer = Client(HTTP_AUTHORIZATION=f"Token {make_user('vera', 'viewer')}")
    doc = viewer.get("/api/v1/nodes/gpu-a-1/history", {"range": "15m"}).json()
    [a] = doc["node_actions"]
    assert (a["action"], a["actor"], a["reason"]) == ("drain", "olga", "swap the PSU")
    assert [(t["gpu"], t["reasons"]) for t in doc["throttle"]] == [(1, ["SW power cap"])]
    assert [(e["gpu"], e["code"]) for e in doc["events"] if e["kind"] == "xid"] == [(1, 79)]

    resp = viewer.get("/api/v1/nodes/gpu-a-1/history", {"range": "15m", "format": "csv"})
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.content.decode())))
    assert rows[0] == ["time", "gpu", "metric", "value"]
    util = [r for r in rows[1:] if r[1] == "1" and r[2] == "gpu_util_pct"]
    assert len(util) == len(doc["gpu_series"][1]["t"]) and util[0][0] == doc["gpu_series"][1]["t"][0]
    assert any(r[1] == "" and r[2] == "cpu_util_pct" for r in rows[1:])
    bad = viewer.get("/api/v1/nodes/gpu-a-1/history", {"range": "2y", "format": "csv"})
    assert bad.status_code == 400 and bad.json()["fields"]["range"]


def test_charts_mark_throttling_xids_and_drains(page: Any, server: Server) -> None:
    token = make_node("gpu-a-1")
    r = server.ingest(token, {"node": "gpu-a-1", "samples": samples(datetime.now(UTC) - timedelta(seconds=60), 8)})
    assert r.status_code == 200, r.text
    ops = httpx.Client(headers={"Authorization": f"Token {make_user('olga', 'operator')}"})
    drain(server.url, ops, "swap the PSU")
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/nodes/gpu-a-1/?range=15m")
    assert page.title() == "Node gpu-a-1 · Switchyard"
    page.wait_for_function("() => window.switchyardNode && window.switchyardNode.loads >= 1", timeout=15_000)
    marks = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.node-plot')].map(gd => [
      gd.id.slice(6), {shapes: (gd.layout.shapes || []).map(s => s.name),
                       labels: (gd.layout.annotations || []).map(a => [a.text, a.hovertext])}]))""")
    for chart in history.CHARTS:
        m = marks[chart.id]
        assert "xid" in m["shapes"] and "node-drain" in m["shapes"], (chart.id, m)
        assert m["labels"] == [["drain", "drain by olga: swap the PSU"]], (chart.id, m)
        assert ("throttle" in m["shapes"]) == (chart.scope == "gpu"), (chart.id, m)
    # The annotation shows on the chart itself, not only in the data.
    page.wait_for_function("() => [...document.querySelectorAll('#chart-gpu-util .annotation')]"
                           ".map(a => a.textContent).join() === 'drain'", timeout=10_000)
    row = page.locator("#node-action-table tbody tr[data-action=drain]")
    assert "olga" in row.inner_text() and "swap the PSU" in row.inner_text()
    screenshot(page, "node-marks")
    assert page.js_errors == []
