"""`GET /api/v1/live/<topic>`: the current frame of a live topic for scripts (the same JSON the websocket sends)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_errors import errors
from core.roles import IsViewer
from dashboard.live import broadcast, frames


class LiveFrame(APIView):
    """The current full frame of `kpi`, `gpu:<metric>`, `node:default|<metrics>` or `tail:<node>`.

    Served from the frame the broadcaster keeps in Redis while someone watches the topic, else built now: polling
    this costs no more than one more websocket viewer.
    """

    permission_classes = [IsViewer]

    @extend_schema(responses={200: OpenApiTypes.OBJECT, **errors(400)})
    def get(self, request: Request, topic: str) -> Response:
        try:
            frames.check_topic(topic)
            return Response(broadcast.current_frame(topic))
        except frames.TopicError as exc:
            return Response({"error": str(exc), "fields": {"topic": str(exc)}}, status=400)
