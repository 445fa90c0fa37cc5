"""The controller's API: pools and scaling actions (viewer), manual scale and revert (operator), each pool's
provider (admin), forecasts and power (viewer)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from control.canary import scaling as canary_scaling
from control.controller import actions, bindings, loop, observe, predict, timeline
from control.controller.models import PoolProvider, ScalingAction
from control.providers.registry import ConfigError
from core.api import ApiError, BoundedJSONParser, ReasonIn, body, errors, query_text, text
from core.audit.context import Origin
from core.csv_export import CSVExport
from core.roles import IsAdmin, IsOperator, IsViewer
from dashboard.fleet.models import Node, Pool
from dashboard.metrics.latest import redis_client

STATES = [s.value for s in ScalingAction.State]


class ActionOut(serializers.Serializer):
    id = serializers.IntegerField()
    pool = serializers.CharField()
    kind = serializers.CharField(help_text="scale_out or scale_in")
    from_size = serializers.IntegerField()
    to_size = serializers.IntegerField()
    rule = serializers.CharField(help_text="the rule that decided it: gpu_util_pct>85, predictive, manual, ...")
    metrics = serializers.DictField(help_text="the values that caused the decision")
    reason = serializers.CharField(allow_blank=True)
    state = serializers.CharField(help_text=", ".join(STATES))
    provider = serializers.CharField(allow_blank=True)
    provider_request_id = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True)
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    nodes = serializers.ListField(child=serializers.CharField(), help_text="scale-in: the nodes drained and removed")
    drain_deadline = serializers.DateTimeField(allow_null=True)
    actor = serializers.CharField()
    request_id = serializers.CharField(allow_blank=True)
    reverts = serializers.IntegerField(allow_null=True)
    created = serializers.DateTimeField()
    started = serializers.DateTimeField(allow_null=True)
    finished = serializers.DateTimeField(allow_null=True)


def action_out(a: ScalingAction) -> dict[str, Any]:
    return {
        "id": a.pk, "pool": a.pool.name, "kind": a.kind, "from_size": a.from_size, "to_size": a.to_size,
        "rule": a.rule, "metrics": a.metrics, "reason": a.reason, "state": a.state, "provider": a.provider,
        "provider_request_id": a.provider_request_id, "error": a.error, "attempts": a.attempts,
        "next_attempt_at": a.next_attempt_at, "nodes": a.nodes, "drain_deadline": a.drain_deadline,
        "actor": a.actor, "request_id": a.request_id, "reverts": a.reverts_id, "created": a.created,
        "started": a.started, "finished": a.finished,
    }


class PoolOut(serializers.Serializer):
    pool = serializers.CharField()
    provider = serializers.CharField(allow_null=True, help_text="null: the pool is observed, never scaled")
    enabled = serializers.BooleanField()
    desired = serializers.IntegerField(allow_null=True, help_text="the provider's desired size, last tick")
    actual = serializers.IntegerField(allow_null=True, help_text="instances the provider reports running")
    reporting = serializers.IntegerField(help_text="nodes whose agent reported in the last 30 s")
    nodes = serializers.IntegerField(help_text="nodes registered in the pool and not removed")
    min = serializers.IntegerField()
    max = serializers.IntegerField()
    open_action = serializers.IntegerField(allow_null=True)
    decision = serializers.DictField(allow_null=True, help_text="the last tick's decision")
    error = serializers.CharField(allow_blank=True, help_text="the provider's last error")
    checked = serializers.CharField(allow_null=True, help_text="when the controller last looked at the pool")
    predictive = serializers.BooleanField(help_text="predictive scale-out on in the pool's scaling policy")
    canary = serializers.DictField(allow_null=True, help_text="the scaling canary trying a candidate revision's rules "
                                   "on this pool ({id, revision, state}), else null: min/max are then the candidate's")


def pools_overview() -> list[dict[str, Any]]:
    """Every pool with what the controller last saw of it (used by the API and the page)."""
    now = timezone.now()
    published = {k.decode() if isinstance(k, bytes) else k: orjson.loads(v)
                 for k, v in redis_client().hgetall(loop.POOLS_KEY).items()}
    reporting: dict[str, int] = {}
    for snap in observe.all_latest_fresh(now).values():
        reporting[snap.get("pool", "")] = reporting.get(snap.get("pool", ""), 0) + 1
    bound = {b.pool_id: b for b in PoolProvider.objects.all()}
    open_actions = {a.pool_id: a.pk for a in ScalingAction.objects.filter(state__in=("pending", "draining",
                                                                                      "running"))}
    counts: dict[int, int] = {}
    for pool_id in Node.objects.exclude(state=Node.State.REMOVED).values_list("pool_id", flat=True):
        counts[pool_id] = counts.get(pool_id, 0) + 1
    document = actions.scaling_document()  # once, not once per pool
    trying = canary_scaling.live()
    out = []
    for pool in Pool.objects.all():
        policy = actions.pool_policy(pool.name, document)
        b = bound.get(pool.pk)
        pub = published.get(pool.name, {}) if b else {}
        out.append({
            "pool": pool.name, "provider": b.kind if b else None, "enabled": bool(b and b.enabled),
            "desired": pub.get("desired"), "actual": pub.get("actual"), "reporting": reporting.get(pool.name, 0),
            "nodes": counts.get(pool.pk, 0), "min": policy["min_nodes"], "max": policy["max_nodes"],
            "open_action": open_actions.get(pool.pk), "decision": pub.get("decision"), "error": pub.get("error", ""),
            "checked": pub.get("at"), "predictive": policy["predictive"]["enabled"],
            "canary": ({"id": trying.pk, "revision": trying.revision_id, "state": trying.state}
                       if trying is not None and trying.pool == pool.name else None),
        })
    return out


class ScalingPools(APIView):
    """Every pool: provider, desired/actual/reporting sizes, policy min/max, the open action, the last decision."""

    permission_classes = [IsViewer]

    @extend_schema(responses={200: PoolOut(many=True), **errors(401, 403)})
    def get(self, request: Request) -> Response:
        return Response(pools_overview())


class ScaleIn(serializers.Serializer):
    size = serializers.IntegerField(min_value=0, max_value=10_000)
    reason = serializers.CharField()


def _action_error(exc: actions.ActionError) -> ApiError:
    return ApiError(exc.status, str(exc), exc.fields)


def _reason(data: dict[str, Any]) -> str:
    return text(data.get("reason"), "reason")


def _only(data: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})


class ScalePool(APIView):
    """Scale a pool by hand to `size` (operator): within the policy's min/max, audited, one open action at a time."""

    permission_classes = [IsOperator]
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=ScaleIn, responses={201: ActionOut, **errors(400, 401, 403, 404, 409, 413, 415, 502)})
    def post(self, request: Request, pool: str) -> Response:
        data = body(request)
        _only(data, {"size", "reason"})
        reason = _reason(data)
        try:
            action = actions.scale_by_hand(pool, data.get("size"), reason, Origin.from_request(request))
        except actions.ActionError as exc:
            raise _action_error(exc) from None
        return Response(action_out(action), status=201)


