"""A canary rollout of a policy revision, each analysis run's verdict, and the per-arm minute aggregates."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone

from control.policy.models import PolicyRevision
from control.routing import histogram


class Canary(models.Model):
    class State(models.TextChoices):
        RUNNING = "running"
        PAUSED = "paused"
        PROMOTED = "promoted"
        ABORTED = "aborted"

    LIVE = (State.RUNNING, State.PAUSED)

    kind = models.CharField(max_length=16, default="scheduler")
    pool = models.CharField(max_length=63, blank=True,
                            help_text="scaling canaries: the one pool that runs the candidate's rules")
    revision = models.ForeignKey(PolicyRevision, on_delete=models.PROTECT, related_name="canaries",
                                 help_text="the candidate")
    stable = models.ForeignKey(PolicyRevision, on_delete=models.PROTECT, related_name="+",
                               help_text="the revision that was active when the canary started")
    steps = models.JSONField(help_text="[{weight, pause_s}, ...]")
    analysis = models.JSONField(help_text="thresholds, min_requests, failure_limit ... (defaults filled in)")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    step = models.PositiveIntegerField(default=0, help_text="index of the current step")
    step_started = models.DateTimeField(default=timezone.now)
    weight = models.FloatField(help_text="percent of requests on the candidate now (0 once it ended)")
    failures = models.PositiveIntegerField(default=0)
    inconclusive = models.PositiveIntegerField(default=0, help_text="consecutive inconclusive runs")
    author = models.CharField(max_length=150)
    reason = models.TextField()
    outcome = models.TextField(blank=True, help_text="why it ended")
    promoted_to = models.ForeignKey(PolicyRevision, null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="+")
    created = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)
    last_analysis = models.DateTimeField(null=True, blank=True)
    baseline = models.JSONField(null=True, blank=True,
                                help_text="scheduler, latency_against=before: the stable policy alone before the "
                                          "canary (requests, p95 latency/TTFT, rates), read at the first run")

    class Meta:
        ordering = ["-created"]
        constraints = [
            # One live canary per policy kind, enforced by the database, not only by the service's check.
            models.UniqueConstraint(fields=["kind"], condition=models.Q(state__in=["running", "paused"]),
                                    name="canary_one_live_per_kind"),
        ]

    def __str__(self) -> str:
        return f"canary {self.pk} of {self.kind} revision {self.revision_id} ({self.state})"

    @property
    def live(self) -> bool:
        return self.state in self.LIVE


class AnalysisRun(models.Model):
    class Verdict(models.TextChoices):
        PASS = "pass"
        FAIL = "fail"
        INCONCLUSIVE = "inconclusive"

    canary = models.ForeignKey(Canary, on_delete=models.CASCADE, related_name="runs")
    ts = models.DateTimeField(default=timezone.now)
    step = models.PositiveIntegerField()
    weight = models.FloatField()
    window_from = models.DateTimeField()
    window_to = models.DateTimeField()
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    arms = models.JSONField(help_text="scheduler: per arm, requests, p95 latency/TTFT, error, 429 and goodput rates; "
                                      "scaling: the pool's baseline and canary windows, minutes, SLO-violation "
                                      "minutes and GPU-hours")
    checks = models.JSONField(help_text="[{metric, value, threshold, ok}]")
    summary = models.TextField()

    class Meta:
        ordering = ["ts", "pk"]


def _empty_histogram() -> list[int]:
    return histogram.empty()


class ArmMinute(models.Model):
    """The routing minute aggregates of a canary, kept per arm (same histogram buckets as RequestMinute)."""

    minute = models.DateTimeField()
    canary = models.ForeignKey(Canary, on_delete=models.CASCADE, related_name="minutes")
    arm = models.CharField(max_length=8)
    requests = models.BigIntegerField(default=0)
    status_2xx = models.BigIntegerField(default=0)
    status_4xx = models.BigIntegerField(default=0)
    status_429 = models.BigIntegerField(default=0)
    status_5xx = models.BigIntegerField(default=0)
    good = models.BigIntegerField(default=0, help_text="2xx within the canary's goodput TTFT bound")
    latency_buckets = ArrayField(models.BigIntegerField(), default=_empty_histogram)
    ttft_buckets = ArrayField(models.BigIntegerField(), default=_empty_histogram)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["minute", "canary", "arm"], name="canary_arm_minute_key")]
