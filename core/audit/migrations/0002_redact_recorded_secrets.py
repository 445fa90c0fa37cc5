"""Redact the secrets that earlier versions wrote into the append-only audit (receiver URLs, callback URLs, tokens).

The audit refuses UPDATE by a trigger, and rightly: history must not be rewritten. This one pass is the exception
the fix needs, since a leaked Slack URL stays readable by every viewer until it is gone from the table. It changes
nothing but secrets (the same `scrub()` that `record()` now applies), and it leaves an `audit.redact` event that
says how many events it rewrote, so the rewrite is itself on the record.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import migrations


def redact(apps: Any, schema_editor: Any) -> None:
    import pgtrigger

    from core.audit.redact import redact_text, scrub

    AuditEvent = apps.get_model("audit", "AuditEvent")
    changed = []
    for event in AuditEvent.objects.using(schema_editor.connection.alias).iterator(chunk_size=2000):
        before, after, details = scrub(event.before), scrub(event.after), scrub(event.details)
        reason = redact_text(event.reason, urls=False)
        if (before, after, details, reason) != (event.before, event.after, event.details, event.reason):
            event.before, event.after, event.details, event.reason = before, after, details, reason
            changed.append(event)
    if not changed:
        return
    with pgtrigger.ignore("audit.AuditEvent:audit_append_only"):
        AuditEvent.objects.using(schema_editor.connection.alias).bulk_update(
            changed, ["before", "after", "details", "reason"], batch_size=500)
    AuditEvent.objects.using(schema_editor.connection.alias).create(
        actor="system", action="audit.redact", target="audit", request_id=uuid.uuid4().hex,
        reason="secrets recorded by an earlier version (receiver and callback URLs, tokens) were redacted",
        details={"events": len(changed), "ids": [e.pk for e in changed][:1000]})


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(redact, migrations.RunPython.noop)]
