"""The autoscaling reconcile loop: for each pool with a provider, finish what is open, else decide and act.

Level-triggered: every tick compares what the policy wants of the pool (the autoscaler's decision on the observed
metrics) with what the provider has, and acts on the difference. Nothing depends on having seen the previous tick,
so a crashed or restarted controller picks up where the rows say it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.db import transaction
from django.utils import timezone

from control.controller import actions, autoscaler, observe
from control.controller.models import PoolProvider, Recommendation, ScalingAction
from control.providers.base import ProviderError
from core.audit.context import Origin
from core.audit.record import record
from dashboard.fleet.models import Node
from dashboard.metrics.latest import redis_client

log = logging.getLogger(__name__)

# The page reads pool sizes from here instead of calling providers on every view.
POOLS_KEY = "sy:ctl:pools"
FORECAST_KEY = "sy:ctl:forecast:{}"


@dataclass
class TickResult:
    pools: int = 0
    proposed: list[int] = field(default_factory=list)
    advanced: list[int] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    joined: list[str] = field(default_factory=list)


def tick(now: datetime | None = None) -> TickResult:
    now = now or timezone.now()
    result = TickResult()
    doc = actions.scaling_document()
    result.joined = rejoin_removed(now)
    for binding in PoolProvider.objects.select_related("pool").filter(enabled=True):
        result.pools += 1
        policy = actions.pool_policy(binding.pool.name, doc)  # the candidate's, where a scaling canary runs
        try:
            _pool_tick(binding, policy, now, result)
        except ProviderError as exc:
            result.errors[binding.pool.name] = str(exc)
            _publish(binding, None, policy, error=str(exc))
        except Exception as exc:  # one broken pool must not stop the others
            log.exception("autoscaling pool %s failed", binding.pool.name)
            result.errors[binding.pool.name] = f"{type(exc).__name__}: {exc}"
    return result


def _pool_tick(binding: PoolProvider, policy: dict[str, Any], now: datetime, result: TickResult) -> None:
    pool = binding.pool
    provider = actions.provider_for(binding)
    action = actions.open_action(pool)
    if action is not None:
        actions.advance(action, provider, now)
        result.advanced.append(action.pk)
        _publish(binding, provider.current_size(), policy, acting={
            "kind": "acting", "target": action.to_size, "rule": action.rule,
            "reason": f"carrying out #{action.pk} ({action.state}); no new decision until it is finished"})
        return
    size = provider.current_size()
    decision = decide(pool, policy, size.desired, now)
    _publish(binding, size, policy, decision=decision)
    if decision.kind == "none":
        return
    kind = ScalingAction.Kind.SCALE_OUT if decision.kind == "scale_out" else ScalingAction.Kind.SCALE_IN
    proposal = actions.Proposal(kind, size.desired, decision.target, decision.rule, decision.reason,
                                {k: v for k, v in decision.metrics.items()})
    created = actions.propose(pool, proposal, Origin.system(actions.CONTROLLER), now=now)
    if created is not None:
        result.proposed.append(created.pk)
        actions.advance(created, provider, now)
        if created.state == ScalingAction.State.DONE:
            _publish(binding, provider.current_size(), policy, decision=decision)


def decide(pool: Any, policy: dict[str, Any], current: int, now: datetime) -> autoscaler.Decision:
    """The autoscaler's decision on this pool's observed metrics, cooldowns, stored recommendations and forecast."""
    cooldown = max([r["cooldown_s"] for r in policy["rules"]] or [0])
    fired: dict[str, float] = {}
    recent = (ScalingAction.objects.filter(pool=pool, kind=ScalingAction.Kind.SCALE_OUT,
                                           created__gte=now - timedelta(seconds=cooldown))
              .exclude(state__in=("failed", "cancelled")).values_list("rule", "created"))
    for rule, created in recent:
        fired[rule] = max(fired.get(rule, 0.0), created.timestamp())
    window = policy["scale_down"]["stabilization_window_s"]
    recs = [(r.timestamp(), s) for r, s in Recommendation.objects.filter(
        pool=pool, ts__gte=now - timedelta(seconds=window + 60), ts__lte=now).values_list("ts", "size")]
    peak, per_node = forecast_inputs(pool.name, policy, now)

    def observed(metric: str, window_s: int) -> float | None:
        return observe.pool_metric(pool.id, metric, window_s, now)

    decision = autoscaler.decide(policy, current, observed, now=now.timestamp(), last_fired=fired,
                                 recommendations=recs, forecast_peak=peak, per_node=per_node)
    Recommendation.objects.create(pool=pool, ts=now, size=decision.recommendation)
    Recommendation.objects.filter(pool=pool, ts__lt=now - timedelta(seconds=max(window, 60) * 2 + 60)).delete()
    return decision


def forecast_inputs(pool: str, policy: dict[str, Any], now: datetime) -> tuple[float | None, float | None]:
    """(highest forecast demand over the lead time, demand per node) from the last forecast run, when fresh."""
    if not policy["predictive"]["enabled"]:
        return None, None
    raw = redis_client().get(FORECAST_KEY.format(pool))
    if not raw:
        return None, None
    doc = orjson.loads(raw)
    lead = autoscaler.lead_minutes(policy)
    start, step = float(doc["start"]), float(doc["step_s"])
    end = now.timestamp() + lead * 60
    ahead = [v for i, v in enumerate(doc["values"]) if now.timestamp() - step <= start + i * step <= end]
    per_node = policy["predictive"]["per_node"] or doc.get("per_node")
    return (max(ahead) if ahead else None), per_node


def _publish(binding: PoolProvider, size: Any, policy: dict[str, Any], *, error: str = "",
             decision: autoscaler.Decision | None = None, acting: dict[str, Any] | None = None) -> None:
    """What the scaling page shows for the pool (provider sizes are not fetched per page view)."""
    doc = {
        "pool": binding.pool.name, "provider": binding.kind, "at": timezone.now().isoformat(),
        "desired": getattr(size, "desired", None), "actual": getattr(size, "actual", None),
        "min": policy["min_nodes"], "max": policy["max_nodes"], "error": error,
        "decision": acting if decision is None else {"kind": decision.kind, "target": decision.target,
                                                     "rule": decision.rule, "reason": decision.reason,
                                                     "metrics": decision.metrics},
    }
    try:
        redis_client().hset(POOLS_KEY, binding.pool.name, orjson.dumps(doc))
    except Exception as exc:  # noqa: BLE001 - the page is informational; the loop must go on
        log.warning("pool state not published: %s", exc)


def rejoin_removed(now: datetime) -> list[str]:
    """A removed node whose agent reports again (an instance came back under the same name) rejoins as active."""
    removed = set(Node.objects.filter(state=Node.State.REMOVED).values_list("name", flat=True))
    if not removed:
        return []
    joined = []
    fresh = {name: snap for name, snap in observe.all_latest_fresh(now).items() if name in removed}
    for name in fresh:
        with transaction.atomic():
            node = Node.objects.select_for_update().filter(name=name, state=Node.State.REMOVED).first()
            if node is None:
                continue
            # Only a sample taken after the removal counts: the last one before it may still be fresh.
            removed_at = (ScalingAction.objects.filter(nodes__contains=[name], state="done")
                          .order_by("-finished").values_list("finished", flat=True).first())
            ts = datetime.fromisoformat(fresh[name]["ts"])
            if removed_at is not None and ts <= removed_at:
                continue
            node.state = Node.State.ACTIVE
            node.save(update_fields=["state"])
            record(Origin.system(actions.CONTROLLER), "node.join", f"node:{name}",
                   "its agent reports again after the node was removed", before={"state": "removed"},
                   after={"state": "active"}, details={"pool": node.pool.name})
            joined.append(name)
    return joined
