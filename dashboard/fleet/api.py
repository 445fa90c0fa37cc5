"""Read API of the fleet: pools, nodes (with last-seen and latest values), GPUs; node and GPU lists are paginated."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api_errors import errors
from dashboard.fleet.liveness import status_of
from dashboard.fleet.models import GPU, Node, Pool
from dashboard.metrics.latest import latest, latest_of


class PoolSerializer(serializers.ModelSerializer):
    nodes = serializers.IntegerField(read_only=True, source="node_count")

    class Meta:
        model = Pool
        fields = ["name", "description", "nodes", "created"]


class GPUSerializer(serializers.ModelSerializer):
    node = serializers.CharField(source="node.name", read_only=True)

    class Meta:
        model = GPU
        fields = ["node", "index", "uuid", "name", "first_seen"]


class NodeSerializer(serializers.ModelSerializer):
    """A node with its liveness and latest values; pass the node's latest snapshot as context["snaps"]."""

    pool = serializers.CharField(source="pool.name", read_only=True)
    gpus = serializers.IntegerField(source="gpu_count", read_only=True)
    models = serializers.JSONField(source="served_models", read_only=True)
    status = serializers.SerializerMethodField(help_text="up, stale (missed pushes) or down")
    last_seen = serializers.SerializerMethodField(help_text="time of the latest sample")
    latest = serializers.SerializerMethodField(help_text="latest host, inference and per-GPU values")

    class Meta:
        model = Node
        fields = ["name", "pool", "state", "status", "last_seen", "endpoint", "models", "agent", "gpus", "created",
                  "latest"]

    def _snap(self, node: Node) -> dict[str, Any] | None:
        return self.context.get("snaps", {}).get(node.name)

    @extend_schema_field(serializers.ChoiceField(choices=["up", "stale", "down"]))
    def get_status(self, node: Node) -> str:
        return status_of(self._snap(node), node.interval_s)

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_last_seen(self, node: Node) -> str | None:
        snap = self._snap(node)
        if snap:
            return str(snap["ts"])
        return node.last_seen.isoformat() if node.last_seen else None

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_latest(self, node: Node) -> dict[str, Any] | None:
        snap = self._snap(node)
        if not snap:
            return None
        return {"host": snap["host"], "inference": snap["inference"], "gpus": snap["gpus"],
                "applied": snap["applied"]}


def nodes_queryset() -> Any:
    return Node.objects.select_related("pool").annotate(gpu_count=Count("gpus"))


class PoolList(APIView):
    @extend_schema(responses={200: PoolSerializer(many=True), **errors()})
    def get(self, request: Request) -> Response:
        pools = Pool.objects.annotate(node_count=Count("nodes"))
        return Response(PoolSerializer(pools, many=True).data)


class FleetPage(LimitOffsetPagination):
    """`?limit=` (1-1000, default 100) and `?offset=`; a malformed or out-of-range value is refused with a 400
    naming it, not silently replaced by the default (a script would then read the wrong page without knowing)."""

    default_limit = 100
    max_limit = 1000
    max_offset = 10**9  # past PostgreSQL's bigint trouble, far past any fleet

    def get_limit(self, request: Request) -> int:
        return self._number(request, self.limit_query_param, 1, self.max_limit, self.default_limit)

    def get_offset(self, request: Request) -> int:
        return self._number(request, self.offset_query_param, 0, self.max_offset, 0)

    @staticmethod
    def _number(request: Request, name: str, lo: int, hi: int, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 10 and lo <= int(raw) <= hi):
            raise serializers.ValidationError({name: f"{raw[:20]!r} is not a whole number from {lo} to {hi}"})
        return int(raw)


class NodeList(generics.ListAPIView):
    """Nodes (paginated) with their status (up/stale/down), last-seen time and latest values."""

    serializer_class = NodeSerializer
    pagination_class = FleetPage

    def get_queryset(self) -> Any:
        qs = nodes_queryset()
        if pool := self.request.query_params.get("pool"):
            qs = qs.filter(pool__name=pool)
        return qs

    @extend_schema(responses={200: NodeSerializer(many=True), **errors(400)},
                   parameters=[OpenApiParameter("pool", str, description="only the nodes of this pool")])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        # The latest values of this page's nodes only, not of the whole fleet.
        snaps = latest_of([node.name for node in page or []])
        return self.get_paginated_response(NodeSerializer(page, many=True, context={"snaps": snaps}).data)


class NodeDetail(APIView):
    @extend_schema(responses={200: NodeSerializer, **errors(404)})
    def get(self, request: Request, name: str) -> Response:
        node = get_object_or_404(nodes_queryset(), name=name)
        return Response(NodeSerializer(node, context={"snaps": {node.name: latest(node.name)}}).data)


class GPUList(generics.ListAPIView):
    """GPUs (paginated), ordered by node and index."""

    serializer_class = GPUSerializer
    pagination_class = FleetPage

    def get_queryset(self) -> Any:
        qs = GPU.objects.select_related("node")
        if node := self.request.query_params.get("node"):
            qs = qs.filter(node__name=node)
        return qs

    @extend_schema(responses={200: GPUSerializer(many=True), **errors(400)},
                   parameters=[OpenApiParameter("node", str, description="only the GPUs of this node")])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)
