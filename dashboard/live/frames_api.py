"""`GET /api/v1/live/<topic>`: the current frame of a live topic for scripts (the same JSON the websocket sends)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_errors import errors
from core.csv_export import CSVExport
from core.roles import IsViewer
from dashboard.live import broadcast, frames


class LiveFrame(CSVExport, APIView):
    """The current full frame of `kpi`, `gpu:<metric>`, `node:default|<metrics>` or `tail:<node>`.

    Served from the frame the broadcaster keeps in Redis while someone watches the topic, else built now: polling
    this costs no more than one more websocket viewer. `format=csv` flattens a heatmap frame (one row per node,
    one column per GPU or metric) or the kpi values (name, value).
    """

    permission_classes = [IsViewer]

    @extend_schema(responses={200: OpenApiTypes.OBJECT, **errors(400)})
    def get(self, request: Request, topic: str) -> Response:
        try:
            frames.check_topic(topic)
            return self.respond(request, broadcast.current_frame(topic), f"switchyard-{topic.replace(':', '-')}")
        except frames.TopicError as exc:
            return Response({"error": str(exc), "fields": {"topic": str(exc)}}, status=400)

    def to_csv(self, document: Any) -> str:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if "rows" in document and "z" in document:
            w.writerow(["node", "pool", "status", *(str(c) for c in document.get("columns") or [])])
            # Node heatmaps colour a per-column scale (z) and carry the measured values in `raw`: export those.
            for row, values in zip(document["rows"], document.get("raw") or document["z"], strict=False):
                w.writerow([row.get("node"), row.get("pool"), row.get("status"),
                            *("" if v is None else v for v in values)])
        else:
            w.writerow(["name", "value"])
            for name, value in (document.get("values") or {}).items():
                if not isinstance(value, (list, dict)):
                    w.writerow([name, "" if value is None else value])
        return buf.getvalue()
