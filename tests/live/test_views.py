"""The overview and heatmap pages: who may open them, and the hooks the page scripts and browser tests use."""

from __future__ import annotations

import pytest
from django.test import Client

from agents.catalogue import GPU_METRICS
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

PAGES = ["/", "/heatmap/"]


@pytest.mark.parametrize("path", PAGES)
def test_anonymous_goes_to_login(client: Client, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 302 and resp["Location"] == f"/accounts/login/?next={path}"


@pytest.mark.parametrize("path", PAGES)
def test_user_without_role_is_forbidden(client: Client, path: str) -> None:
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_user("norole"))
    assert client.get(path).status_code == 403


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
@pytest.mark.parametrize("path", PAGES)
def test_every_role_reads(client: Client, role: str, path: str) -> None:
    make_user(f"u-{role}", role)
    assert client.login(username=f"u-{role}", password="correct-horse-battery")
    resp = client.get(path)
    assert resp.status_code == 200
    html = resp.content.decode()
    assert "switchyard/live.js" in html and "switchyard/live.css" in html


def test_overview_has_a_tile_per_kpi(client: Client) -> None:
    make_user("vera", "viewer")
    client.login(username="vera", password="correct-horse-battery")
    html = client.get("/").content.decode()
    for kpi in ("nodes_up", "nodes_stale", "nodes_down", "gpus", "gpu_util_mean", "gpu_util_max", "queue_total",
                "ttft_p95_s", "tokens_s", "power_w", "alerts_active"):
        assert f'data-kpi="{kpi}"' in html, kpi
    assert "switchyard/overview.js" in html


def test_heatmap_offers_every_gpu_metric(client: Client) -> None:
    make_user("vera", "viewer")
    client.login(username="vera", password="correct-horse-battery")
    html = client.get("/heatmap/").content.decode()
    for m in GPU_METRICS:
        assert f'value="{m.name}"' in html, m.name
    assert 'id="metric"' in html and "data-metric=" in html
    assert "vendor/plotly.min.js" in html and "switchyard/heatmap.js" in html
    assert 'id="gpu-heatmap"' in html and 'id="node-heatmap"' in html
