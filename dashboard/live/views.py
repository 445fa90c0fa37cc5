"""Live pages: the fleet overview (KPI tiles) and the heatmaps. Data arrives over /ws/fleet/ (docs/live.md)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from agents.catalogue import GPU_METRICS, GPU_NAMES
from core.roles import role_required
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


@role_required("viewer")
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "live/overview.html", {"nav": "overview", "tiles": KPI_TILES})


@role_required("viewer")
def heatmap(request: HttpRequest) -> HttpResponse:
    metric = request.GET.get("metric", "gpu_util_pct")
    if metric not in GPU_NAMES:
        metric = "gpu_util_pct"
    return render(request, "live/heatmap.html", {
        "nav": "heatmap", "metric": metric, "gpu_metrics": GPU_METRICS, "node_metrics": DEFAULT_NODE_METRICS,
    })
