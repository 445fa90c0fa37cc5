"""Starting a canary and ending it: every operation locks the kind's live canary, writes its audit event in the same
transaction, and tells the gateways (sy:policy) once it commits."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from control.canary import spec
from control.canary.models import AnalysisRun, Canary
from control.controller import notify
from control.controller.models import PoolProvider
from control.policy import schemas
from control.policy import service as policy
from control.policy.schemas import DocumentError, validate
from control.webhooks import events
from core.audit.context import Origin
from core.audit.record import record
from dashboard.metrics.latest import redis_client

log = logging.getLogger(__name__)
# scheduler: the gateways split traffic between two policies; scaling: one pool runs the candidate's rules.
KINDS = ("scheduler", "scaling")
ACTOR = "controller"
START_FIELDS = {"scheduler": {"revision", "steps", "analysis", "reason"},
                "scaling": {"revision", "pool", "duration_s", "steps", "analysis", "reason"}}


class CanaryError(policy.PolicyError):
    pass


class Conflict(CanaryError):
    status = 409


def _target(kind: str) -> str:
    return f"canary:{kind}"


def _announce(kind: str) -> None:
    def publish() -> None:
        try:
            redis_client().publish(policy.POLICY_CHANNEL, f"canary:{kind}")
        except Exception as exc:  # noqa: BLE001 - gateways poll every second anyway
            log.warning("canary change on %s not announced: %s", kind, exc)

    transaction.on_commit(publish)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise policy.UnknownKind(f"a canary can try a {' or '.join(KINDS)} revision, not {kind!r}")
    return kind


def current(kind: str) -> Canary | None:
    """The live canary of the kind, else the latest one that ended (None when there never was one)."""
    check_kind(kind)
    live = Canary.objects.filter(kind=kind, state__in=Canary.LIVE).first()
    return live or Canary.objects.filter(kind=kind).first()


def _live_locked(kind: str) -> Canary:
    c = Canary.objects.select_for_update().filter(kind=kind, state__in=Canary.LIVE).first()
    if c is None:
        raise Conflict(f"no {kind} canary is running", {"canary": "none running"})
    return c


def start(kind: str, data: Any, origin: Origin) -> Canary:
    """Validate the whole request before anything is written; 409 when the kind already has a live canary."""
    check_kind(kind)
    if not isinstance(data, dict):
        raise CanaryError("the body must be a JSON object", {"$": "expected an object"})
    unknown = sorted(set(data) - START_FIELDS[kind])
    if unknown:
        raise CanaryError(f"unknown field(s): {', '.join(unknown)}", {k: "unknown field" for k in unknown})
    fields: dict[str, str] = {}
    try:
        steps = spec.scaling_steps(data) if kind == "scaling" else spec.steps(data.get("steps"))
    except spec.SpecError as exc:
        fields.update(exc.fields)
    try:
        analysis = spec.analysis(data.get("analysis"), spec.SCALING_ANALYSIS if kind == "scaling" else None)
    except spec.SpecError as exc:
        fields.update(exc.fields)
    pool = ""
    if kind == "scaling":
        pool = data.get("pool")
        if pool is None:
            fields["pool"] = "This field is required."
        elif not isinstance(pool, str) or not pool.strip():
            fields["pool"] = "a pool name is required"
        elif not PoolProvider.objects.filter(pool__name=pool, enabled=True).exists():
            fields["pool"] = (f"no pool {pool!r} with an enabled provider: the controller scales only those, so a "
                              "canary there would try nothing")
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        fields["reason"] = "This field is required."
    elif "\x00" in reason:
        fields["reason"] = "NUL characters are not allowed."
    elif len(reason) > policy.MAX_REASON:
        fields["reason"] = f"at most {policy.MAX_REASON} characters"
    revision = data.get("revision")
    if revision is None:
        fields["revision"] = "This field is required."
    elif isinstance(revision, bool) or not isinstance(revision, int | str):
        fields["revision"] = "A valid integer is required."
    if fields:
        first = next(iter(fields))
        raise CanaryError(f"{first}: {fields[first]}", fields)
    with transaction.atomic():
        rev = policy.get_revision(kind, revision)
        stable = policy.active(kind)
        if rev.pk == stable.pk:
            raise Conflict(f"revision {rev.pk} is already the active {kind} revision; a canary tries another one",
                           {"revision": "already active"})
        try:
            candidate_doc = validate(kind, rev.document)
        except DocumentError as exc:
            raise CanaryError(f"revision {rev.pk} no longer validates: {exc}", {"revision": str(exc)}) from None
        if kind == "scaling" and (schemas.for_pool(candidate_doc, pool)
                                  == schemas.for_pool(validate(kind, stable.document), pool)):
            raise CanaryError(f"revision {rev.pk} has the same rules for pool {pool!r} as the active revision: a "
                              "canary there would try nothing", {"pool": "the candidate does not change this pool"})
        if Canary.objects.select_for_update().filter(kind=kind, state__in=Canary.LIVE).exists():
            raise Conflict(f"a {kind} canary is already running; promote or abort it first",
                           {"revision": "a canary is running"})
        try:
            with transaction.atomic():
                c = Canary.objects.create(kind=kind, pool=pool, revision=rev, stable=stable, steps=steps,
                                          analysis=analysis, weight=steps[0]["weight"], author=origin.actor,
                                          reason=reason.strip())
        except IntegrityError:  # another start won the race between the check and the insert
            raise Conflict(f"a {kind} canary is already running", {"revision": "a canary is running"}) from None
        record(origin, "canary.start", _target(kind), reason, before={"revision": stable.pk},
               after={"revision": rev.pk, "steps": steps, "analysis": analysis},
               details={"canary": c.pk, "revision": rev.pk, "version": rev.version, "stable": stable.pk,
                        **({"pool": pool} if pool else {})})
        _announce(kind)
    return c


def pause(kind: str, reason: Any, origin: Origin) -> Canary:
    check_kind(kind)
    reason = policy.check_reason(reason)
    with transaction.atomic():
        c = _switch(kind, Canary.State.PAUSED)
        record(origin, "canary.pause", _target(kind), reason, details=_where(c))
    return c


def resume(kind: str, reason: Any, origin: Origin) -> Canary:
    check_kind(kind)
    reason = policy.check_reason(reason)
    with transaction.atomic():
        c = _switch(kind, Canary.State.RUNNING)
        record(origin, "canary.resume", _target(kind), reason, details=_where(c))
    return c


def _switch(kind: str, to: str) -> Canary:
    """Put the live canary of `kind` in state `to` (pause / resume by hand; the caller audits it)."""
    c = _live_locked(kind)
    if c.state == to:
        raise Conflict(f"the canary is {to} already", {"canary": to})
    c.state = to
    fields = ["state"]
    if to == Canary.State.RUNNING:
        c.inconclusive = 0
        # The pause of the current step counts again from now: time spent paused was not observed as a step.
        c.step_started = timezone.now()
        fields += ["inconclusive", "step_started"]
    c.save(update_fields=fields)
    return c


def _where(c: Canary) -> dict[str, Any]:
    return {"canary": c.pk, "step": c.step, "weight": c.weight}


def promote(kind: str, reason: Any, origin: Origin) -> Canary:
    """By hand: make the candidate active now, whatever step the canary is at."""
    check_kind(kind)
    reason = policy.check_reason(reason)
    with transaction.atomic():
        return promote_locked(_live_locked(kind), reason, origin)


def abort(kind: str, reason: Any, origin: Origin) -> Canary:
    check_kind(kind)
    reason = policy.check_reason(reason)
    with transaction.atomic():
        return abort_locked(_live_locked(kind), reason, origin)


def promote_locked(c: Canary, reason: str, origin: Origin) -> Canary:
    """The candidate's document becomes a new active revision (so the history shows who promoted it and why); the
    guard then watches it like any other change. Call inside a transaction holding the canary's row."""
    active = policy.active(c.kind)
    change = policy.create_revision(c.kind, c.revision.document, f"canary {c.pk} promoted: {reason}", active.pk,
                                    origin)
    c.state, c.weight, c.finished = Canary.State.PROMOTED, 100.0, timezone.now()
    c.promoted_to, c.outcome = change.revision, reason
    c.save(update_fields=["state", "weight", "finished", "promoted_to", "outcome"])
    record(origin, "canary.promote", _target(c.kind), reason, before={"revision": active.pk},
           after={"revision": change.revision.pk},
           details={"canary": c.pk, "candidate": c.revision_id, "revision": change.revision.pk,
                    "version": change.revision.version, "step": c.step})
    _announce(c.kind)
    return c


