"""Drill-down pages: one node's history and live tail, and the pools list.

Both pages render their first state on the server (so they say something useful before any script runs) and then
keep themselves current from the JSON endpoints in history_api.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from agents.catalogue import BY_NAME, CLOCK_EVENT_REASONS, decode_clock_reasons
from core.roles import role_required
from dashboard.fleet.liveness import status_of
from dashboard.fleet.models import Node
from dashboard.live import history, pool_summary
from dashboard.metrics.latest import latest
from dashboard.metrics.query import choose_source


@role_required("viewer")
def node_detail(request: HttpRequest, name: str) -> HttpResponse:
    node = get_object_or_404(Node.objects.select_related("pool"), name=name)
    try:
        rng = history.parse_range(request.GET.get("range"))
        range_error = ""
    except history.RangeError as exc:
        # The page still renders (with the default range) and says why; the API answers the same input with a 400.
        rng, range_error = history.RANGES[history.DEFAULT_RANGE], str(exc)
    now = datetime.now(UTC)
    table, step = choose_source(BY_NAME["gpu_util_pct"], rng.step, now - timedelta(seconds=rng.seconds), now)
    snap = latest(node.name)
    gpus = [
        {"index": g.get("index"), "name": g.get("name"), "reasons": decode_clock_reasons(g.get("clocks_event_reasons"))}
        for g in (snap or {}).get("gpus", [])
    ]
    page = {
        "node": node.name,
        "range": rng.name,
        "range_seconds": rng.seconds,
        "source": table.resolution,
        "step": step,
        "interval_s": node.interval_s or settings.AGENT_INTERVAL_S,
        "history_url": f"/api/v1/nodes/{node.name}/history",
        "charts": [asdict(c) for c in history.CHARTS],
        "clock_reasons": {str(bit): word for bit, word in CLOCK_EVENT_REASONS.items()},
    }
    return render(request, "live/node.html", {
        "nav": "pools",
        "node": node,
        "status": status_of(snap, node.interval_s, now),
        "last_seen": snap["ts"] if snap else (node.last_seen.isoformat() if node.last_seen else None),
        "endpoint": (snap or {}).get("endpoint") or node.endpoint,
        "models": (snap or {}).get("models") or node.served_models,
        "gpus": gpus,
        "ranges": list(history.RANGES),
        "range": rng.name,
        "range_error": range_error,
        "source": table.resolution,
        "step": step,
        "charts": history.CHARTS,
        "page": page,
        "node_actions": ("drain", "cordon", "uncordon"),
    })


@role_required("viewer")
def pools(request: HttpRequest) -> HttpResponse:
    return render(request, "live/pools.html", {"nav": "pools", "summary": pool_summary.summary()})
