"""Metric read endpoints: the query API, the catalogue, and the Prometheus exposition."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.catalogue import ALL_METRICS
from core.api_errors import errors
from dashboard.fleet.models import Node
from dashboard.metrics import exposition, query
from dashboard.metrics.latest import all_latest


def _bad(field: str, message: str) -> Response:
    return Response({"error": f"{field}: {message}", "fields": {field: message}}, status=400)


class MetricQuery(APIView):
    """Series with units, from raw, 1-minute or 1-hour data chosen by the step."""

    @extend_schema(
        parameters=[
            OpenApiParameter("metric", str, required=True, description="a catalogue metric, e.g. gpu_util_pct"),
            OpenApiParameter("node", str, description="node name(s), comma-separated; default all"),
            OpenApiParameter("gpu", int, description="GPU index (per-GPU metrics only)"),
            OpenApiParameter("from", str, description="ISO 8601, unix seconds or relative (-1h); default -1h"),
            OpenApiParameter("to", str, description="as `from`; default now"),
            OpenApiParameter("step", int, description="seconds per point; default about 300 points"),
            OpenApiParameter("agg", str, enum=["avg", "max"], description="aggregate per step; default avg"),
        ],
        responses={200: OpenApiTypes.OBJECT, **errors(400)},
    )
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


class CatalogueEntry(serializers.Serializer):
    name = serializers.CharField()
    scope = serializers.ChoiceField(choices=["gpu", "host", "inference"])
    unit = serializers.CharField()
    kind = serializers.CharField()
    help = serializers.CharField()
    min = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)


class Catalogue(APIView):
    @extend_schema(responses={200: CatalogueEntry(many=True), **errors()})
    def get(self, request: Request) -> Response:
        return Response([
            {"name": m.name, "scope": m.scope, "unit": m.unit, "kind": m.kind, "help": m.help, "min": m.lo,
             "max": m.hi}
            for m in ALL_METRICS
        ])


class FleetExposition(APIView):
    """Prometheus text format; scrape with a viewer's API token (`authorization: {credentials: <token>}`)."""

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Any:
        return HttpResponse(exposition.render(all_latest()), content_type=CONTENT_TYPE_PLAIN_0_0_4)