def abort_locked(c: Canary, reason: str, origin: Origin, run: AnalysisRun | None = None) -> Canary:
    """Weight 0: every request goes back to the stable revision. Tells the `rollback` and `alert` receivers."""
    c.state, c.weight, c.finished, c.outcome = Canary.State.ABORTED, 0.0, timezone.now(), reason
    c.save(update_fields=["state", "weight", "finished", "outcome"])
    details = {"canary": c.pk, "candidate": c.revision_id, "stable": c.stable_id, "step": c.step,
               "analysis_run": run.pk if run else None, **({"pool": c.pool} if c.pool else {})}
    record(origin, "canary.abort", _target(c.kind), reason, before={"weight": c.steps[c.step]["weight"]},
           after={"weight": 0}, details=details)
    url = f"{settings.EXTERNAL_URL.rstrip('/')}/policies/{c.kind}/canary/"
    where = f" on pool {c.pool}" if c.pool else ""
    events.emit("rollback", {
        "kind": c.kind, "action": "canary_abort", "scope": "pool" if c.pool else "global",
        **({"pool": c.pool} if c.pool else {}), "actor": origin.actor, "canary": c.pk,
        "revision": c.revision_id, "version": c.revision.version, "request_id": origin.request_id,
        "severity": "warning",
        "summary": f"{c.kind} canary of v{c.revision.version}{where} aborted by {origin.actor}",
        "description": reason, "url": url,
    })
    notify.raise_alert("canary_aborted", {"kind": c.kind, "canary": str(c.pk), **({"pool": c.pool} if c.pool else {})},
                       f"{c.kind} canary of v{c.revision.version}{where} aborted", reason,
                       path=f"/policies/{c.kind}/canary/")
    _announce(c.kind)
    return c
