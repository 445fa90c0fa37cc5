"""record(): the one way to write an audit event. The code performing an action calls it in the same transaction."""

from __future__ import annotations

from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from core.audit.context import Origin
from core.audit.models import AuditEvent
from core.audit.redact import redact_text, scrub


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
    """Append one audit event. Call it inside the transaction that makes the change, so both land or neither.

    Every viewer reads the audit and nothing in it can be taken back, so before/after/details go through
    `scrub()` (no secrets, URLs as scheme + host + fingerprint) and a token pasted into the reason is cut to its
    prefix; the reason's URLs are kept (operators cite runbooks and tickets there)."""
    if not reason or not reason.strip():
        raise ValueError("an audit event needs a reason")
    return AuditEvent.objects.create(
        actor=origin.actor,
        action=action,
        target=target,
        reason=redact_text(reason.strip(), urls=False),
        before=scrub(_jsonable(before)),
        after=scrub(_jsonable(after)),
        details=scrub(_jsonable(details or {})),
        request_id=origin.request_id,
        client=origin.client,
    )
