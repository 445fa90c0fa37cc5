"""Webhook receivers, the deliveries queued for them (or for an ad-hoc callback URL) and every attempt made."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

# The event kinds a receiver can subscribe to ("test" is the send-test button's, always delivered).
EVENTS = ("alert", "scaling", "rollback", "job")
FORMATS = ("alertmanager", "slack")


class Receiver(models.Model):
    name = models.CharField(max_length=63, unique=True)
    url = models.CharField(max_length=2000)
    # Stored as given: the sender must be able to compute HMACs with it, so a one-way hash is useless, and a key
    # kept beside the database (SECRET_KEY) protects nothing against whoever reads both. It is never shown again
    # after creation, never logged and never put in audit events (docs/webhooks.md).
    secret = models.CharField(max_length=200)
    format = models.CharField(max_length=16, default="alertmanager", choices=[(f, f) for f in FORMATS])
    events = models.JSONField(default=list, help_text="subscribed event kinds: alert, scaling, rollback, job")
    enabled = models.BooleanField(default=True)
    internal = models.BooleanField(
        default=False, help_text="admin-set: may reach private/loopback addresses (an on-prem receiver)")
    consecutive_failures = models.PositiveIntegerField(default=0)
    disabled_reason = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Delivery(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DONE = "done"
        FAILED = "failed"

    receiver = models.ForeignKey(Receiver, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="deliveries")
    receiver_name = models.CharField(max_length=63, blank=True, help_text="kept when the receiver is deleted")
    url = models.CharField(max_length=2000, help_text="the receiver's URL when queued, or the ad-hoc callback URL")
    event = models.CharField(max_length=16)
    # Only for ad-hoc callbacks given a secret (a receiver's deliveries sign with the receiver's current secret).
    secret = models.CharField(max_length=200, blank=True)
    payload = models.JSONField()
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=6)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="delivery_due"),
            models.Index(fields=["receiver", "-id"], name="delivery_receiver"),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} ({self.event} -> {self.receiver_name or self.url})"


class Attempt(models.Model):
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    started = models.DateTimeField(default=timezone.now)
    duration_ms = models.FloatField()
    status = models.PositiveIntegerField(null=True, blank=True, help_text="HTTP status; empty when none came back")
    error = models.CharField(max_length=500, blank=True)
    body_excerpt = models.CharField(max_length=1000, blank=True)
    outcome = models.CharField(max_length=8, help_text="ok, retry or failed")

    class Meta:
        ordering = ["delivery_id", "number"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="attempt_number_unique")]
