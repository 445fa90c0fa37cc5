"""Installations seeded before the default alert rules existed got an empty `alerts` policy (policy 0002). Give
them the default rules as a new revision, audited as system — but only when the active revision is still that
untouched seed; a policy an operator has changed (even to empty) is theirs and is left alone. A new installation
already gets the rules as revision 1 (policy 0002 reads DEFAULT_ALERTS), so this does nothing there."""

import uuid

from django.db import migrations


def add_default_rules(apps, schema_editor):
    from control.alerts.defaults import DEFAULT_ALERTS

    Revision = apps.get_model("policy", "PolicyRevision")
    Active = apps.get_model("policy", "ActivePolicy")
    Event = apps.get_model("audit", "AuditEvent")
    pointer = Active.objects.select_related("revision").filter(kind="alerts", scope="global").first()
    if pointer is None:
        return  # no policy yet: the first read creates revision 1 from the current defaults
    seed = pointer.revision
    if not (seed.version == 1 and seed.author == "system" and seed.document == {"rules": []}
            and Revision.objects.filter(kind="alerts", scope="global").count() == 1):
        return
    rev = Revision.objects.create(kind="alerts", scope="global", version=2, document=DEFAULT_ALERTS,
                                  author="system", reason="shipped default alert rules", parent=seed)
    pointer.revision = rev
    pointer.save(update_fields=["revision"])
    Event.objects.create(actor="system", action="policy.create", target="policy:alerts", before=seed.document,
                         after=DEFAULT_ALERTS, details={"revision": rev.pk, "version": 2, "parent": seed.pk,
                                                        "activated": True},
                         reason="shipped default alert rules", request_id=uuid.uuid4().hex, client=None)


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial"), ("policy", "0002_default_policies"), ("audit", "0001_initial")]

    # Revisions and audit events are append-only; nothing to undo.
    operations = [migrations.RunPython(add_default_rules, migrations.RunPython.noop)]
