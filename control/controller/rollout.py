"""Rolling a pool's deployment revision out, batch by batch, and reverting one.

When the active `deployment` revision gives a pool an entry other than the one its last rollout applied, the
controller starts a rollout: the pool's instances in batches of `strategy.max_unavailable` (at least 1). Each batch
moves drain → draining → restarting:

* drain: the batch's nodes are drained (the gateways stop sending them requests), audited per node;
* draining: wait until their in-flight work is done (running + waiting in their latest sample taken after the
  drain, plus what the gateways still have in flight there), or `strategy.drain_timeout_s`;
* restarting: the provider restarts them with the new configuration; once every one serves again (and reports the
  revision), they are uncordoned and the next batch starts. A node that fails, or does not serve within
  BOOT_TIMEOUT_S, fails the rollout: it stops where it is (later batches keep the previous configuration), with
  an audit event, a `scaling` webhook event and an alert.

Every step is a compare-and-set on the row (safe to rerun after a crash), audited and sent to `scaling` webhook
receivers (payload kind "deployment"). `revert` re-applies the previous revision as a new policy revision (a
rollback, audited as one) and rolls that out.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from control.controller import observe
from control.controller.models import PoolProvider, Rollout
from control.controller.notify import raise_alert
from control.nodes import service as nodes
from control.policy import schemas
from control.policy import service as policies
from control.providers.base import Provider, ProviderError
from control.webhooks import events
from core.audit.context import Origin
from core.audit.record import record
from dashboard.fleet.models import Node, Pool

log = logging.getLogger(__name__)

CONTROLLER = "controller"
BOOT_TIMEOUT_S = 900  # a restarted node that does not serve within this fails the rollout


class RolloutError(Exception):
    def __init__(self, message: str, status: int = 400, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields or {}


def _payload(r: Rollout, summary: str, severity: str = "info") -> dict[str, Any]:
    return {
        "kind": "deployment", "action": "rollout", "pool": r.pool.name, "id": r.pk, "revision": r.revision_id,
        "version": r.revision.version, "state": r.state, "step": r.step, "batch": r.batch,
        "batches": len(r.batches), "actor": r.actor, "severity": severity, "summary": summary,
        "description": r.reason, "error": r.error,
        "url": f"{settings.EXTERNAL_URL.rstrip('/')}/scaling/pools/{r.pool.name}/",
    }


def _audit(r: Rollout, action: str, reason: str, origin: Origin | None = None, **details: Any) -> None:
    record(origin or Origin.system(CONTROLLER), f"deployment.{action}", f"pool:{r.pool.name}", reason,
           before={"revision": r.previous_id}, after={"revision": r.revision_id},
           details={"rollout": r.pk, "batch": r.batch, **details})


def active_entry(pool: str) -> tuple[Any, dict[str, Any] | None]:
    """(the active deployment revision, the pool's entry in it or None)."""
    rev = policies.active("deployment")
    doc = schemas.validate("deployment", rev.document)
    return rev, doc["pools"].get(pool)


def batches_for(instances: list[str], size: int) -> list[list[str]]:
    size = max(1, size)
    ordered = sorted(instances)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def start(pool: Pool, provider: Provider, origin: Origin, reason: str, *, reverts: Rollout | None = None,
          now: datetime | None = None) -> Rollout | None:
    """A rollout of the active deployment revision's entry for `pool`; None when one is running already."""
    now = now or timezone.now()
    rev, entry = active_entry(pool.name)
    if entry is None:
        raise RolloutError(f"the active deployment policy (v{rev.version}) has no entry for pool {pool.name!r}",
                           status=409)
    last = Rollout.objects.filter(pool=pool).exclude(revision=rev).order_by("-created").first()
    names = [i.node for i in provider.list_instances()]
    binding = PoolProvider.objects.filter(pool=pool).first()
    try:
        with transaction.atomic():
            r = Rollout.objects.create(
                pool=pool, revision=rev, previous=last.revision if last else rev.parent, entry=entry,
                # A provider that rolls out itself gets the whole pool as one batch: its own update goes by the
                # entry's max_surge / max_unavailable.
                batches=[sorted(names)] if provider.rolls_out_itself else
                batches_for(names, entry["strategy"]["max_unavailable"]), provider=binding.kind if binding
                else "", actor=origin.actor, reason=reason, reverts=reverts, created=now, step_started=now)
            _audit(r, "rollout", reason, origin, batches=r.batches, **({"reverts": reverts.pk} if reverts else {}))
            events.emit("scaling", _payload(r, f"{pool.name}: rolling out deployment v{rev.version} in "
                                               f"{len(r.batches)} batch(es)"))
    except IntegrityError:
        return None
    return r


def _claim(r: Rollout, expected: tuple[str, str], **changes: Any) -> bool:
    """Compare-and-set on (state, step, batch): another worker may have moved the rollout on."""
    n = Rollout.objects.filter(pk=r.pk, state=expected[0], step=expected[1], batch=r.batch).update(**changes)
    if n:
        for k, v in changes.items():
            setattr(r, k, v)
    return bool(n)


def advance(r: Rollout, provider: Provider, now: datetime | None = None) -> None:
    """Take the next step(s) of a running rollout; returns when it waits or is over."""
    now = now or timezone.now()
    try:
        for _ in range(3 * max(1, len(r.batches)) + 3):
            if r.state != Rollout.State.RUNNING:
                return
            if r.batch >= len(r.batches):
                _finish(r, now)
                return
            before = (r.step, r.batch)
            if provider.rolls_out_itself:
                {Rollout.Step.DRAIN: _provider_apply, Rollout.Step.RESTARTING: _provider_wait}[r.step](
                    r, provider, now)
            else:
                {Rollout.Step.DRAIN: _drain, Rollout.Step.DRAINING: _check_drain,
                 Rollout.Step.RESTARTING: _check_restart}[r.step](r, provider, now)
            if (r.step, r.batch) == before:
                return
    except ProviderError as exc:
        if exc.permanent:
            _fail(r, f"the provider refused: {exc.message}", now)
        else:  # kept where it is: the next tick tries the step again
            Rollout.objects.filter(pk=r.pk).update(error=exc.message[:2000])
            log.warning("rollout #%s: %s (will retry)", r.pk, exc.message)


def _batch(r: Rollout) -> list[str]:
    return list(r.batches[r.batch])


def _drain(r: Rollout, provider: Provider, now: datetime) -> None:
    deadline = now + timedelta(seconds=r.entry["strategy"]["drain_timeout_s"])
    if not _claim(r, (r.state, r.step), step=Rollout.Step.DRAINING, step_started=now, step_deadline=deadline):
        return
    origin = Origin.system(CONTROLLER)
    why = f"rollout #{r.pk} of deployment v{r.revision.version} to pool {r.pool.name}, batch {r.batch + 1}"
    with transaction.atomic():
        for name in _batch(r):
            try:
                nodes.apply(name, "drain", why, origin)
            except Node.DoesNotExist:
                pass
        _audit(r, "batch.drain", why, nodes=_batch(r))
        events.emit("scaling", _payload(r, f"{r.pool.name}: rollout #{r.pk} batch {r.batch + 1}/"
                                           f"{len(r.batches)} draining {', '.join(_batch(r))}"))


def _check_drain(r: Rollout, provider: Provider, now: datetime) -> None:
    started = r.step_started or r.created
    reporting = observe.latest_by_pool(r.pool.name, now)
    in_flight = observe.gateway_in_flight()
    waiting = []
    for name in _batch(r):
        work = observe.node_work(name, reporting.get(name), in_flight, since=started if name in reporting else None)
        if work is None or work > 0:
            waiting.append(f"{name} ({'no sample since the drain' if work is None else f'{work} in flight'})")
    if waiting and r.step_deadline and now < r.step_deadline:
        return
    listed = {i.node: i.id for i in provider.list_instances()}
    ids = [listed[n] for n in _batch(r) if n in listed]
    note = "" if not waiting else f"drain timeout passed with work left on {', '.join(waiting)}"
    if not _claim(r, (r.state, r.step), step=Rollout.Step.RESTARTING, step_started=now,
                  step_deadline=now + timedelta(seconds=BOOT_TIMEOUT_S), error=note):
        return
    request_id = provider.restart_instances(ids, r.entry, r.revision_id) if ids else "nothing to restart"
    with transaction.atomic():
        Rollout.objects.filter(pk=r.pk).update(provider_request_id=request_id[:200])
        _audit(r, "batch.restart", f"rollout #{r.pk}: restarting {', '.join(_batch(r))}" + (f"; {note}" if note
                                                                                               else ""),
               nodes=_batch(r), request_id=request_id)
        events.emit("scaling", _payload(r, f"{r.pool.name}: rollout #{r.pk} batch {r.batch + 1}/{len(r.batches)} "
                                           f"restarting with deployment v{r.revision.version}"))


def _check_restart(r: Rollout, provider: Provider, now: datetime) -> None:
    states = {i.node: i.state for i in provider.list_instances()}
    batch = _batch(r)
    failed = [n for n in batch if states.get(n) in provider.failed_states]
    gone = [n for n in batch if n not in states]
    if failed or (r.step_deadline and now >= r.step_deadline):
        slow = [n for n in batch if states.get(n) not in provider.serving_states]
        what = f"failed: {', '.join(failed)}" if failed else \
            f"not serving {BOOT_TIMEOUT_S} s after the restart: {', '.join(slow)}"
        _fail(r, f"batch {r.batch + 1}/{len(r.batches)} {what}", now)
        return
    if any(states.get(n) not in provider.serving_states for n in batch if n not in gone):
        return
    origin = Origin.system(CONTROLLER)
    with transaction.atomic():
        if not _claim(r, (r.state, r.step), step=Rollout.Step.DRAIN, batch=r.batch + 1, step_started=now,
                      step_deadline=None, done_nodes=[*r.done_nodes, *batch]):
            return
        for name in batch:
            try:
                nodes.apply(name, "uncordon", f"rollout #{r.pk}: serving deployment v{r.revision.version}", origin)
            except Node.DoesNotExist:
                pass
        _audit(r, "batch.done", f"rollout #{r.pk}: {', '.join(batch)} serve deployment v{r.revision.version}",
               nodes=batch)
        events.emit("scaling", _payload(r, f"{r.pool.name}: rollout #{r.pk} batch {r.batch}/{len(r.batches)} "
                                           "serving"))


def _provider_apply(r: Rollout, provider: Provider, now: datetime) -> None:
    """A provider that rolls out itself: render the entry into its template and start its update (the pods,
    instances or VMs it replaces are drained by its own termination: see docs/deployments.md)."""
    if not _claim(r, (r.state, r.step), step=Rollout.Step.RESTARTING, step_started=now,
                  step_deadline=now + timedelta(seconds=BOOT_TIMEOUT_S + r.entry["strategy"]["drain_timeout_s"]
                                                * max(1, len(r.batches[0])))):
        return
    request_id = provider.apply_deployment(r.entry, r.revision_id)
    with transaction.atomic():
        Rollout.objects.filter(pk=r.pk).update(provider_request_id=request_id[:200])
        r.provider_request_id = request_id[:200]
        _audit(r, "apply", f"rollout #{r.pk}: {r.provider} updates pool {r.pool.name} to deployment "
                           f"v{r.revision.version} (max_surge {r.entry['strategy']['max_surge']}, max_unavailable "
                           f"{r.entry['strategy']['max_unavailable']})", request_id=request_id)
        events.emit("scaling", _payload(r, f"{r.pool.name}: {r.provider} rolling update to deployment "
                                           f"v{r.revision.version} started"))


def _provider_wait(r: Rollout, provider: Provider, now: datetime) -> None:
    st = provider.deployment_status(r.provider_request_id)
    if st.progress != r.progress:
        Rollout.objects.filter(pk=r.pk).update(progress=st.progress[:200])
        r.progress = st.progress[:200]
    if st.failed:
        _fail(r, st.failed, now)
        return
    if not st.done:
        if r.step_deadline and now >= r.step_deadline:
            _fail(r, f"the {r.provider} rollout did not finish in time ({st.progress})", now)
        return
    with transaction.atomic():
        if _claim(r, (r.state, r.step), step=Rollout.Step.DRAIN, batch=r.batch + 1, step_deadline=None,
                  done_nodes=list(r.batches[r.batch])):
            _audit(r, "batch.done", f"rollout #{r.pk}: {r.provider} finished its update ({st.progress})")


def _finish(r: Rollout, now: datetime) -> None:
    with transaction.atomic():
        n = Rollout.objects.filter(pk=r.pk, state=Rollout.State.RUNNING).update(state=Rollout.State.DONE,
                                                                                finished=now)
        if not n:
            return
        r.state, r.finished = Rollout.State.DONE, now
        _audit(r, "rollout.done", f"rollout #{r.pk}: pool {r.pool.name} runs deployment v{r.revision.version}")
        events.emit("scaling", _payload(r, f"{r.pool.name}: deployment v{r.revision.version} rolled out"))


def _fail(r: Rollout, message: str, now: datetime) -> None:
    with transaction.atomic():
        n = Rollout.objects.filter(pk=r.pk, state=Rollout.State.RUNNING).update(
            state=Rollout.State.FAILED, finished=now, error=message[:2000])
        if not n:
            return
        r.state, r.finished, r.error = Rollout.State.FAILED, now, message
        _audit(r, "rollout.failed", f"rollout #{r.pk} stopped: {message}", done=r.done_nodes)
        events.emit("scaling", _payload(r, f"{r.pool.name}: rollout #{r.pk} failed at batch {r.batch + 1}",
                                        "critical"))
        raise_alert("rollout_failed", {"pool": r.pool.name, "rollout": str(r.pk)},
                    f"{r.pool.name}: rollout #{r.pk} of deployment v{r.revision.version} failed", message,
                    severity="critical")
    log.warning("rollout #%s failed: %s", r.pk, message)


# --- the loop and the operator's actions ------------------------------------------------------------------------


def reconcile(now: datetime | None = None, provider_for: Any = None) -> dict[str, Any]:
    """Start a rollout for each pool whose deployment entry changed since its last rollout, and advance the
    running ones. Called by the controller's tick."""
    from control.controller.actions import provider_for as default_provider_for

    now = now or timezone.now()
    build = provider_for or default_provider_for
    rev = policies.active("deployment")
    doc = schemas.validate("deployment", rev.document)
    out: dict[str, Any] = {"started": [], "advanced": []}
    for binding in PoolProvider.objects.select_related("pool").filter(enabled=True):
        pool = binding.pool
        running = Rollout.objects.filter(pool=pool, state=Rollout.State.RUNNING).first()
        try:
            provider = build(binding)
            if running is not None:
                advance(running, provider, now)
                out["advanced"].append(running.pk)
                continue
            entry = doc["pools"].get(pool.name)
            if entry is None:
                continue
            last = Rollout.objects.filter(pool=pool).order_by("-created").first()
            if last is not None and last.entry == entry:
                # Rolled out already (or failed: a failed rollout stays stopped until an operator reverts or
                # changes the entry). A revision that changed another pool only lands here too.
                continue
            r = start(pool, provider, Origin.system(CONTROLLER),
                      f"deployment v{rev.version} changes pool {pool.name}", now=now)
            if r is not None:
                out["started"].append(r.pk)
                advance(r, provider, now)
        except (ProviderError, RolloutError) as exc:
            log.warning("rollout of pool %s: %s", pool.name, exc)
    return out


def revert(rollout_id: int, reason: Any, origin: Origin) -> Rollout:
    """Re-apply the revision that was active before rollout `rollout_id` (a policy rollback, audited as one) and
    roll it out to the pool at once."""
    from control.controller.actions import ActionError, provider_of

    try:
        reason = policies.check_reason(reason)
    except policies.PolicyError as exc:
        raise RolloutError(exc.message, fields=exc.fields) from None
    old = Rollout.objects.select_related("pool", "revision").filter(pk=rollout_id).first()
    if old is None:
        raise RolloutError(f"no rollout {rollout_id}", status=404)
    if old.state == Rollout.State.RUNNING:
        raise RolloutError(f"rollout #{old.pk} is still running; wait for it to finish or fail", status=409)
    if old.previous is None:
        raise RolloutError(f"rollout #{old.pk} has no previous deployment revision to go back to", status=409)
    previous = schemas.validate("deployment", old.previous.document)["pools"].get(old.pool.name)
    if previous is None:
        # Before that rollout the pool ran its provider's own template: there is no configuration to re-apply.
        raise RolloutError(f"deployment v{old.previous.version} (before rollout #{old.pk}) has no entry for pool "
                           f"{old.pool.name!r}: there is nothing to roll back to; edit the deployment policy "
                           "instead", status=409)
    try:
        _, provider = provider_of(old.pool)
    except ActionError as exc:
        raise RolloutError(str(exc), status=exc.status) from None
    try:
        policies.rollback("deployment", old.previous_id, reason, origin)
    except policies.PolicyError as exc:
        raise RolloutError(exc.message, status=exc.status, fields=exc.fields) from None
    r = start(old.pool, provider, origin, reason, reverts=old)
    if r is None:
        raise RolloutError(f"pool {old.pool.name!r} has a rollout running already", status=409)
    return r
