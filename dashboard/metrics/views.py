"""Metric read endpoints: the query API, the catalogue, and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.catalogue import ALL_METRICS
from dashboard.fleet.models import Node
from dashboard.metrics import exposition, query
from dashboard.metrics.latest import all_latest


def _bad(field: str, message: str) -> Response:
    return Response({"error": f"{field}: {message}", "fields": {field: message}}, status=400)


class MetricQuery(APIView):
    """GET ?metric=&node=&gpu=&from=&to=&step=&agg=avg|max — series with units, from raw/1m/1h data by step."""

    def get(self, request: Request) -> Response:
        try:
            q = query.build(request.query_params)
        except query.QueryError as exc:
            return _bad(exc.field, exc.message)
        if node_param := request.query_params.get("node"):
            names = [n for n in node_param.split(",") if n][:500]
            ids = list(Node.objects.filter(name__in=names).values_list("id", flat=True))
            if not ids:
                return _bad("node", f"no node named {node_param[:100]!r}")
            q = query.Query(q.metric, q.start, q.end, q.step, ids, q.gpu, q.agg)
        return Response(query.run(q))


class Catalogue(APIView):
    def get(self, request: Request) -> Response:
        return Response([
            {"name": m.name, "scope": m.scope, "unit": m.unit, "kind": m.kind, "help": m.help, "min": m.lo,
             "max": m.hi}
            for m in ALL_METRICS
        ])


class FleetExposition(APIView):
    """Prometheus text format; scrape with a viewer's API token (`authorization: {credentials: <token>}`)."""

    def get(self, request: Request) -> Any:
        return HttpResponse(exposition.render(all_latest()), content_type="text/plain; version=0.0.4")
