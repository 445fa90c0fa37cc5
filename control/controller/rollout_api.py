"""REST API of deployment rollouts: GET /api/v1/rollouts/ (filter `pool`), GET /api/v1/rollouts/<id>/ and
POST /api/v1/rollouts/<id>/revert/ {reason} (operator: re-apply the previous deployment revision and roll it out)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.controller import rollout
from control.controller.models import Rollout
from core.api import ApiError, BoundedJSONParser, ReasonIn, body, errors, query_text, text
from core.audit.context import Origin
from core.roles import IsOperator, IsViewer


class RolloutOut(serializers.Serializer):
    id = serializers.IntegerField()
    pool = serializers.CharField()
    revision = serializers.IntegerField()
    version = serializers.IntegerField()
    previous = serializers.IntegerField(allow_null=True)
    state = serializers.CharField()
    step = serializers.CharField()
    batch = serializers.IntegerField(help_text="index of the batch in progress (= batches when done)")
    batches = serializers.ListField(child=serializers.ListField(child=serializers.CharField()))
    done_nodes = serializers.ListField(child=serializers.CharField())
    entry = serializers.DictField()
    error = serializers.CharField()
    actor = serializers.CharField()
    reason = serializers.CharField()
    reverts = serializers.IntegerField(allow_null=True)
    created = serializers.CharField()
    finished = serializers.CharField(allow_null=True)


def rollout_out(r: Rollout) -> dict[str, Any]:
    return {"id": r.pk, "pool": r.pool.name, "revision": r.revision_id, "version": r.revision.version,
            "previous": r.previous_id, "state": r.state, "step": r.step, "batch": r.batch, "batches": r.batches,
            "done_nodes": r.done_nodes, "entry": r.entry, "error": r.error, "actor": r.actor, "reason": r.reason,
            "reverts": r.reverts_id, "created": r.created.isoformat(),
            "finished": r.finished.isoformat() if r.finished else None}


class RolloutList(APIView):
    permission_classes = [IsViewer]

    @extend_schema(parameters=[OpenApiParameter("pool", str, required=False)],
                   responses={200: RolloutOut(many=True), **errors(400, 401, 403)})
    def get(self, request: Request) -> Response:
        """The latest rollouts, newest first (at most 200)."""
        qs = Rollout.objects.select_related("pool", "revision")
        pool = query_text(request, "pool", 63)
        if pool:
            qs = qs.filter(pool__name=pool)
        return Response([rollout_out(r) for r in qs[:200]])


class RolloutDetail(APIView):
    permission_classes = [IsViewer]

    @extend_schema(responses={200: RolloutOut, **errors(401, 403, 404)})
    def get(self, request: Request, pk: int) -> Response:
        r = Rollout.objects.select_related("pool", "revision").filter(pk=pk).first()
        if r is None:
            raise ApiError(404, f"no rollout {pk}")
        return Response(rollout_out(r))


class RolloutRevert(APIView):
    """Re-apply the deployment revision that was active before this rollout, and roll it out (operator)."""

    permission_classes = [IsOperator]
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=ReasonIn, responses={201: RolloutOut, **errors(400, 401, 403, 404, 409, 413, 415)})
    def post(self, request: Request, pk: int) -> Response:
        data = body(request)
        unknown = sorted(set(data) - {"reason"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
        reason = text(data.get("reason"), "reason")
        try:
            r = rollout.revert(pk, reason, Origin.from_request(request))
        except rollout.RolloutError as exc:
            raise ApiError(exc.status, str(exc), exc.fields) from None
        return Response(rollout_out(r), status=201)
