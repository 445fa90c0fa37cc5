"""Scaling actions: proposing one (controller, operator or revert) and driving it to done or failed.

An action moves pending → [draining →] running → done | failed. Every step is a compare-and-set on the row's state,
so two workers never both take one step, and every step is safe to rerun after a crash:

- `running` always starts by asking the provider its current desired size; when that already equals the target
  (the previous run's call went through and the process died before writing `done`), the action is finished
  without a second call;
- a scale-in removes only instances still listed, so a rerun never removes a second node;
- a provider error keeps the action open with its message and a retry time (backoff), and fails it for good when
  the error is permanent or the attempts run out; both raise an `alert` webhook event.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from control.canary import scaling as canary_scaling
from control.controller import observe
from control.controller.models import OPEN_STATES, PoolProvider, ScalingAction
from control.controller.notify import raise_alert
from control.nodes import service as nodes
from control.policy import schemas
from control.policy import service as policies
from control.providers.base import Provider, ProviderError
from control.providers.registry import get as get_provider
from control.webhooks import events
from core.audit.context import Origin
from core.audit.record import record
from dashboard.fleet.models import Node, Pool

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF_BASE_S = 30.0
BACKOFF_MAX_S = 600.0
CONTROLLER = "controller"


class ActionError(Exception):
    """An operator's request that cannot be done as asked; the message says why and what to do."""

    def __init__(self, message: str, status: int = 400, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields or {}


@dataclass
class Proposal:
    kind: str  # ScalingAction.Kind
    from_size: int
    to_size: int
    rule: str
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def scaling_document() -> dict[str, Any]:
    """The active scaling policy, validated (defaults filled in)."""
    return schemas.validate("scaling", policies.active("scaling").document)


def pool_policy(pool: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scaling entry the controller applies to the pool now: the candidate's while a pool-scoped scaling canary
    tries it on this pool (control.canary.scaling), else the pool's own entry, else the default, of `document` (the
    active policy, when the caller already has it) or of the active policy."""
    trying = canary_scaling.trial(pool)
    if trying is not None:
        return trying
    return schemas.for_pool(document or scaling_document(), pool)


_built: dict[str, Provider] = {}


def provider_for(binding: PoolProvider) -> Provider:
    """The pool's provider, built once per process and config: building one (cloud SDK clients) costs up to
    ~100 ms, and the loop asks every 15 s."""
    key = f"{binding.kind}:{json.dumps(binding.config, sort_keys=True)}"
    provider = _built.get(key)
    if provider is None:
        if len(_built) > 256:
            _built.clear()
        provider = _built[key] = get_provider(binding.kind, binding.config)
    return provider


def provider_of(pool: Pool) -> tuple[PoolProvider, Provider]:
    try:
        binding = PoolProvider.objects.get(pool=pool)
    except PoolProvider.DoesNotExist:
        raise ActionError(f"pool {pool.name!r} has no provider; an admin sets one with PUT "
                          f"/api/v1/providers/{pool.name}/ or manage.py setprovider", status=409) from None
    return binding, provider_for(binding)


def backoff_s(attempts: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))


def _event_payload(action: ScalingAction, summary: str, severity: str = "info") -> dict[str, Any]:
    return {
        "kind": "scaling", "action": action.kind, "pool": action.pool.name, "id": action.pk,
        "from": action.from_size, "to": action.to_size, "rule": action.rule, "state": action.state,
        "actor": action.actor, "severity": severity, "summary": summary, "description": action.reason,
        "error": action.error, "url": f"{settings.EXTERNAL_URL.rstrip('/')}/scaling/",
    }


def propose(pool: Pool, p: Proposal, origin: Origin, *, reverts: ScalingAction | None = None,
            now: datetime | None = None) -> ScalingAction | None:
    """Store the decision as a pending action with its audit event; None when the pool already has an open
    action (another controller or an operator got there first: one decision, one action)."""
    now = now or timezone.now()
    binding = PoolProvider.objects.filter(pool=pool).first()
    try:
        with transaction.atomic():
            action = ScalingAction.objects.create(
                pool=pool, kind=p.kind, from_size=p.from_size, to_size=p.to_size, rule=p.rule[:100],
                metrics=p.metrics, reason=p.reason, provider=binding.kind if binding else "", actor=origin.actor,
                request_id=origin.request_id, reverts=reverts, created=now)
            record(origin, f"scaling.{p.kind}", f"pool:{pool.name}", p.reason, before={"size": p.from_size},
                   after={"size": p.to_size}, details={"action": action.pk, "rule": p.rule, "metrics": p.metrics,
                                                       **({"reverts": reverts.pk} if reverts else {})})
            events.emit("scaling", _event_payload(
                action, f"{pool.name}: {p.kind.replace('_', '-')} {p.from_size} → {p.to_size} ({p.rule})"))
    except IntegrityError:
        return None
    return action


def open_action(pool: Pool) -> ScalingAction | None:
    return ScalingAction.objects.filter(pool=pool, state__in=OPEN_STATES).first()


def _reason(reason: Any) -> str:
    try:
        return policies.check_reason(reason)
    except policies.PolicyError as exc:
        raise ActionError(str(exc), fields=exc.fields) from None


def scale_by_hand(pool_name: str, size: Any, reason: Any, origin: Origin) -> ScalingAction:
    """An operator's scale to `size`, within the policy's min/max and after any open action."""
    reason = _reason(reason)
    if isinstance(size, bool) or not isinstance(size, int):
        raise ActionError("size must be a whole number of nodes", fields={"size": f"{size!r} is not an integer"})
    try:
        pool = Pool.objects.get(name=pool_name)
    except Pool.DoesNotExist:
        raise ActionError(f"no pool named {pool_name!r}", status=404) from None
    policy = pool_policy(pool.name)
    if not policy["min_nodes"] <= size <= policy["max_nodes"]:
        raise ActionError(
            f"size {size} is outside the pool's scaling policy ({policy['min_nodes']}..{policy['max_nodes']}); "
            "change min_nodes/max_nodes in the scaling policy first",
            fields={"size": f"must be between {policy['min_nodes']} and {policy['max_nodes']}"})
    _, provider = provider_of(pool)
    current = _current_size(provider)
    return _propose_or_conflict(pool, size, current, "manual", reason, origin)


def revert(action_id: int, reason: Any, origin: Origin) -> ScalingAction:
    """Scale the pool back to the size it had before a finished action."""
    reason = _reason(reason)
    try:
        old = ScalingAction.objects.select_related("pool").get(pk=action_id)
    except ScalingAction.DoesNotExist:
        raise ActionError(f"no scaling action {action_id}", status=404) from None
    if old.state != ScalingAction.State.DONE:
        raise ActionError(f"action #{old.pk} is {old.state}; only a done action can be reverted", status=409)
    policy = pool_policy(old.pool.name)
    target = max(policy["min_nodes"], min(policy["max_nodes"], old.from_size))
    _, provider = provider_of(old.pool)
    current = _current_size(provider)
    return _propose_or_conflict(old.pool, target, current, f"revert #{old.pk}", reason, origin, reverts=old)


def _current_size(provider: Provider) -> int:
    try:
        return provider.current_size().desired
    except ProviderError as exc:
        raise ActionError(f"the provider did not answer: {exc}; try again later", status=502) from None


def _propose_or_conflict(pool: Pool, size: int, current: int, rule: str, reason: str, origin: Origin,
                         reverts: ScalingAction | None = None) -> ScalingAction:
    if size == current:
        raise ActionError(f"pool {pool.name!r} already has {current} node(s)", status=409)
    kind = ScalingAction.Kind.SCALE_OUT if size > current else ScalingAction.Kind.SCALE_IN
    action = propose(pool, Proposal(kind, current, size, rule, reason, {"requested": size}), origin,
                     reverts=reverts)
    if action is None:
        busy = open_action(pool)
        raise ActionError(f"pool {pool.name!r} has an action in progress (#{busy.pk if busy else '?'}, "
                          f"{busy.state if busy else 'open'}); wait for it or let it fail first", status=409)
    return action


# --- driving an action ----------------------------------------------------------------------------------------


def _claim(action: ScalingAction, expected: str, **changes: Any) -> bool:
    """Compare-and-set: move the row on only if it is still in `expected` (another worker may have moved it)."""
    n = ScalingAction.objects.filter(pk=action.pk, state=expected).update(**changes)
    if n:
        for k, v in changes.items():
            setattr(action, k, v)
    return bool(n)


def advance(action: ScalingAction, provider: Provider, now: datetime | None = None) -> None:
    """Take the next step(s) of an open action; returns when it waits (drain, backoff) or is finished."""
    now = now or timezone.now()
    if action.next_attempt_at and action.next_attempt_at > now:
        return
    try:
        if action.state == ScalingAction.State.PENDING:
            _start(action, provider, now)
        if action.state == ScalingAction.State.DRAINING:
            _check_drain(action, now)
        if action.state == ScalingAction.State.RUNNING:
            _run(action, provider, now)
    except ProviderError as exc:
        _failed_attempt(action, exc, now)


def _start(action: ScalingAction, provider: Provider, now: datetime) -> None:
    if action.kind == ScalingAction.Kind.SCALE_OUT:
        _claim(action, "pending", state="running", started=now)
        return
    chosen = choose_nodes(action.pool, action.from_size - action.to_size, provider, now)
    if not chosen:
        if observe.latest_by_pool(action.pool.name, now):
            # Nodes are serving, but none of them is an instance the provider names: the provider would pick one
            # blind, maybe one with requests in flight. Never remove a node that may be serving without a drain.
            raise ProviderError(
                f"none of the provider's instances is a node of pool {action.pool.name!r} (by name), so none can "
                "be drained before removal; make the instances report as Switchyard nodes under the names the "
                "provider lists (aws: tag switchyard:node=<node name>; kubernetes: the pod name) and retry",
                permanent=True)
        # Nothing in the pool reports: there is no work to protect, so the provider may choose.
        _claim(action, "pending", state="running", started=now, nodes=[])
        return
    policy = pool_policy(action.pool.name)
    deadline = now + timedelta(seconds=policy["scale_down"]["drain_timeout_s"])
    if not _claim(action, "pending", state="draining", started=now, nodes=chosen, drain_deadline=deadline):
        return
    origin = Origin.system(CONTROLLER)
    for name in chosen:
        try:
            nodes.apply(name, "drain", f"scale-in #{action.pk} of pool {action.pool.name}", origin)
        except Node.DoesNotExist:
            pass


def choose_nodes(pool: Pool, count: int, provider: Provider, now: datetime) -> list[str]:
    """The nodes to remove: only nodes the provider lists as its instances; silent ones first, then the least
    busy, then the newest (the oldest have the warmest caches)."""
    if count <= 0:
        return []
    listed = {i.node for i in provider.list_instances()}
    latest = observe.latest_by_pool(pool.name, now)
    in_flight = observe.gateway_in_flight()
    candidates = []
    for node in Node.objects.filter(pool=pool).exclude(state=Node.State.REMOVED):
        if node.name not in listed:
            continue
        snap = latest.get(node.name)
        busy = observe.node_work(node.name, snap, in_flight) or 0
        candidates.append((snap is not None, busy, -node.created.timestamp(), node.name))
    candidates.sort()
    return [c[3] for c in candidates[:count]]


def _check_drain(action: ScalingAction, now: datetime) -> None:
    started = action.started or action.created
    waiting = []
    reporting = observe.latest_by_pool(action.pool.name, now)
    in_flight = observe.gateway_in_flight()
    for name in action.nodes:
        # A silent node's own counters are unknown; what the gateways still have in flight there is not.
        work = observe.node_work(name, reporting.get(name), in_flight, since=started if name in reporting else None)
        if work is None or work > 0:
            waiting.append(f"{name} ({'no sample since the drain' if work is None else f'{work} in flight'})")
    if waiting and action.drain_deadline and now < action.drain_deadline:
        return
    note = "" if not waiting else f"drain deadline passed with work left on {', '.join(waiting)}"
    _claim(action, "draining", state="running", error=note)


def _run(action: ScalingAction, provider: Provider, now: datetime) -> None:
    """The provider step; idempotent (see the module docstring)."""
    ScalingAction.objects.filter(pk=action.pk).update(attempts=action.attempts + 1)
    action.attempts += 1
    if action.nodes:
        listed = {i.node: i.id for i in provider.list_instances()}
        request_ids = []
        for name in action.nodes:
            if name in listed:
                request_ids.append(provider.remove_instance(listed[name]))
            _mark_removed(action, name)
        _finish(action, ", ".join(request_ids) or "already removed", now)
        return
    size = provider.current_size()
    if size.desired == action.to_size:
        _finish(action, action.provider_request_id or "reconciled: the provider already had the target size", now)
        return
    request_id = provider.set_desired_size(action.to_size)
    ScalingAction.objects.filter(pk=action.pk).update(provider_request_id=request_id[:200])
    _finish(action, request_id, now)


def _mark_removed(action: ScalingAction, name: str) -> None:
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(name=name).first()
        if node is None or node.state == Node.State.REMOVED:
            return
        before = node.state
        node.state = Node.State.REMOVED
        node.save(update_fields=["state"])
        record(Origin.system(CONTROLLER), "node.remove", f"node:{name}",
               f"scale-in #{action.pk} of pool {action.pool.name}: instance removed",
               before={"state": before}, after={"state": "removed"}, details={"action": action.pk})
        transaction.on_commit(lambda: nodes._announce(name))


def _finish(action: ScalingAction, request_id: str, now: datetime) -> None:
    with transaction.atomic():
        if not _claim(action, "running", state="done", finished=now, provider_request_id=request_id[:200],
                      next_attempt_at=None):
            return
        events.emit("scaling", _event_payload(
            action, f"{action.pool.name}: now {action.to_size} node(s) (#{action.pk} done)"))


def _failed_attempt(action: ScalingAction, exc: ProviderError, now: datetime) -> None:
    message = str(exc)[:2000]
    final = exc.permanent or action.attempts >= MAX_ATTEMPTS
    with transaction.atomic():
        if final:
            if not _claim(action, action.state, state="failed", finished=now, error=message, next_attempt_at=None):
                return
            record(Origin.system(CONTROLLER), "scaling.failed", f"pool:{action.pool.name}",
                   f"action #{action.pk} failed after {action.attempts} attempt(s): {message}",
                   before={"size": action.from_size}, after={"size": action.from_size},
                   details={"action": action.pk, "permanent": exc.permanent})
        else:
            retry = now + timedelta(seconds=backoff_s(action.attempts or 1))
            ScalingAction.objects.filter(pk=action.pk).update(error=message, next_attempt_at=retry)
            action.error, action.next_attempt_at = message, retry
        if final or action.attempts <= 1:
            what = "failed" if final else f"attempt {action.attempts} failed, retrying with backoff"
            raise_alert("scaling_failed", {"pool": action.pool.name, "action": str(action.pk)},
                        f"{action.pool.name}: scaling #{action.pk} {what}", message,
                        severity="critical" if final else "warning")
    log.warning("scaling action #%s: %s (%s)", action.pk, message, "final" if final else "will retry")
