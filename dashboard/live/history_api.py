"""JSON behind the node and pools pages: a node's history in one response, and the pools summary."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_errors import errors
from core.csv_export import CSVExport
from core.roles import IsViewer
from dashboard.fleet.liveness import status_of
from dashboard.fleet.models import Node
from dashboard.live import history, pool_summary
from dashboard.metrics.latest import latest


class NodeHistory(CSVExport, APIView):
    """Every series of the node page (per-GPU, host, inference), throttle intervals, GPU error events, and the
    node's drains / cordons / uncordons (from the audit, with who and why).

    The range picks the table: raw up to 1 h, the 1-minute rollup up to 24 h, the 1-hour rollup beyond.
    `format=csv` returns the series as CSV (time, gpu, metric, value).
    """

    permission_classes = [IsViewer]

    @extend_schema(
        parameters=[OpenApiParameter("range", str, enum=list(history.RANGES),
                                     description=f"time range; default {history.DEFAULT_RANGE}"),
                    OpenApiParameter("format", str, enum=["json", "csv"])],
        responses={200: OpenApiTypes.OBJECT, **errors(400, 404)},
    )
    def get(self, request: Request, name: str) -> Response:
        try:
            rng = history.parse_range(request.query_params.get("range"))
        except history.RangeError as exc:
            return Response({"error": f"range: {exc}", "fields": {"range": str(exc)}}, status=400)
        node = Node.objects.filter(name=name).only("id", "name", "interval_s").first()
        if node is None:
            return Response({"error": f"no node named {name[:63]!r}", "fields": {}}, status=404)
        snap = latest(node.name)
        # Status and last sample time ride along so a polling page keeps its header current too.
        return self.respond(request, {"node": node.name, "status": status_of(snap, node.interval_s),
                                      "last_seen": snap["ts"] if snap else None,
                                      **history.history(node.id, rng, name=node.name)},
                            f"switchyard-{node.name}-{rng.name}")

    def to_csv(self, document: Any) -> str:
        return history.to_csv(document)


class PoolsSummary(APIView):
    """Per pool: node counts by status and state, GPUs, aggregate load of the nodes that are up, and the nodes."""

    permission_classes = [IsViewer]

    @extend_schema(responses={200: OpenApiTypes.OBJECT, **errors()})
    def get(self, request: Request) -> Response:
        return Response(pool_summary.summary())
