"""Read-only REST API of the audit trail: /api/v1/audit/ (filters, paginated) and /api/v1/audit/<id>/."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.request import Request

from core.api import ApiError, errors, query_text
from core.audit.models import AuditEvent
from core.roles import IsViewer


class AuditEventSerializer(serializers.ModelSerializer):
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)
    details = serializers.JSONField()

    class Meta:
        model = AuditEvent
        fields = ["id", "time", "actor", "action", "target", "before", "after", "details", "reason", "request_id",
                  "client"]


def parse_time(raw: str, name: str) -> Any:
    try:
        when = parse_datetime(raw)
    except ValueError:
        when = None
    if when is None:
        raise ApiError(400, f"{name} must be an ISO 8601 time", {name: "e.g. 2026-11-28T14:00:00Z"})
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def filter_events(qs: Any, params: Any) -> Any:
    """Filters shared by the API and the audit page. `action` ending in '*' matches a prefix (policy.*)."""
    if actor := params("actor"):
        qs = qs.filter(actor=actor)
    if action := params("action"):
        qs = qs.filter(action__startswith=action[:-1]) if action.endswith("*") else qs.filter(action=action)
    if target := params("target"):
        qs = qs.filter(target=target)
    if request_id := params("request_id"):
        qs = qs.filter(request_id=request_id)
    if since := params("since"):
        qs = qs.filter(time__gte=parse_time(since, "since"))
    if until := params("until"):
        qs = qs.filter(time__lt=parse_time(until, "until"))
    return qs


FILTERS = [
    OpenApiParameter("actor", str, description="user name, controller or system"),
    OpenApiParameter("action", str, description="e.g. policy.rollback; a trailing * matches a prefix (node.*)"),
    OpenApiParameter("target", str, description="e.g. policy:scheduler, node:gpu-a-1"),
    OpenApiParameter("request_id", str, description="the X-Request-ID of the request that made the change"),
    OpenApiParameter("since", str, description="ISO 8601 time, inclusive"),
    OpenApiParameter("until", str, description="ISO 8601 time, exclusive"),
]


class AuditList(generics.ListAPIView):
    """Audit events, newest first."""

    serializer_class = AuditEventSerializer
    permission_classes = [IsViewer]

    def get_queryset(self) -> Any:
        return filter_events(AuditEvent.objects.all(), lambda name: query_text(self.request, name))

    @extend_schema(parameters=FILTERS, responses={200: AuditEventSerializer(many=True), **errors(400)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        return super().get(request, *args, **kwargs)


class AuditDetail(generics.RetrieveAPIView):
    serializer_class = AuditEventSerializer
    permission_classes = [IsViewer]
    queryset = AuditEvent.objects.all()

    @extend_schema(responses={200: AuditEventSerializer, **errors(404)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        return super().get(request, *args, **kwargs)
