"""Read API of the fleet: pools, nodes (with last-seen and latest values), GPUs."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from django.shortcuts import get_object_or_404
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

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
    pool = serializers.CharField(source="pool.name", read_only=True)
    gpus = serializers.IntegerField(source="gpu_count", read_only=True)
    models = serializers.JSONField(source="served_models", read_only=True)

    class Meta:
        model = Node
        fields = ["name", "pool", "state", "endpoint", "models", "agent", "gpus", "created"]


def node_view(node: Node, snap: dict[str, Any] | None) -> dict[str, Any]:
    data = NodeSerializer(node).data
    data["status"] = status_of(snap, node.interval_s)
    data["last_seen"] = snap["ts"] if snap else (node.last_seen.isoformat() if node.last_seen else None)
    data["latest"] = (
        {"host": snap["host"], "inference": snap["inference"], "gpus": snap["gpus"], "applied": snap["applied"]}
        if snap else None
    )
    return data


def nodes_queryset() -> Any:
    return Node.objects.select_related("pool").annotate(gpu_count=Count("gpus"))


class PoolList(APIView):
    def get(self, request: Request) -> Response:
        pools = Pool.objects.annotate(node_count=Count("nodes"))
        return Response(PoolSerializer(pools, many=True).data)


class NodeList(APIView):
    """Every node with its status (up/stale/down), last-seen time and latest values. Filter with ?pool=NAME."""

    def get(self, request: Request) -> Response:
        qs = nodes_queryset()
        if pool := request.query_params.get("pool"):
            qs = qs.filter(pool__name=pool)
        snaps = all_latest()
        return Response([node_view(n, snaps.get(n.name)) for n in qs])


class NodeDetail(APIView):
    def get(self, request: Request, name: str) -> Response:
        node = get_object_or_404(nodes_queryset(), name=name)
        return Response(node_view(node, latest(node.name)))


class GPUList(APIView):
    def get(self, request: Request) -> Response:
        qs = GPU.objects.select_related("node")
        if node := request.query_params.get("node"):
            qs = qs.filter(node__name=node)
        return Response(GPUSerializer(qs, many=True).data)
