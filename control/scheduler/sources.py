"""What the gateway reads from PostgreSQL, off the request path (blocking ORM calls: run them on a thread)."""

from __future__ import annotations

import logging
from typing import Any

from control.scheduler.core import NodeSpec
from dashboard.fleet.models import Node

log = logging.getLogger(__name__)
KINDS = ("scheduler", "priorities")


def registry() -> list[NodeSpec]:
    rows = Node.objects.values_list("name", "pool__name", "state", "endpoint", "served_models")
    return [NodeSpec(name, pool, state, endpoint or "", tuple(m for m in (models or []) if isinstance(m, str)))
            for name, pool, state, endpoint, models in rows]


def policy_pointers() -> dict[str, int]:
    """kind -> active revision id, for the kinds the gateway uses (a cheap query: the once-a-second check)."""
    from control.policy.models import GLOBAL, ActivePolicy

    return dict(ActivePolicy.objects.filter(kind__in=KINDS, scope=GLOBAL).values_list("kind", "revision_id"))


def load_policy(kind: str) -> tuple[int, dict[str, Any]]:
    """(revision id, document normalised by today's schema: sections added later get their defaults)."""
    from control.policy.defaults import default_document
    from control.policy.schemas import DocumentError, validate
    from control.policy.service import active

    rev = active(kind)
    try:
        return rev.pk, validate(kind, rev.document)
    except DocumentError as exc:  # cannot happen for documents stored through the service; never stop routing
        log.error("active %s revision %s does not validate (%s); using the shipped default", kind, rev.pk, exc)
        return rev.pk, validate(kind, default_document(kind))


def close_connection() -> None:
    from django.db import connection

    connection.close()


def canary_state() -> tuple[int, float, int, float, float] | None:
    """(canary id, weight %, candidate revision id, switchback anchor (unix time the canary was created), switchback
    period in seconds, 0 when the canary has no switchback control) of the live scheduler canary; None when none
    runs."""
    from control.canary.models import Canary

    row = Canary.objects.filter(kind="scheduler", state__in=Canary.LIVE).values_list(
        "pk", "weight", "revision_id", "created", "analysis").first()
    if not row:
        return None
    a = row[4] if isinstance(row[4], dict) else {}
    period = float(a.get("switchback_s", 0)) if a.get("latency_against") == "switchback" else 0.0
    return int(row[0]), float(row[1]), int(row[2]), row[3].timestamp(), period


def load_revision(kind: str, revision_id: int) -> dict[str, Any]:
    """A revision's document normalised by today's schema (the canary's candidate)."""
    from control.policy.models import PolicyRevision
    from control.policy.schemas import validate

    return validate(kind, PolicyRevision.objects.get(pk=revision_id).document)
