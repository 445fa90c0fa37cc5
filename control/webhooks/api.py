"""REST API of webhook receivers (admin): list/create, read/change/delete, send a test, the delivery log."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.webhooks import service
from control.webhooks.models import EVENTS, FORMATS, Delivery, Receiver
from core.api import ApiError, BoundedJSONParser, ReasonIn, body, errors, text
from core.audit.context import Origin
from core.roles import IsAdmin


class ReceiverOut(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.CharField()
    format = serializers.ChoiceField(FORMATS)
    events = serializers.ListField(child=serializers.ChoiceField(EVENTS))
    enabled = serializers.BooleanField()
    internal = serializers.BooleanField(help_text="may reach private/loopback addresses")
    consecutive_failures = serializers.IntegerField()
    disabled_reason = serializers.CharField()
    created = serializers.DateTimeField()
    updated = serializers.DateTimeField()
    created_by = serializers.CharField()


class ReceiverCreated(ReceiverOut):
    secret = serializers.CharField(help_text="shown in this response only; store it in the receiver now")


class ReceiverIn(serializers.Serializer):
    name = serializers.CharField()
    url = serializers.CharField(help_text="http:// or https://, no credentials")
    secret = serializers.CharField(required=False, help_text="16-200 characters; a random one when left out")
    format = serializers.ChoiceField(FORMATS, default="alertmanager")
    events = serializers.ListField(child=serializers.ChoiceField(EVENTS), default=["alert"])
    enabled = serializers.BooleanField(default=True)
    internal = serializers.BooleanField(default=False)
    reason = serializers.CharField()


class ReceiverPatch(serializers.Serializer):
    name = serializers.CharField(required=False)
    url = serializers.CharField(required=False)
    secret = serializers.CharField(required=False)
    format = serializers.ChoiceField(FORMATS, required=False)
    events = serializers.ListField(child=serializers.ChoiceField(EVENTS), required=False)
    enabled = serializers.BooleanField(required=False)
    internal = serializers.BooleanField(required=False)
    reason = serializers.CharField()


class AttemptOut(serializers.Serializer):
    number = serializers.IntegerField()
    started = serializers.DateTimeField()
    duration_ms = serializers.FloatField()
    status = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    body_excerpt = serializers.CharField()
    outcome = serializers.ChoiceField(["ok", "retry", "failed"])


class DeliveryOut(serializers.Serializer):
    id = serializers.IntegerField()
    event = serializers.CharField()
    state = serializers.ChoiceField(Delivery.State.values)
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField()
    created = serializers.DateTimeField()
    finished = serializers.DateTimeField(allow_null=True)
    last_status = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField()
    attempt_log = AttemptOut(many=True)


def receiver_json(r: Receiver) -> dict[str, Any]:
    return {"id": r.pk, "name": r.name, "url": r.url, "format": r.format, "events": r.events, "enabled": r.enabled,
            "internal": r.internal, "consecutive_failures": r.consecutive_failures,
            "disabled_reason": r.disabled_reason, "created": r.created, "updated": r.updated,
            "created_by": r.created_by}


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {"id": d.pk, "event": d.event, "state": d.state, "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at, "created": d.created, "finished": d.finished,
            "last_status": d.last_status, "last_error": d.last_error,
            "attempt_log": [{"number": a.number, "started": a.started, "duration_ms": a.duration_ms,
                             "status": a.status, "error": a.error, "body_excerpt": a.body_excerpt,
                             "outcome": a.outcome} for a in d.attempt_log.all()]}


def _call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except service.ReceiverError as exc:
        raise ApiError(exc.status, exc.message, exc.fields) from None


def _reason(request: Request, data: dict[str, Any]) -> str:
    return text(data.get("reason", request.query_params.get("reason")), "reason")


class WebhookList(APIView):
    """Webhook receivers (admin). POST creates one; its secret is in that response only."""

    permission_classes = [IsAdmin]
    parser_classes = [BoundedJSONParser]

    @extend_schema(responses={200: ReceiverOut(many=True), **errors()})
    def get(self, request: Request) -> Response:
        return Response([receiver_json(r) for r in Receiver.objects.all()])

    @extend_schema(request=ReceiverIn, responses={201: ReceiverCreated, **errors(400, 409, 413, 415)})
    def post(self, request: Request) -> Response:
        data = body(request)
        reason = _reason(request, data)
        r, secret = _call(service.create, {k: v for k, v in data.items() if k != "reason"},
                          Origin.from_request(request), reason)
        return Response({**receiver_json(r), "secret": secret}, status=201)


class WebhookDetail(APIView):
    """One receiver (admin): read it (never its secret), change it, delete it. Changes need a reason."""

    permission_classes = [IsAdmin]
    parser_classes = [BoundedJSONParser]

    def _get(self, pk: int) -> Receiver:
        r = Receiver.objects.filter(pk=pk).first()
        if r is None:
            raise ApiError(404, f"no webhook receiver {pk}")
        return r

    @extend_schema(responses={200: ReceiverOut, **errors(404)})
    def get(self, request: Request, pk: int) -> Response:
        return Response(receiver_json(self._get(pk)))

    @extend_schema(request=ReceiverPatch, responses={200: ReceiverOut, **errors(400, 404, 409, 413, 415)})
    def patch(self, request: Request, pk: int) -> Response:
        data = body(request)
        reason = _reason(request, data)
        r = _call(service.update, pk, {k: v for k, v in data.items() if k != "reason"}, Origin.from_request(request),
                  reason)
        return Response(receiver_json(r))

    @extend_schema(request=ReasonIn, parameters=[OpenApiParameter("reason", str, required=False)],
                   responses={204: None, **errors(400, 404)})
    def delete(self, request: Request, pk: int) -> Response:
        data = request.data if isinstance(request.data, dict) else {}
        _call(service.delete, pk, Origin.from_request(request), _reason(request, data))
        return Response(status=204)


class WebhookTest(APIView):
    """Queue a test message to this receiver now (admin); the delivery log shows how it went."""

    permission_classes = [IsAdmin]
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=None, responses={202: DeliveryOut, **errors(404)})
    def post(self, request: Request, pk: int) -> Response:
        d = _call(service.send_test, pk, Origin.from_request(request))
        return Response(delivery_json(d), status=202)


class WebhookDeliveries(APIView):
    """The receiver's latest deliveries with every attempt (admin); `limit` up to 200 (default 50)."""

    permission_classes = [IsAdmin]

    @extend_schema(parameters=[OpenApiParameter("limit", int, required=False)],
                   responses={200: DeliveryOut(many=True), **errors(400, 404)})
    def get(self, request: Request, pk: int) -> Response:
        if not Receiver.objects.filter(pk=pk).exists():
            raise ApiError(404, f"no webhook receiver {pk}")
        try:
            limit = int(request.query_params.get("limit", 50))
        except ValueError:
            raise ApiError(400, "limit must be an integer", {"limit": "an integer 1-200"}) from None
        if not 1 <= limit <= 200:
            raise ApiError(400, "limit must be 1-200", {"limit": "an integer 1-200"})
        rows = Delivery.objects.filter(receiver_id=pk).prefetch_related("attempt_log").order_by("-id")[:limit]
        return Response([delivery_json(d) for d in rows])