class ActionList(APIView):
    """Scaling actions, newest first; filters `pool` and `state`."""

    permission_classes = [IsViewer]

    @extend_schema(parameters=[OpenApiParameter("pool", str), OpenApiParameter("state", str, enum=STATES),
                               OpenApiParameter("limit", int)],
                   responses={200: ActionOut(many=True), **errors(400, 401, 403)})
    def get(self, request: Request) -> Response:
        qs = ScalingAction.objects.select_related("pool")
        pool = query_text(request, "pool", 63)
        if pool:
            qs = qs.filter(pool__name=pool)
        state = query_text(request, "state", 20)
        if state:
            if state not in STATES:
                raise ApiError(400, f"unknown state {state!r}", {"state": f"one of {', '.join(STATES)}"})
            qs = qs.filter(state=state)
        raw = request.query_params.get("limit") or "100"
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise ApiError(400, "limit must be a whole number from 1 to 1000", {"limit": f"got {raw[:20]!r}"})
        return Response([action_out(a) for a in qs[: int(raw)]])


class ActionDetail(APIView):
    permission_classes = [IsViewer]

    @extend_schema(responses={200: ActionOut, **errors(401, 403, 404)})
    def get(self, request: Request, pk: int) -> Response:
        action = ScalingAction.objects.select_related("pool").filter(pk=pk).first()
        if action is None:
            raise ApiError(404, f"no scaling action {pk}")
        return Response(action_out(action))


