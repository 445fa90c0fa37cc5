"""REST API: alerts (viewer), the effective rules (viewer), silences (list: viewer; create/expire: operator)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.alerts import silences
from control.alerts.models import SEVERITIES, Alert, Silence
from control.alerts.schema import DERIVED_GPU, DERIVED_NODE
from control.policy import service as policy
from core.api import ApiError, BoundedJSONParser, ReasonIn, body, errors, query_text, text
from core.audit.context import Origin
from core.roles import IsOperator, IsViewer

STATES = ("pending", "firing", "resolved")


class AlertOut(serializers.Serializer):
    id = serializers.IntegerField()
    fingerprint = serializers.CharField()
    rule = serializers.CharField()
    state = serializers.ChoiceField(STATES)
    severity = serializers.ChoiceField(SEVERITIES)
    labels = serializers.DictField(child=serializers.CharField())
    annotations = serializers.DictField(child=serializers.CharField())
    value = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField()
    active_at = serializers.DateTimeField()
    fired_at = serializers.DateTimeField(allow_null=True)
    resolved_at = serializers.DateTimeField(allow_null=True)
    silenced = serializers.BooleanField()
    notified = serializers.CharField(help_text='what receivers were last told: "", "firing" or "resolved"')


class RulesOut(serializers.Serializer):
    revision = serializers.IntegerField()
    version = serializers.IntegerField()
    rules = serializers.ListField(child=serializers.DictField())
    derived_metrics = serializers.DictField(child=serializers.CharField())


class MatcherIO(serializers.Serializer):
    label = serializers.ChoiceField(["alertname", "severity", "pool", "node", "gpu"])
    op = serializers.ChoiceField(["=", "!=", "=~", "!~"], default="=")
    value = serializers.CharField()


class SilenceOut(serializers.Serializer):
    id = serializers.IntegerField()
    matchers = MatcherIO(many=True)
    starts_at = serializers.DateTimeField()
    ends_at = serializers.DateTimeField()
    reason = serializers.CharField()
    created_by = serializers.CharField()
    active = serializers.BooleanField()
    expired_at = serializers.DateTimeField(allow_null=True)
    expired_by = serializers.CharField()
    expire_reason = serializers.CharField()


class SilenceIn(serializers.Serializer):
    matchers = MatcherIO(many=True)
    ends_at = serializers.DateTimeField(required=False, help_text="when it ends (or give duration_s)")
    duration_s = serializers.IntegerField(required=False, help_text="seconds from now (or give ends_at)")
    reason = serializers.CharField()


def alert_json(a: Alert) -> dict[str, Any]:
    return {"id": a.pk, "fingerprint": a.fingerprint, "rule": a.rule, "state": a.state, "severity": a.severity,
            "labels": a.labels, "annotations": a.annotations, "value": a.value, "threshold": a.threshold,
            "active_at": a.active_at, "fired_at": a.fired_at, "resolved_at": a.resolved_at, "silenced": a.silenced,
            "notified": a.notified}


def silence_json(s: Silence) -> dict[str, Any]:
    return {"id": s.pk, "matchers": s.matchers, "starts_at": s.starts_at, "ends_at": s.ends_at, "reason": s.reason,
            "created_by": s.created_by, "active": s.active_at(timezone.now()), "expired_at": s.expired_at,
            "expired_by": s.expired_by, "expire_reason": s.expire_reason}


def parse_since(value: str | None, field: str = "since") -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise ApiError(400, f"{field} must be an ISO 8601 time or unix seconds", {field: "not a time"})
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _limit(request: Request, default: int = 100, most: int = 500) -> int:
    raw = request.query_params.get("limit")
    try:
        limit = int(raw) if raw else default
    except ValueError:
        raise ApiError(400, "limit must be an integer", {"limit": f"an integer 1-{most}"}) from None
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit must be 1-{most}", {"limit": f"an integer 1-{most}"})
    return limit


class AlertList(APIView):
    """Alerts, newest first: firing and pending ones and the resolved history (viewer)."""

    permission_classes = [IsViewer]

    @extend_schema(parameters=[
        OpenApiParameter("state", str, enum=list(STATES), required=False),
        OpenApiParameter("severity", str, enum=list(SEVERITIES), required=False),
        OpenApiParameter("since", str, required=False, description="ISO 8601 or unix seconds: active since then"),
        OpenApiParameter("limit", int, required=False, description="1-500, default 100")],
        responses={200: AlertOut(many=True), **errors(400)})
    def get(self, request: Request) -> Response:
        qs = Alert.objects.all().order_by("-id")
        state, severity = query_text(request, "state"), query_text(request, "severity")
        if state is not None:
            if state not in STATES:
                raise ApiError(400, f"state must be one of {', '.join(STATES)}", {"state": "unknown state"})
            qs = qs.filter(state=state)
        if severity is not None:
            if severity not in SEVERITIES:
                raise ApiError(400, f"severity must be one of {', '.join(SEVERITIES)}",
                               {"severity": "unknown severity"})
            qs = qs.filter(severity=severity)
        since = parse_since(query_text(request, "since"))
        if since is not None:
            qs = qs.filter(active_at__gte=since)
        return Response([alert_json(a) for a in qs[:_limit(request)]])


class AlertRules(APIView):
    """The rules in force: the active `alerts` policy revision (change them through /api/v1/policies/alerts/)."""

    permission_classes = [IsViewer]

    @extend_schema(responses={200: RulesOut, **errors()})
    def get(self, request: Request) -> Response:
        rev = policy.active("alerts")
        return Response({"revision": rev.pk, "version": rev.version, "rules": rev.document.get("rules", []),
                         "derived_metrics": {**DERIVED_GPU, **DERIVED_NODE}})


class SilenceList(APIView):
    """Silences (viewer); POST creates one (operator, audited): matchers, ends_at or duration_s, reason."""

    parser_classes = [BoundedJSONParser]

    def get_permissions(self) -> list[Any]:
        return [IsOperator()] if self.request.method == "POST" else [IsViewer()]

    @extend_schema(parameters=[OpenApiParameter("state", str, enum=["active", "expired"], required=False)],
                   responses={200: SilenceOut(many=True), **errors(400)})
    def get(self, request: Request) -> Response:
        state = query_text(request, "state")
        if state not in (None, "active", "expired"):
            raise ApiError(400, "state must be active or expired", {"state": "active or expired"})
        return Response([silence_json(s) for s in silences.listing(state)[:_limit(request)]])

    @extend_schema(request=SilenceIn, responses={201: SilenceOut, **errors(400, 413, 415)})
    def post(self, request: Request) -> Response:
        data = body(request)
        unknown = sorted(set(data) - {"matchers", "ends_at", "duration_s", "reason"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
        reason = text(data.get("reason"), "reason")
        now = timezone.now()
        if ("ends_at" in data) == ("duration_s" in data):
            raise ApiError(400, "give either ends_at or duration_s", {"ends_at": "ends_at or duration_s"})
        if "duration_s" in data:
            seconds = data["duration_s"]
            if not isinstance(seconds, int) or isinstance(seconds, bool) or not 60 <= seconds <= 30 * 86400:
                raise ApiError(400, "duration_s must be 60 s to 30 days", {"duration_s": "an integer 60-2592000"})
            ends_at = now + timedelta(seconds=seconds)
        else:
            if not isinstance(data["ends_at"], str):
                raise ApiError(400, "ends_at must be an ISO 8601 time", {"ends_at": "not a time"})
            ends_at = parse_since(data["ends_at"], "ends_at")
            assert ends_at is not None
        try:
            s = silences.create(data.get("matchers"), ends_at, reason, Origin.from_request(request), now=now)
        except silences.SilenceError as exc:
            raise ApiError(exc.status, exc.message, exc.fields) from None
        return Response(silence_json(s), status=201)


class SilenceExpire(APIView):
    """End a silence now (operator, audited; a reason is required)."""

    permission_classes = [IsOperator]
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=ReasonIn, responses={200: SilenceOut, **errors(400, 404, 409, 413, 415)})
    def post(self, request: Request, pk: int) -> Response:
        data = body(request)
        reason = text(data.get("reason"), "reason")
        try:
            s = silences.expire(pk, reason, Origin.from_request(request))
        except silences.SilenceError as exc:
            raise ApiError(exc.status, exc.message, exc.fields) from None
        return Response(silence_json(s))
