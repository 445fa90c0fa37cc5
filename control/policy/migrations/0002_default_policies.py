"""Revision 1 of every policy kind: the shipped defaults, active, with its audit event (actor "system")."""

import uuid

from django.db import migrations


def create_defaults(apps, schema_editor):
    from control.policy.defaults import DEFAULTS

    Revision = apps.get_model("policy", "PolicyRevision")
    Active = apps.get_model("policy", "ActivePolicy")
    Event = apps.get_model("audit", "AuditEvent")
    request_id = uuid.uuid4().hex
    for kind, document in DEFAULTS.items():
        if Active.objects.filter(kind=kind, scope="global").exists():
            continue
        rev = Revision.objects.create(kind=kind, scope="global", version=1, document=document, author="system",
                                      reason="shipped default")
        Active.objects.create(kind=kind, scope="global", revision=rev)
        Event.objects.create(actor="system", action="policy.create", target=f"policy:{kind}", before=None,
                             after=document, details={"revision": rev.pk, "version": 1, "parent": None,
                                                      "activated": True},
                             reason="shipped default", request_id=request_id, client=None)


class Migration(migrations.Migration):
    dependencies = [("policy", "0001_initial"), ("audit", "0001_initial")]

    # Nothing to undo: revisions and audit events cannot be deleted (triggers refuse it), and the tables go with
    # 0001 when migrating back to zero.
    operations = [migrations.RunPython(create_defaults, migrations.RunPython.noop)]
