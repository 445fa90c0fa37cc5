"""GET /api/v1/overview/trends?range=1h[&format=csv]: every trend panel of the overview in one call."""

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
from dashboard.live import trends


class OverviewTrends(CSVExport, APIView):
    """The fleet over a range (from the fleet's 1-minute rollup and the gateway's per-minute totals): GPU util mean
    and max, gateway requests/s and 429s/s, worst node's p95 TTFT and end-to-end latency, queue, power (kW), energy
    per generated token; plus the audit events drawn as markers (policy activations, rollbacks, canary verdicts,
    scaling actions) with who and why. `format=csv` returns the series as CSV, one row per point."""

    permission_classes = [IsViewer]

    @extend_schema(
        parameters=[
            OpenApiParameter("range", str, enum=list(trends.RANGES), description=f"default {trends.DEFAULT_RANGE}"),
            OpenApiParameter("format", str, enum=["json", "csv"]),
        ],
        responses={200: OpenApiTypes.OBJECT, **errors(400)},
    )
    def get(self, request: Request) -> Response:
        try:
            rng = trends.parse_range(request.query_params.get("range"))
        except trends.RangeError as exc:
            return Response({"error": f"range: {exc}", "fields": {"range": str(exc)}}, status=400)
        return self.respond(request, trends.trends(rng), f"switchyard-overview-{rng.name}")

    def to_csv(self, document: Any) -> str:
        return trends.to_csv(document)
