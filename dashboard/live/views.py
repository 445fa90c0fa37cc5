"""Live pages: the fleet overview (KPI tiles) and the heatmaps. Data arrives over /ws/fleet/."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from dashboard.accounts.views import role_required


@role_required("viewer")
def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "live/overview.html", {"nav": "overview"})


@role_required("viewer")
def heatmap(request: HttpRequest) -> HttpResponse:
    return render(request, "live/heatmap.html", {"nav": "heatmap"})
