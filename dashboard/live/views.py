"""Live pages: the fleet overview (KPI tiles) and the heatmaps. Data arrives over /ws/fleet/ (docs/live.md)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from agents.catalogue import GPU_METRICS, GPU_NAMES
from core.roles import role_required
from dashboard.fleet.models import Node
from dashboard.live import trends
from dashboard.live.frames import DEFAULT_NODE_METRICS

# (kpi name, label, unit shown after the value); the names are the keys of the kpi topic's values.
KPI_TILES = [
    ("nodes_up", "Nodes up", ""),
    ("nodes_stale", "Nodes stale", ""),
    ("nodes_down", "Nodes down", ""),
    ("gpus", "GPUs reporting", ""),
    ("gpu_util_mean", "GPU util, mean", "%"),
    ("gpu_util_max", "GPU util, max", "%"),
    ("queue_total", "Queued requests", ""),
    ("ttft_p95_s", "p95 TTFT, worst node", "s"),
    ("tokens_s", "Tokens generated", "/s"),
    ("power_w", "Power draw", "kW"),
    ("alerts_active", "Active alerts", ""),
]

# (panel id, title): the trend panels under the tiles; static/switchyard/trends.js says what each draws.
TREND_PANELS = [
    ("gpu", "GPU utilisation (%)"),
    ("requests", "Gateway requests and 429s (/s)"),
    ("latency", "p95 latency, worst node (s)"),
    ("queue", "Queued requests"),
    ("power", "Power draw (kW)"),
    ("energy", "Energy per generated token (J)"),
]


@role_required("viewer")
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "live/overview.html", {
        "nav": "overview", "tiles": KPI_TILES, "ranges": list(trends.RANGES), "default_range": trends.DEFAULT_RANGE,
        "panels": TREND_PANELS,
        # A fresh install shows how to add a node, with this server's URL as the browser reached it.
        "fresh_install": not Node.objects.exists(), "server_url": request.build_absolute_uri("/").rstrip("/"),
    })


@role_required("viewer")
def heatmap(request: HttpRequest) -> HttpResponse:
    metric = request.GET.get("metric", "gpu_util_pct")
    if metric not in GPU_NAMES:
        metric = "gpu_util_pct"
    return render(request, "live/heatmap.html", {
        "nav": "heatmap", "metric": metric, "gpu_metrics": GPU_METRICS, "node_metrics": DEFAULT_NODE_METRICS,
    })
