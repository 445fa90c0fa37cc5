"""The live pages in a real browser: heatmap cells per GPU, live updates without reload, stale nodes, node charts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dashboard.fleet.models import Node
from tests.browser.conftest import Server, login, screenshot
from tests.conftest import full_sample, make_node

FLEET = {"gpu-a-1": "pool-a", "gpu-a-2": "pool-a", "gpu-b-1": "pool-b"}
GPUS = 4

CELL = """([node, gpu]) => {
  const s = window.switchyardHeatmap && window.switchyardHeatmap.gpu;
  if (!s || !s.rows) return null;
  const row = s.rows.findIndex(r => r.node === node);
  return row < 0 ? null : {value: s.z[row][gpu], status: s.rows[row].status, cells: s.z.flat().length,
                           rows: s.rows.length};
}"""


def seed(server: Server, interval_s: dict[str, int] | None = None) -> dict[str, str]:
    tokens = {name: make_node(name, pool) for name, pool in FLEET.items()}
    for name, seconds in (interval_s or {}).items():
        Node.objects.filter(name=name).update(interval_s=seconds)
    for name, token in tokens.items():
        r = server.ingest(token, {"node": name, "samples": [full_sample(1, gpus=GPUS, base=20.0)]})
        assert r.status_code == 200, r.text
    return tokens


def sample_with(seq: int, gpu: int, util: float) -> dict[str, Any]:
    s = full_sample(seq, datetime.now(UTC), gpus=GPUS, base=20.0)
    s["gpus"][gpu]["gpu_util_pct"] = util
    return s


def test_heatmap_shows_every_gpu_and_follows_a_new_sample_without_reload(page: Any, server: Server) -> None:
    tokens = seed(server)
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/heatmap/")
    page.wait_for_function(f"({CELL})(['gpu-a-1', 2]) !== null", timeout=10_000)
    first = page.evaluate(CELL, ["gpu-a-1", 2])
    assert first["rows"] == len(FLEET) and first["cells"] == len(FLEET) * GPUS
    page.wait_for_selector(".js-plotly-plot .heatmaplayer", timeout=10_000)  # Plotly drew it
    screenshot(page, "heatmap")

    marker = page.evaluate("() => { window.__notReloaded = true; return true; }")
    assert marker
    r = server.ingest(tokens["gpu-a-1"], {"node": "gpu-a-1", "samples": [sample_with(2, gpu=2, util=77.0)]})
    assert r.status_code == 200, r.text
    # Within 2 s of the push (one broadcaster tick plus delivery), on the same page (no reload).
    page.wait_for_function(f"({CELL})(['gpu-a-1', 2]).value === 77", timeout=2_000)
    assert page.evaluate("() => window.__notReloaded") is True
    assert page.evaluate(CELL, ["gpu-a-1", 1])["value"] != 77  # the neighbour did not change
    assert page.js_errors == []


def test_a_node_that_stops_reporting_turns_stale_and_loses_its_numbers(page: Any, server: Server) -> None:
    seed(server, interval_s={"gpu-b-1": 1})  # stale after 3 silent seconds
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/heatmap/")
    page.wait_for_function(f"({CELL})(['gpu-b-1', 0]) !== null", timeout=10_000)
    page.wait_for_function(f"({CELL})(['gpu-b-1', 0]).status === 'stale'", timeout=15_000)
    cell = page.evaluate(CELL, ["gpu-b-1", 0])
    assert cell["value"] is None  # old numbers are not shown as if live
    assert "stale" in page.inner_text("main")
    assert page.evaluate(CELL, ["gpu-a-1", 0])["status"] == "up"
    screenshot(page, "heatmap-stale")


def test_overview_tiles_fill_in_and_update(page: Any, server: Server) -> None:
    tokens = seed(server)
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/")
    tile = "[data-kpi=nodes_up] .value"
    page.wait_for_function(f"document.querySelector('{tile}') && document.querySelector('{tile}').textContent.trim() === '3'",
                           timeout=10_000)
    assert page.inner_text("[data-kpi=gpus] .value").strip() == str(len(FLEET) * GPUS)
    r = server.ingest(tokens["gpu-a-1"], {"node": "gpu-a-1", "samples": [sample_with(2, gpu=0, util=100.0)]})
    assert r.status_code == 200
    page.wait_for_function(
        "document.querySelector('[data-kpi=gpu_util_max] .value').textContent.trim().startsWith('100')", timeout=5_000)
    screenshot(page, "overview")
    assert page.js_errors == []


def test_node_page_draws_its_charts_and_pools_page_lists_the_fleet(page: Any, server: Server) -> None:
    tokens = seed(server)
    for seq in range(2, 6):
        server.ingest(tokens["gpu-a-1"], {"node": "gpu-a-1", "samples": [sample_with(seq, gpu=0, util=10.0 * seq)]})
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/nodes/gpu-a-1/?range=15m")
    page.wait_for_selector("[data-chart] .js-plotly-plot .scatterlayer .trace", timeout=10_000)
    charts = page.query_selector_all("[data-chart]")
    assert len(charts) >= 4
    drawn = page.query_selector_all("[data-chart] .js-plotly-plot")
    assert len(drawn) == len(charts)
    screenshot(page, "node")
    assert page.js_errors == []

    page.goto(f"{server.url}/pools/")
    text = page.inner_text("main")
    assert "pool-a" in text and "pool-b" in text
    screenshot(page, "pools")
    page.click("text=gpu-a-1")
    page.wait_for_url(f"{server.url}/nodes/gpu-a-1/**")


def test_disconnected_badge_while_the_server_is_down_then_live_again(page: Any, server: Server) -> None:
    from tests.browser.conftest import start_server

    seed(server)
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/heatmap/")
    page.wait_for_function(f"({CELL})(['gpu-a-1', 0]) !== null", timeout=10_000)
    assert page.is_hidden("#live-badge")
    server.stop()
    page.wait_for_selector("#live-badge", state="visible", timeout=10_000)
    assert "disconnected" in page.inner_text("#live-badge") or "reconnecting" in page.inner_text("#live-badge")
    screenshot(page, "heatmap-disconnected")
    restarted = start_server(server.port, server.log)
    try:
        page.wait_for_selector("#live-badge", state="hidden", timeout=40_000)  # backoff tops out at 30 s
        page.wait_for_function(f"({CELL})(['gpu-a-1', 0]) !== null")
    finally:
        restarted.stop()


def test_clicking_a_heatmap_cell_opens_that_node(page: Any, server: Server) -> None:
    seed(server)
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/heatmap/")
    page.wait_for_function(f"({CELL})(['gpu-a-1', 0]) !== null", timeout=10_000)
    drag = page.wait_for_selector(".js-plotly-plot .nsewdrag")  # the GPU heatmap's plot area comes first
    box = drag.bounding_box()
    rows = len(FLEET)
    order = page.evaluate("() => window.switchyardHeatmap.gpu.rows.map(r => r.node)")
    # Rows are drawn top to bottom in frame order (pool, then name): click the middle of the bottom-left cell.
    page.mouse.click(box["x"] + box["width"] / (2 * GPUS), box["y"] + box["height"] * (rows - 0.5) / rows)
    page.wait_for_url(f"{server.url}/nodes/{order[-1]}/**")
    assert order[-1] == "gpu-b-1"


def test_overview_says_which_node_needs_attention_and_why(page: Any, server: Server) -> None:
    tokens = seed(server)
    login(page, server, "vera", "viewer")
    page.goto(f"{server.url}/")
    page.wait_for_selector("#attention tr[data-node]", timeout=10_000)  # (the seed's samples carry XIDs)
    hot = sample_with(2, gpu=3, util=99.0)
    hot["gpus"][3]["temp_c"] = 92.0
    assert server.ingest(tokens["gpu-b-1"], {"node": "gpu-b-1", "samples": [hot]}).status_code == 200
    page.wait_for_function("(document.querySelector('#attention tr[data-node=\"gpu-b-1\"]') || {}).textContent"
                           "?.includes('GPU 3 at 92 °C')", timeout=5_000)
    row = page.inner_text("#attention tr[data-node=gpu-b-1]")
    assert "1 of 4 GPUs at ≥ 95 % util" in row and "/nodes/gpu-b-1/" in page.inner_html("#attention")
    screenshot(page, "overview-attention")
