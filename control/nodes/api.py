"""POST /api/v1/nodes/<name>/drain/ (cordon/, uncordon/) {reason}: operator; audited when the state changes."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.nodes.service import ACTIONS, apply
from core.api import ApiError, BoundedJSONParser, body, errors, text
from core.audit.context import Origin
from core.roles import IsOperator
from dashboard.fleet.models import NAME_RE, Node


class NodeActionRequest(serializers.Serializer):
    reason = serializers.CharField()


class NodeActionResult(serializers.Serializer):
    name = serializers.CharField()
    pool = serializers.CharField()
    # Plain strings: a second enum of the same choices would clash with NodeSerializer's in the OpenAPI document.
    state = serializers.CharField(help_text="active, draining or cordoned")
    previous_state = serializers.CharField(help_text="active, draining or cordoned")
    changed = serializers.BooleanField(help_text="false when the node already was in that state (nothing audited)")


class NodeAction(APIView):
    permission_classes = [IsOperator]
    parser_classes = [BoundedJSONParser]
    action = "drain"

    @extend_schema(request=NodeActionRequest, responses={200: NodeActionResult, **errors(400, 404, 413, 415)})
    def post(self, request: Request, name: str) -> Response:
        try:
            NAME_RE(name)
        except ValidationError:
            raise ApiError(404, "no node with that name") from None
        data = body(request)
        unknown = sorted(set(data) - {"reason"})
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
        reason = text(data.get("reason"), "reason")
        try:
            out = apply(name, self.action, reason, Origin.from_request(request))
        except Node.DoesNotExist:
            raise ApiError(404, f"no node named {name!r}") from None
        return Response({"name": out.node.name, "pool": out.node.pool.name, "state": out.node.state,
                         "previous_state": out.previous, "changed": out.changed})


def view_for(action: str) -> type[NodeAction]:
    assert action in ACTIONS
    cls = type(f"Node{action.capitalize()}", (NodeAction,), {"action": action, "__doc__": (
        f"{action.capitalize()} a node (operator); a reason is required and the change is audited.")})
    return cls
