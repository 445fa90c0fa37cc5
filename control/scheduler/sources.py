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