class ActionRevert(APIView):
    """Scale the pool back to the size it had before a done action (operator); audited, a new action."""

    permission_classes = [IsOperator]
    parser_classes = [BoundedJSONParser]

    @extend_schema(request=ReasonIn, responses={201: ActionOut, **errors(400, 401, 403, 404, 409, 413, 415, 502)})
    def post(self, request: Request, pk: int) -> Response:
        data = body(request)
        _only(data, {"reason"})
        reason = _reason(data)
        try:
            action = actions.revert(pk, reason, Origin.from_request(request))
        except actions.ActionError as exc:
            raise _action_error(exc) from None
        return Response(action_out(action), status=201)


class ProviderOut(serializers.Serializer):
    pool = serializers.CharField()
    kind = serializers.CharField()
    config = serializers.DictField()
    enabled = serializers.BooleanField()
    updated = serializers.CharField()


class ProviderIn(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["local", "kubernetes", "aws", "azure"])
    config = serializers.DictField(required=False)
    enabled = serializers.BooleanField(required=False, default=True)
    reason = serializers.CharField()


class ProviderList(APIView):
    """Each pool's provider (admin). Credentials never appear here: they come from the environment."""

    permission_classes = [IsAdmin]

    @extend_schema(responses={200: ProviderOut(many=True), **errors(401, 403)})
    def get(self, request: Request) -> Response:
        return Response([bindings.describe(b) for b in PoolProvider.objects.select_related("pool")])


class ProviderDetail(APIView):
    """GET, PUT (create or replace) and DELETE a pool's provider (admin); changes are audited."""

    permission_classes = [IsAdmin]
    parser_classes = [BoundedJSONParser]

    def _binding(self, pool: str) -> PoolProvider:
        b = PoolProvider.objects.select_related("pool").filter(pool__name=pool).first()
        if b is None:
            raise ApiError(404, f"pool {pool!r} has no provider")
        return b

    @extend_schema(responses={200: ProviderOut, **errors(401, 403, 404)})
    def get(self, request: Request, pool: str) -> Response:
        return Response(bindings.describe(self._binding(pool)))

    @extend_schema(request=ProviderIn, responses={200: ProviderOut, **errors(400, 401, 403, 404, 413, 415)})
    def put(self, request: Request, pool: str) -> Response:
        data = body(request)
        _only(data, {"kind", "config", "enabled", "reason"})
        reason = _reason(data)
        try:
            b = bindings.set_provider(pool, data.get("kind"), data.get("config"), data.get("enabled", True), reason,
                                      Origin.from_request(request))
        except ConfigError as exc:
            raise ApiError(400, f"the provider settings are not usable: {exc}", exc.fields) from None
        except Pool.DoesNotExist:
            raise ApiError(404, f"no pool named {pool!r}") from None
        return Response(bindings.describe(b))

    @extend_schema(request=ReasonIn, responses={204: None, **errors(400, 401, 403, 404, 413, 415)})
    def delete(self, request: Request, pool: str) -> Response:
        data = body(request) if request.body else {}
        _only(data, {"reason"})
        reason = _reason(data)
        if not bindings.remove_provider(pool, reason, Origin.from_request(request)):
            raise ApiError(404, f"pool {pool!r} has no provider")
        return Response(status=204)


class ForecastOut(serializers.Serializer):
    pool = serializers.CharField()
    metric = serializers.CharField()
    forecast = serializers.ListField(child=serializers.DictField())
    actual = serializers.ListField(child=serializers.DictField())
    mape = serializers.FloatField(allow_null=True, help_text="mean absolute percentage error of past forecasts")


