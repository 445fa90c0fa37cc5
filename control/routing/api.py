"""REST API of routing: GET /api/v1/routing/summary (live window) and /api/v1/routing/minutes (stored minutes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.routing import summary
from core.api import ApiError, errors, query_text
from core.csv_export import CSVExport
from core.roles import IsViewer
from dashboard.metrics.query import QueryError, parse_time

MAX_RANGE = timedelta(days=31)
MAX_ROWS = 10_000


def _window(request: Request) -> int:
    raw = request.query_params.get("window", "60")
    allowed = ", ".join(str(w) for w in summary.WINDOWS)
    if not raw.isdigit() or int(raw) not in summary.WINDOWS:
        raise ApiError(400, f"window must be one of {allowed} (seconds), not {raw[:20]!r}",
                       {"window": f"one of {allowed}"})
    return int(raw)


class RoutingSummary(CSVExport, APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        parameters=[OpenApiParameter("window", int, enum=list(summary.WINDOWS),
                                     description="seconds of request log to summarise (default 60)")],
        responses={200: OpenApiTypes.OBJECT, **errors(400)})
    def get(self, request: Request) -> Response:
        """Live routing: share of requests per node, each node's score by scorer (every live gateway),
        latency/TTFT p50/p95/p99 per class, 429s, retries, quarantines and the cache hit rate (docs/routing.md)."""
        window = _window(request)
        return self.respond(request, summary.summary(window), f"switchyard-routing-{window}s")

    def to_csv(self, document: Any) -> str:
        """The page's two charts as rows: per node its share, requests, score and each scorer's part."""
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        scorers = list(document.get("scorers") or [])
        w.writerow(["node", "pool", "share", "requests", "score", *scorers])
        for n in document["nodes"]:
            parts = n.get("parts") or {}
            w.writerow([n["node"], n.get("pool", ""), n.get("share"), n.get("requests"),
                        "" if n.get("score") is None else n["score"],
                        *("" if parts.get(k) is None else parts[k] for k in scorers)])
        return buf.getvalue()


class RoutingMinutes(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        parameters=[
            OpenApiParameter("from", str, description="ISO 8601, unix seconds or relative (-1h); default -1h"),
            OpenApiParameter("to", str, description="ISO 8601, unix seconds or relative; default now"),
            OpenApiParameter("node", str, description="only this node"),
            OpenApiParameter("class", str, description="only this priority class"),
            OpenApiParameter("limit", int, description=f"rows at most (1..{MAX_ROWS}, default 1440)"),
        ],
        responses={200: OpenApiTypes.OBJECT, **errors(400)})
    def get(self, request: Request) -> Response:
        """Per-minute aggregates (newest data lags the log by one aggregation run, at most about 10 s), each with
        its percentiles, and `total` with percentiles from the merged histograms of all returned rows."""
        now = datetime.now(UTC)
        fields: dict[str, str] = {}
        try:
            start = parse_time(request.query_params.get("from"), "from", now - timedelta(hours=1), now)
            end = parse_time(request.query_params.get("to"), "to", now, now)
        except QueryError as exc:
            raise ApiError(400, exc.message, {exc.field: exc.message}) from None
        if end <= start:
            fields["to"] = "must be after from"
        elif end - start > MAX_RANGE:
            fields["from"] = f"the range may span at most {MAX_RANGE.days} days"
        raw_limit = request.query_params.get("limit", "1440")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_ROWS:
            fields["limit"] = f"an integer from 1 to {MAX_ROWS}"
        if fields:
            name, why = next(iter(fields.items()))
            raise ApiError(400, f"{name}: {why}", fields)
        node = query_text(request, "node", max_length=120)
        request_class = query_text(request, "class", max_length=64)
        return Response(summary.minutes(start, end, node, request_class, int(raw_limit)))
