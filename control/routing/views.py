"""The routing page: live shares, scores by scorer, percentiles per class (static/switchyard/routing.js)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from control.canary.models import Canary
from control.routing import summary
from core.roles import role_required

TILES = [
    ("rps", "Requests/s", ""),
    ("routed", "Routed", ""),
    ("status_429", "429 shed", ""),
    ("status_5xx", "5xx", ""),
    ("retries", "Retries", ""),
    ("quarantined_nodes", "Quarantined now", ""),
    ("cache_hit_rate", "Cache hit rate", "%"),
    ("prefix_hit_pct", "Prefix-cache hits", "%"),
]


@role_required("viewer")
def routing(request: HttpRequest) -> HttpResponse:
    window = request.GET.get("window", "60")
    window_s = int(window) if window.isdigit() and int(window) in summary.WINDOWS else 60
    return render(request, "routing/routing.html", {
        "nav": "routing", "tiles": TILES, "windows": summary.WINDOWS, "window": window_s,
        # While a canary runs, part of the traffic on this page is routed by another policy: say so.
        "canary": Canary.objects.filter(state__in=Canary.LIVE).select_related("revision").first(),
    })