class Forecast(CSVExport, APIView):
    """Forecast versus actual demand of a pool over the last `hours` (default 6), with the forecast's MAPE."""

    permission_classes = [IsViewer]

    @extend_schema(parameters=[OpenApiParameter("hours", int)], responses={200: ForecastOut, **errors(400, 401, 403,
                                                                                                        404)})
    def get(self, request: Request, pool: str) -> Response:
        raw = request.query_params.get("hours") or "6"
        if not raw.isdigit() or not 1 <= int(raw) <= 168:
            raise ApiError(400, "hours must be a whole number from 1 to 168", {"hours": f"got {raw[:20]!r}"})
        p = Pool.objects.filter(name=pool).first()
        if p is None:
            raise ApiError(404, f"no pool named {pool!r}")
        metric = actions.pool_policy(p.name)["predictive"]["metric"]
        now = timezone.now()
        data = predict.accuracy(p, metric, now - timedelta(hours=int(raw)), now)
        return self.respond(request, {"pool": p.name, "metric": metric, **data}, f"switchyard-{p.name}-forecast")

    def to_csv(self, document: Any) -> str:
        """One row per minute: the actual demand and the forecast for it (empty where there is none)."""
        import csv
        import io

        rows: dict[str, list[Any]] = {}
        for point in document["actual"]:
            rows.setdefault(point["ts"], ["", ""])[0] = point["value"]
        for point in document["forecast"]:
            rows.setdefault(point["ts"], ["", ""])[1] = point["value"]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["time", f"actual_{document['metric']}", f"forecast_{document['metric']}"])
        for ts in sorted(rows):
            w.writerow([ts, *rows[ts]])
        return buf.getvalue()


class Timeline(CSVExport, APIView):
    """A pool's desired / actual / reporting nodes per minute against each scaling rule's metric (and threshold),
    the forecast for predictive pools and the scaling actions in the range. `format=csv`: one row per minute."""

    permission_classes = [IsViewer]

    @extend_schema(parameters=[OpenApiParameter("range", str, enum=list(timeline.RANGES),
                                                 description=f"default {timeline.DEFAULT_RANGE}"),
                               OpenApiParameter("format", str, enum=["json", "csv"])],
                   responses={200: OpenApiTypes.OBJECT, **errors(400, 401, 403, 404)})
    def get(self, request: Request, pool: str) -> Response:
        try:
            rng = timeline.parse_range(request.query_params.get("range"))
        except timeline.RangeError as exc:
            raise ApiError(400, f"range: {exc}", {"range": str(exc)}) from None
        p = Pool.objects.filter(name=pool).first()
        if p is None:
            raise ApiError(404, f"no pool named {pool[:63]!r}")
        return self.respond(request, timeline.timeline(p, rng, timezone.now()), f"switchyard-{p.name}-scaling-{rng.name}")

    def to_csv(self, document: Any) -> str:
        return timeline.to_csv(document)


class PowerOut(serializers.Serializer):
    pool = serializers.CharField()
    mode = serializers.CharField(help_text="uncapped, cap, cap_pct or off_peak")
    cap_w = serializers.FloatField(allow_null=True)
    pct = serializers.FloatField(allow_null=True)
    describe = serializers.CharField(help_text="the pool's power policy in words, now")
    desired_w = serializers.DictField(allow_null=True, help_text="lowest and highest cap asked of the pool's GPUs")
    nodes = serializers.IntegerField()
    gpus = serializers.IntegerField(allow_null=True)
    converged = serializers.IntegerField(allow_null=True, help_text="GPUs whose reported limit matches the cap")
    nodes_not_converged = serializers.ListField(child=serializers.CharField())
    mean_power_w = serializers.FloatField(allow_null=True)
    energy_per_token_j = serializers.FloatField(allow_null=True, help_text="joules per generated token")
    energy_window = serializers.CharField(allow_null=True, help_text="the window energy per token was computed over "
                                          "(the last hour, else the last 15 minutes); null with no tokens or power")


class PowerSummary(APIView):
    """Per pool: power mode, desired cap, GPUs converged, mean power and energy per generated token."""

    permission_classes = [IsViewer]

    @extend_schema(responses={200: PowerOut(many=True), **errors(401, 403)})
    def get(self, request: Request) -> Response:
        from control.controller import power

        return Response(power.power_summary())
