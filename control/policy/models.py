"""Policy revisions (immutable: a trigger refuses UPDATE and DELETE) and the pointer to the active one per kind."""

from __future__ import annotations

import pgtrigger
from django.db import models
from django.utils import timezone

from control.policy.schemas import KINDS

GLOBAL = "global"


class Kind(models.TextChoices):
    SCHEDULER = "scheduler"
    SCALING = "scaling"
    PRIORITIES = "priorities"
    POWER = "power"
    ALERTS = "alerts"
    DEPLOYMENT = "deployment"


assert tuple(Kind.values) == KINDS


class PolicyRevision(models.Model):
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Scope leaves room for per-pool documents later; everything is "global" today.
    scope = models.CharField(max_length=63, default=GLOBAL)
    version = models.PositiveIntegerField(help_text="1, 2, 3 ... per kind and scope")
    document = models.JSONField()
    author = models.CharField(max_length=150)
    reason = models.TextField()
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    restored_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="restorations",
        help_text="for a rollback: the earlier revision whose content this one restores",
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "scope", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "scope", "version"], name="policy_revision_version_unique"),
        ]
        triggers = [
            # History only grows: a revision, once written, is what it says for ever.
            pgtrigger.Protect(name="policy_revision_immutable", operation=pgtrigger.Update | pgtrigger.Delete),
        ]

    def __str__(self) -> str:
        return f"{self.kind}/{self.scope} v{self.version}"


class ActivePolicy(models.Model):
    """Which revision is in force for a kind and scope; the row is locked while a change is made."""

    kind = models.CharField(max_length=16, choices=Kind.choices)
    scope = models.CharField(max_length=63, default=GLOBAL)
    revision = models.ForeignKey(PolicyRevision, on_delete=models.PROTECT, related_name="+")
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "scope"], name="active_policy_unique")]

    def __str__(self) -> str:
        return f"{self.kind}/{self.scope} -> v{self.revision.version}"
