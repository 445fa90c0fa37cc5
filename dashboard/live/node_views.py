"""Drill-down pages: one node's history and live tail, and the pools list."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from dashboard.accounts.views import role_required
from dashboard.fleet.models import Node, Pool


@role_required("viewer")
def node_detail(request: HttpRequest, name: str) -> HttpResponse:
    node = get_object_or_404(Node.objects.select_related("pool"), name=name)
    return render(request, "live/node.html", {"nav": "pools", "node": node})


@role_required("viewer")
def pools(request: HttpRequest) -> HttpResponse:
    return render(request, "live/pools.html", {"nav": "pools", "pools": Pool.objects.order_by("name")})
