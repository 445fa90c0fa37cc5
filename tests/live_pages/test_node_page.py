"""The node page /nodes/<name>/: header facts, one chart element per metric family, range picker and source."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client

from dashboard.live import history
from tests.conftest import full_sample, make_node
from tests.live_pages.conftest import ROLES

pytestmark = pytest.mark.usefixtures("clean_samples")


def page_config(html: str) -> dict[str, Any]:
    m = re.search(r'<script id="node-page" type="application/json">(.*?)</script>', html, re.S)
    assert m, "the page carries its config for node.js"
    return json.loads(m.group(1))


def test_anonymous_is_sent_to_login(client: Client) -> None:
    make_node("gpu-a-1")
    resp = client.get("/nodes/gpu-a-1/")
    assert resp.status_code == 302
    assert resp["Location"] == "/accounts/login/?next=/nodes/gpu-a-1/"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_sees_the_page(role: str, session_as: Callable[[str], Client]) -> None:
    make_node("gpu-a-1")
    resp = session_as(role).get("/nodes/gpu-a-1/")
    assert resp.status_code == 200
    assert "<h1>gpu-a-1</h1>" in resp.content.decode()


def test_unknown_node_is_a_404(session_as: Callable[[str], Client]) -> None:
    assert session_as("viewer").get("/nodes/gpu-nope/").status_code == 404


def test_header_shows_pool_state_status_endpoint_models_and_last_seen(
        push: Any, session_as: Callable[[str], Client]) -> None:
    token = make_node("gpu-a-1", "pool-x")
    sample = full_sample(1, datetime.now(UTC), gpus=2)
    sample["gpus"][1]["clocks_event_reasons"] = 0x4 | 0x40
    r = push(token, {"node": "gpu-a-1", "endpoint": "http://10.0.3.17:8000", "models": ["deepseek-r1"],
                     "samples": [sample]})
    assert r.status_code == 200
    html = session_as("viewer").get("/nodes/gpu-a-1/").content.decode()
    assert 'href="/pools/#pool-pool-x">pool-x</a>' in html
    assert 'data-status="up"' in html and ">active</span>" in html
    assert "<code>http://10.0.3.17:8000</code>" in html and "<code>deepseek-r1</code>" in html
    assert f'datetime="{datetime.fromisoformat(sample["ts"].replace("Z", "+00:00")).isoformat()}"' in html
    # The current throttle reasons of each GPU, in words.
    assert 'data-gpu="1"' in html and "SW power cap, HW thermal slowdown" in html


def test_a_silent_node_is_down_with_nothing_reported(session_as: Callable[[str], Client]) -> None:
    make_node("gpu-a-1")
    html = session_as("viewer").get("/nodes/gpu-a-1/").content.decode()
    assert 'data-status="down"' in html
    assert ">never</time>" in html


def test_every_chart_has_a_stable_id_and_data_chart(session_as: Callable[[str], Client]) -> None:
    make_node("gpu-a-1")
    html = session_as("viewer").get("/nodes/gpu-a-1/").content.decode()
    ids = re.findall(r'data-chart="([a-z0-9-]+)"', html)
    assert ids == [c.id for c in history.CHARTS]
    for c in history.CHARTS:
        assert f'id="chart-{c.id}"' in html
    assert {"gpu-util", "gpu-memory", "gpu-power", "gpu-temp", "gpu-clocks", "host-cpu", "host-rtt",
            "inf-requests", "inf-kv", "inf-ttft", "inf-tokens", "inf-e2e"} <= set(ids)
    assert 'id="throttle-table"' in html and 'id="event-table"' in html


def test_scripts_load_plotly_then_live_then_node(session_as: Callable[[str], Client]) -> None:
    make_node("gpu-a-1")
    html = session_as("viewer").get("/nodes/gpu-a-1/").content.decode()
    order = [html.index(f"/static/{p}") for p in ("vendor/plotly.min.js", "switchyard/live.js", "switchyard/node.js")]
    assert order == sorted(order)
    assert "/static/switchyard/node.css" in html


@pytest.mark.parametrize(("rng", "source", "words"), [
    ("15m", "raw", "raw samples, 5 s per point"),
    ("1h", "raw", "raw samples, 15 s per point"),
    ("6h", "1m", "1m rollup, 60 s per point"),
    ("24h", "1m", "1m rollup, 300 s per point"),
    ("7d", "1h", "1h rollup, 3600 s per point"),
])
def test_the_range_picker_and_the_source_it_reads(session_as: Callable[[str], Client], rng: str, source: str,
                                                  words: str) -> None:
    make_node("gpu-a-1")
    html = session_as("viewer").get("/nodes/gpu-a-1/", {"range": rng}).content.decode()
    assert f'data-source="{source}"' in html and words in html
    assert f'<a href="?range={rng}" data-range="{rng}" class="active"' in html
    for other in history.RANGES:
        assert f'href="?range={other}"' in html
    cfg = page_config(html)
    assert (cfg["range"], cfg["source"], cfg["range_seconds"]) == (rng, source, history.RANGES[rng].seconds)
    assert cfg["history_url"] == "/api/v1/nodes/gpu-a-1/history"
    assert [c["id"] for c in cfg["charts"]] == [c.id for c in history.CHARTS]
    assert cfg["clock_reasons"]["4"] == "SW power cap"


def test_default_range_is_one_hour(session_as: Callable[[str], Client]) -> None:
    make_node("gpu-a-1")
    cfg = page_config(session_as("viewer").get("/nodes/gpu-a-1/").content.decode())
    assert cfg["range"] == "1h" and cfg["source"] == "raw"


def test_a_bad_range_falls_back_to_the_default_and_says_why(session_as: Callable[[str], Client]) -> None:
    make_node("gpu-a-1")
    resp = session_as("viewer").get("/nodes/gpu-a-1/", {"range": "<script>alert(1)</script>"})
    html = resp.content.decode()
    assert resp.status_code == 200
    assert "is not a range; use one of 15m, 1h, 6h, 24h, 7d" in html
    assert "<script>alert(1)</script>" not in html  # escaped, not injected
    assert page_config(html)["range"] == "1h"
