"""Alerts (one row per episode of a rule and label set) and silences."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

SEVERITIES = ("critical", "warning", "info")


class Alert(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        FIRING = "firing"
        RESOLVED = "resolved"

    fingerprint = models.CharField(max_length=16)
    rule = models.CharField(max_length=63)
    labels = models.JSONField()
    annotations = models.JSONField(default=dict)
    severity = models.CharField(max_length=8)
    state = models.CharField(max_length=8, choices=State.choices)
    value = models.FloatField(null=True, blank=True, help_text="the value at the last evaluation it was true")
    threshold = models.FloatField()
    active_at = models.DateTimeField(help_text="the condition became true (Alertmanager startsAt)")
    fired_at = models.DateTimeField(null=True, blank=True)
    last_true_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField(default=timezone.now)
    # What receivers were last told about this alert: "" (nothing), "firing" or "resolved". Changed only by a
    # compare-and-set UPDATE in the transaction that queues the notification, so one transition notifies once.
    notified = models.CharField(max_length=8, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    silenced = models.BooleanField(default=False, help_text="a silence matched at the last evaluation")
    revision = models.BigIntegerField(null=True, blank=True, help_text="alerts policy revision that raised it")

    class Meta:
        ordering = ["-id"]
        constraints = [
            # At most one live (pending or firing) alert per fingerprint: an evaluator restarted mid-run, or two
            # running at once, cannot open a second one.
            models.UniqueConstraint(fields=["fingerprint"], condition=Q(state__in=["pending", "firing"]),
                                    name="alert_one_live_per_fingerprint"),
        ]
        indexes = [models.Index(fields=["state", "-id"], name="alert_state"),
                   models.Index(fields=["-resolved_at"], name="alert_resolved")]

    def __str__(self) -> str:
        return f"{self.rule} {self.labels} {self.state}"


class Silence(models.Model):
    matchers = models.JSONField(help_text='[{"label": "node", "op": "=", "value": "gpu-a-1"}]')
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField()
    reason = models.TextField()
    created_by = models.CharField(max_length=150)
    created = models.DateTimeField(default=timezone.now)
    expired_at = models.DateTimeField(null=True, blank=True, help_text="ended early by an operator")
    expired_by = models.CharField(max_length=150, blank=True)
    expire_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"silence {self.pk} until {self.ends_at:%Y-%m-%d %H:%M}"

    def active_at(self, now: object) -> bool:
        return self.expired_at is None and self.starts_at <= now < self.ends_at  # type: ignore[operator]
