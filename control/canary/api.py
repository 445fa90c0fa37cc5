"""REST API: /api/v1/policies/scheduler/whatif/ (preview on the live fleet) and /api/v1/policies/<kind>/canary/
(scheduler or scaling: start, read, and the manual pause / resume / promote / abort)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.canary import minutes, service, whatif
from control.canary.models import AnalysisRun, Canary
from control.policy import service as policy
from control.policy.api import KIND_PARAM, DocumentField, run
from core.api import ApiError, BoundedJSONParser, ReasonIn, body, errors, text
from core.audit.context import Origin
from core.roles import IsOperator, IsViewer


class WhatIfRequest(serializers.Serializer):
    document = DocumentField(required=False, help_text="the candidate scheduler document (or give `revision`)")
    revision = serializers.IntegerField(required=False, help_text="a stored scheduler revision to preview")
    model = serializers.CharField(required=False, help_text="the model the next requests ask for (default: the "
                                                            "model most nodes serve)")
    requests = serializers.IntegerField(required=False, min_value=1, max_value=whatif.MAX_REQUESTS,
                                        help_text="how many next requests the predicted share is over")


class StepSerializer(serializers.Serializer):
    weight = serializers.FloatField(help_text="percent of requests on the candidate, 0 < weight <= 100")
    pause_s = serializers.IntegerField(help_text="seconds at this weight before the next step")


class StartRequest(serializers.Serializer):
    revision = serializers.IntegerField(help_text="the candidate revision (stored with activate=false)")
    steps = StepSerializer(many=True, required=False,
                           help_text="scheduler: [{weight, pause_s}]; scaling: [{pause_s}] (or give duration_s)")
    pool = serializers.CharField(required=False, help_text="scaling only: the pool that tries the candidate's rules")
    duration_s = serializers.IntegerField(required=False, help_text="scaling only: one phase of this many seconds")
    analysis = serializers.DictField(required=False, help_text="thresholds; see docs/canary.md for the fields")
    reason = serializers.CharField()


class RunSerializer(serializers.ModelSerializer):
    class Meta:
        model = AnalysisRun
        fields = ["id", "ts", "step", "weight", "window_from", "window_to", "verdict", "arms", "checks", "summary"]


class CanarySerializer(serializers.ModelSerializer):
    runs = serializers.SerializerMethodField()
    series = serializers.SerializerMethodField(help_text="per arm, one point a minute (the routing aggregates)")
    candidate_version = serializers.IntegerField(source="revision.version", read_only=True)
    stable_version = serializers.IntegerField(source="stable.version", read_only=True)

    class Meta:
        model = Canary
        fields = ["id", "kind", "pool", "state", "revision", "candidate_version", "stable", "stable_version", "steps",
                  "step", "step_started", "weight", "analysis", "failures", "inconclusive", "author", "reason",
                  "outcome", "promoted_to", "created", "finished", "last_analysis", "runs", "series"]

    @extend_schema(responses=RunSerializer(many=True))
    def get_runs(self, c: Canary) -> list[dict[str, Any]]:
        return RunSerializer(c.runs.order_by("-ts", "-pk")[:200], many=True).data

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_series(self, c: Canary) -> dict[str, Any]:
        return minutes.series(c)


def _kind(kind: str, allowed: tuple[str, ...] = service.KINDS) -> str:
    run(policy.check_kind, kind)
    if kind not in allowed:
        raise ApiError(404, f"this is for the {' or '.join(allowed)} policy, not {kind!r}", {"kind": "unsupported"})
    return kind


class WhatIf(APIView):
    """Viewers may ask too: like preview/, it stores nothing and shows only what the routing page shows."""

    permission_classes = [IsViewer]
    parser_classes = [BoundedJSONParser]

    @extend_schema(parameters=[KIND_PARAM], request=WhatIfRequest,
                   responses={200: OpenApiTypes.OBJECT, **errors(400, 404, 413, 415)})
    def post(self, request: Request, kind: str) -> Response:
        """Each node's score and predicted share of the next requests under the active and the candidate
        document, by the gateway's scoring code, on the latest samples and live in-flight counts."""
        _kind(kind, ("scheduler",))
        data = body(request)
        unknown = sorted(set(data) - {"document", "revision", "model", "requests"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
        if ("document" in data) == ("revision" in data):
            raise ApiError(400, "give either document or revision", {"document": "document or revision required"})
        document = data.get("document")
        if "revision" in data:
            rev = data["revision"]
            if isinstance(rev, bool) or not isinstance(rev, int | str):
                raise ApiError(400, "revision must be a revision id", {"revision": "A valid integer is required."})
            document = run(policy.get_revision, "scheduler", rev).document
        model = data.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > 200):
            raise ApiError(400, "model must be a model name", {"model": "a non-empty string up to 200 characters"})
        n = data.get("requests", whatif.DEFAULT_REQUESTS)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= whatif.MAX_REQUESTS:
            raise ApiError(400, f"requests must be a whole number from 1 to {whatif.MAX_REQUESTS}",
                           {"requests": f"{n!r} is not a whole number from 1 to {whatif.MAX_REQUESTS}"})
        return Response(run(whatif.whatif, document, model, n))


class CanaryView(APIView):
    parser_classes = [BoundedJSONParser]

    def get_permissions(self) -> list[Any]:
        return [IsOperator()] if self.request.method == "POST" else [IsViewer()]

    @extend_schema(parameters=[KIND_PARAM], responses={200: CanarySerializer, **errors(404)})
    def get(self, request: Request, kind: str) -> Response:
        """The live canary of the kind (else the latest that ended) with its analysis runs, newest first."""
        c = service.current(_kind(kind))
        if c is None:
            raise ApiError(404, f"no {kind} canary has run yet", {})
        return Response(CanarySerializer(c).data)

    @extend_schema(parameters=[KIND_PARAM], request=StartRequest,
                   responses={201: CanarySerializer, **errors(400, 404, 409, 413, 415)})
    def post(self, request: Request, kind: str) -> Response:
        """Start a canary of `revision` (one per kind at a time: 409 while one runs)."""
        c = run(service.start, _kind(kind), body(request), Origin.from_request(request))
        return Response(CanarySerializer(c).data, status=201)


def _action(name: str) -> type[APIView]:
    fn = getattr(service, name)

    class Action(APIView):
        permission_classes = [IsOperator]
        parser_classes = [BoundedJSONParser]

        @extend_schema(parameters=[KIND_PARAM], request=ReasonIn, operation_id=f"canary_{name}",
                       responses={200: CanarySerializer, **errors(400, 404, 409, 413, 415)})
        def post(self, request: Request, kind: str) -> Response:
            kind = _kind(kind)
            data = body(request)
            unknown = sorted(set(data) - {"reason"})
            if unknown:
                raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
            reason = text(data.get("reason"), "reason")
            return Response(CanarySerializer(run(fn, kind, reason, Origin.from_request(request))).data)

    Action.__name__ = Action.__qualname__ = f"Canary{name.title()}"
    Action.post.__doc__ = f"{name.title()} the live canary by hand, with a reason (operator)."
    return Action


ACTIONS = {name: _action(name) for name in ("pause", "resume", "promote", "abort")}
