"""The operations on policies. Each runs in one transaction that locks the kind's active pointer, writes the
revision and its audit event together, and refuses a change based on a revision that is no longer the active one."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from control.policy.defaults import default_document
from control.policy.models import GLOBAL, ActivePolicy, PolicyRevision
from control.policy.schemas import KINDS, DocumentError, validate
from control.webhooks import events
from core import diffing
from core.audit.context import Origin
from core.audit.record import record
from dashboard.metrics.latest import redis_client

log = logging.getLogger(__name__)
MAX_REASON = 2000
# Gateways subscribe to this channel and reload the kind at once (their once-a-second version check is the fallback).
POLICY_CHANNEL = "sy:policy"


def _announce(kind: str) -> None:
    """Publish `kind` on sy:policy once the surrounding transaction has committed; Redis being down must not undo
    or fail an activation that is already stored (gateways still see it within a second by polling)."""

    def publish() -> None:
        try:
            redis_client().publish(POLICY_CHANNEL, kind)
        except Exception as exc:  # noqa: BLE001 - any Redis failure is only logged
            log.warning("policy %s activated but not announced on %s: %s", kind, POLICY_CHANNEL, exc)

    transaction.on_commit(publish)


class PolicyError(Exception):
    status = 400

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class UnknownKind(PolicyError):
    status = 404


class Conflict(PolicyError):
    """The change was based on a revision that is no longer the active one (someone else changed it first)."""

    status = 409


class NotFound(PolicyError):
    status = 404


class PreconditionFailed(PolicyError):
    """If-Match named a revision that is no longer the active one."""

    status = 412


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UnknownKind(f"unknown policy kind {kind!r}; the kinds are {', '.join(KINDS)}")
    return kind


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise PolicyError("a reason is required for every change", {"reason": "This field is required."})
    if len(reason) > MAX_REASON:
        raise PolicyError("reason too long", {"reason": f"at most {MAX_REASON} characters"})
    return reason.strip()


def target(kind: str, scope: str = GLOBAL) -> str:
    return f"policy:{kind}" if scope == GLOBAL else f"policy:{kind}@{scope}"


def _pointer(kind: str, scope: str, lock: bool) -> ActivePolicy:
    """The active pointer; the shipped default becomes revision 1 when none exists yet (e.g. after a flush)."""
    qs = ActivePolicy.objects.select_related("revision")
    if lock:
        qs = qs.select_for_update()
    pointer = qs.filter(kind=kind, scope=scope).first()
    if pointer is not None:
        return pointer
    try:
        with transaction.atomic():
            first = PolicyRevision.objects.create(
                kind=kind, scope=scope, version=1, document=default_document(kind), author="system",
                reason="shipped default")
            pointer = ActivePolicy.objects.create(kind=kind, scope=scope, revision=first)
    except IntegrityError:  # another request made the default at the same moment
        pass
    return qs.get(kind=kind, scope=scope)


def active(kind: str, scope: str = GLOBAL) -> PolicyRevision:
    check_kind(kind)
    if transaction.get_autocommit():
        with transaction.atomic():
            return _pointer(kind, scope, lock=False).revision
    return _pointer(kind, scope, lock=False).revision


def get_revision(kind: str, revision_id: Any, field: str = "revision") -> PolicyRevision:
    check_kind(kind)
    try:
        rid = int(revision_id)
    except (TypeError, ValueError):
        raise PolicyError(f"{field} must be a revision id", {field: "A valid integer is required."}) from None
    rev = PolicyRevision.objects.filter(kind=kind, pk=rid).first() if 0 < rid < 2**63 else None
    if rev is None:
        raise NotFound(f"no {kind} revision {rid}", {field: f"no {kind} revision {rid}"})
    return rev


def revisions(kind: str, scope: str = GLOBAL) -> Any:
    active(kind, scope)  # so that the default shows in a fresh history
    return PolicyRevision.objects.filter(kind=kind, scope=scope).order_by("-version")


def validate_for_fleet(kind: str, document: Any) -> dict[str, Any]:
    """The schema, then the checks against the fleet as it is now (a deployment must fit its pool's GPUs). A
    rollback skips the second: restoring what ran before must stay possible whatever changed since."""
    normalised = validate(kind, document)
    if kind == "deployment":
        from control.policy.deployment import check_fit

        problems = check_fit(normalised)
        if problems:
            raise DocumentError(problems)
    return normalised


def preview(kind: str, document: Any, scope: str = GLOBAL) -> dict[str, Any]:
    """Validate a document and diff it against the active revision, storing nothing."""
    normalised = validate_for_fleet(check_kind(kind), document)
    current = active(kind, scope)
    return {"active": current, "document": normalised, "changes": diffing.changes(current.document, normalised)}


@dataclass
class Change:
    revision: PolicyRevision
    previous: PolicyRevision


def _new_revision(kind: str, scope: str, document: dict[str, Any], origin: Origin, reason: str,
                  parent: PolicyRevision, restored_from: PolicyRevision | None = None) -> PolicyRevision:
    top = PolicyRevision.objects.filter(kind=kind, scope=scope).aggregate(v=Max("version"))["v"] or 0
    return PolicyRevision.objects.create(
        kind=kind, scope=scope, version=top + 1, document=document, author=origin.actor, reason=reason,
        parent=parent, restored_from=restored_from)


def _point(pointer: ActivePolicy, revision: PolicyRevision) -> None:
    pointer.revision = revision
    pointer.updated = timezone.now()
    pointer.save(update_fields=["revision", "updated"])


def create_revision(kind: str, document: Any, reason: Any, parent: Any, origin: Origin, *,
                    activate: bool = True, expected_active: Any = None, scope: str = GLOBAL) -> Change:
    """A new revision from `document`, child of `parent` (which must be the active revision); active by default."""
    check_kind(kind)
    reason = check_reason(reason)
    normalised = validate_for_fleet(kind, document)
    with transaction.atomic():
        pointer = _pointer(kind, scope, lock=True)
        previous = pointer.revision
        _check_expected(kind, previous, expected_active)
        parent_rev = get_revision(kind, parent, "parent")
        if parent_rev.pk != previous.pk:
            raise Conflict(
                f"revision {parent_rev.pk} (v{parent_rev.version}) is no longer the active {kind} revision; "
                f"v{previous.version} (id {previous.pk}) is. Reload, reapply your change and retry.",
                {"parent": f"stale: the active revision is {previous.pk}"})
        rev = _new_revision(kind, scope, normalised, origin, reason, parent_rev)
        details = {"revision": rev.pk, "version": rev.version, "parent": parent_rev.pk, "activated": activate}
        if activate:
            _point(pointer, rev)
            _announce(kind)
        record(origin, "policy.create", target(kind, scope), reason, before=previous.document, after=normalised,
               details=details)
    return Change(rev, previous)


def activate(kind: str, revision: Any, reason: Any, origin: Origin, *, expected_active: Any = None,
             scope: str = GLOBAL) -> Change:
    """Make an existing revision (e.g. one created with activate=false) the active one."""
    check_kind(kind)
    reason = check_reason(reason)
    with transaction.atomic():
        pointer, previous, rev = _lock_and_pick(kind, scope, revision, expected_active,
                                                f"revision {{}} is already the active {kind} revision")
        _point(pointer, rev)
        _announce(kind)
        record(origin, "policy.activate", target(kind, scope), reason, before=previous.document, after=rev.document,
               details={"revision": rev.pk, "version": rev.version, "previous": previous.pk})
    return Change(rev, previous)


def rollback(kind: str, revision: Any, reason: Any, origin: Origin, *, expected_active: Any = None,
             scope: str = GLOBAL) -> Change:
    """Restore an earlier revision's content as a new revision (history only grows) and make it active."""
    check_kind(kind)
    reason = check_reason(reason)
    with transaction.atomic():
        pointer, previous, source = _lock_and_pick(kind, scope, revision, expected_active,
                                                   "revision {} is the active one; there is nothing to roll back to")
        rev = _new_revision(kind, scope, source.document, origin, reason, previous, restored_from=source)
        _point(pointer, rev)
        _announce(kind)
        record(origin, "policy.rollback", target(kind, scope), reason, before=previous.document, after=rev.document,
               details={"revision": rev.pk, "version": rev.version, "restored_from": source.pk,
                        "restored_version": source.version, "previous": previous.pk})
        _notify_rollback(kind, scope, rev, source, origin, reason)
    return Change(rev, previous)


def _notify_rollback(kind: str, scope: str, rev: PolicyRevision, source: PolicyRevision, origin: Origin,
                     reason: str) -> None:
    """Tell the `rollback` webhook receivers; inside the caller's transaction, so nothing is sent for a rollback
    that did not commit."""
    where = "" if scope == GLOBAL else f" ({scope})"
    events.emit("rollback", {
        "kind": kind, "action": "rollback", "scope": scope, "actor": origin.actor, "revision": rev.pk,
        "version": rev.version, "restored_version": source.version, "request_id": origin.request_id,
        "severity": "warning", "summary": f"{kind} policy{where} rolled back to v{source.version} by {origin.actor}",
        "description": reason, "url": f"{settings.EXTERNAL_URL.rstrip('/')}/policies/{kind}/history/",
    })


def _lock_and_pick(kind: str, scope: str, revision: Any, expected_active: Any,
                   already_active: str) -> tuple[Any, PolicyRevision, PolicyRevision]:
    """Lock the kind's active pointer (inside the caller's transaction), check If-Match, and fetch `revision`,
    which must be in the same scope and not be the active one. Returns (pointer, active revision, revision)."""
    pointer = _pointer(kind, scope, lock=True)
    previous = pointer.revision
    _check_expected(kind, previous, expected_active)
    rev = get_revision(kind, revision)
    if rev.scope != scope:
        raise NotFound(f"revision {rev.pk} belongs to scope {rev.scope}", {"revision": "other scope"})
    if rev.pk == previous.pk:
        raise Conflict(already_active.format(rev.pk), {"revision": "already active"})
    return pointer, previous, rev


def _check_expected(kind: str, current: PolicyRevision, expected: Any) -> None:
    if expected is not None and str(expected) != str(current.pk):
        raise PreconditionFailed(f"the active {kind} revision is {current.pk}, not {expected}",
                       {"If-Match": f"stale: the active revision is {current.pk}"})


def diff(kind: str, a: Any, b: Any) -> dict[str, Any]:
    ra, rb = get_revision(kind, a, "a"), get_revision(kind, b, "b")
    return {
        "a": ra.pk, "b": rb.pk, "a_version": ra.version, "b_version": rb.version,
        "changes": diffing.changes(ra.document, rb.document),
        "unified": diffing.unified(ra.document, rb.document, f"v{ra.version}", f"v{rb.version}"),
    }
