"""record(): the one way to write an audit event. The code performing an action calls it in the same transaction."""

from __future__ import annotations

from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from control.audit.context import Origin
from control.audit.models import AuditEvent


def _jsonable(value: Any) -> Any:
    # Round-trip through Django's encoder so datetimes and decimals in before/after do not break the JSON column.
    import json

    return None if value is None else json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def record(
    origin: Origin,
    action: str,
    target: str,
    reason: str,
    before: Any = None,
    after: Any = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event. Call it inside the transaction that makes the change, so both land or neither."""
    if not reason or not reason.strip():
        raise ValueError("an audit event needs a reason")
    return AuditEvent.objects.create(
        actor=origin.actor,
        action=action,
        target=target,
        reason=reason.strip(),
        before=_jsonable(before),
        after=_jsonable(after),
        details=_jsonable(details or {}),
        request_id=origin.request_id,
        client=origin.client,
    )
