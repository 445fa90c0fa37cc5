"""AuditEvent: one row per change, never updated or deleted (a PostgreSQL trigger refuses both)."""

from __future__ import annotations

import pgtrigger
from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    # The actor is a name, not a foreign key: deleting a user must not rewrite (or be blocked by) the history.
    time = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=150, db_index=True, help_text='user name, "controller" or "system"')
    action = models.CharField(max_length=64, db_index=True, help_text="e.g. policy.create, node.drain, token.revoke")
    target = models.CharField(max_length=200, db_index=True, help_text="e.g. policy:scheduler, node:gpu-a-1")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True, help_text="ids and other facts that are not the state")
    reason = models.TextField()
    request_id = models.CharField(max_length=64, db_index=True)
    client = models.GenericIPAddressField(null=True, blank=True, help_text="client address of the request")

    class Meta:
        ordering = ["-time", "-id"]
        triggers = [
            pgtrigger.Protect(
                name="audit_append_only",
                operation=pgtrigger.Update | pgtrigger.Delete,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.target}"
