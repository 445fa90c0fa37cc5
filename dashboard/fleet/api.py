"""Read API of the fleet: pools, nodes (with last-seen and latest values), GPUs."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dashboard.api_errors import errors
from dashboard.fleet.liveness import status_of
from dashboard.fleet.models import GPU, Node, Pool
from dashboard.metrics.latest import all_latest, latest


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


class NodeList(APIView):
    """Every node with its status (up/stale/down), last-seen time and latest values."""

    @extend_schema(responses={200: NodeSerializer(many=True), **errors()},
                   parameters=[OpenApiParameter("pool", str, description="only the nodes of this pool")])
    def get(self, request: Request) -> Response:
        qs = nodes_queryset()
        if pool := request.query_params.get("pool"):
            qs = qs.filter(pool__name=pool)
        return Response(NodeSerializer(qs, many=True, context={"snaps": all_latest()}).data)


class NodeDetail(APIView):
    @extend_schema(responses={200: NodeSerializer, **errors(404)})
    def get(self, request: Request, name: str) -> Response:
        node = get_object_or_404(nodes_queryset(), name=name)
        return Response(NodeSerializer(node, context={"snaps": {node.name: latest(node.name)}}).data)


class GPUList(APIView):
    @extend_schema(responses={200: GPUSerializer(many=True), **errors()},
                   parameters=[OpenApiParameter("node", str, description="only the GPUs of this node")])
    def get(self, request: Request) -> Response:
        qs = GPU.objects.select_related("node")
        if node := request.query_params.get("node"):
            qs = qs.filter(node__name=node)
        return Response(GPUSerializer(qs, many=True).data)
