"""What the controller decides and remembers: scaling actions, each pool's provider, forecasts, guard watches."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from control.policy.models import PolicyRevision
from dashboard.fleet.models import Pool

OPEN_STATES = ("pending", "draining", "running")


class PoolProvider(models.Model):
    """Which provider scales a pool, with its non-secret settings (credentials come from the environment)."""

    pool = models.OneToOneField(Pool, on_delete=models.CASCADE, related_name="provider")
    kind = models.CharField(max_length=16)  # control.providers.registry.KINDS
    config = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True, help_text="A disabled pool is observed but never scaled.")
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["pool__name"]

    def __str__(self) -> str:
        return f"{self.pool.name} -> {self.kind}"


class ScalingAction(models.Model):
    class Kind(models.TextChoices):
        SCALE_OUT = "scale_out"
        SCALE_IN = "scale_in"

    class State(models.TextChoices):
        PENDING = "pending"
        DRAINING = "draining"  # scale-in: the chosen nodes take no new work; waiting for in-flight to finish
        RUNNING = "running"  # the provider call is being (or was) made
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="scaling_actions")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    from_size = models.PositiveIntegerField()
    to_size = models.PositiveIntegerField()
    # "gpu_util_pct>85", "queue_length>50", "predictive", "scale_down", "manual", "revert #12", "min_nodes", ...
    rule = models.CharField(max_length=100)
    metrics = models.JSONField(default=dict, blank=True, help_text="The values that caused the decision.")
    reason = models.TextField(blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    provider = models.CharField(max_length=16, blank=True)
    provider_request_id = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    nodes = models.JSONField(default=list, blank=True, help_text="Scale-in: the nodes chosen for removal.")
    drain_deadline = models.DateTimeField(null=True, blank=True)
    actor = models.CharField(max_length=150, default="controller")
    request_id = models.CharField(max_length=64, blank=True)
    reverts = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reverted_by")
    created = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["pool", "-created"])]
        constraints = [
            # One open action per pool: two controllers (or a controller and an operator) cannot both act on one
            # decision; the second insert fails and is told what is in progress.
            models.UniqueConstraint(fields=["pool"], condition=Q(state__in=OPEN_STATES),
                                    name="scalingaction_one_open_per_pool"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.pool.name} {self.from_size}->{self.to_size} {self.state}"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


class Recommendation(models.Model):
    """Each loop's scale-in recommendation, kept for the stabilization window (the highest in the window wins)."""

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="+")
    ts = models.DateTimeField(default=timezone.now)
    size = models.PositiveIntegerField()

    class Meta:
        indexes = [models.Index(fields=["pool", "ts"])]


class ForecastPoint(models.Model):
    """A forecast of a pool's demand for one minute, made `horizon` minutes ahead; compared later with the actual."""

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="+")
    metric = models.CharField(max_length=32)
    ts = models.DateTimeField(help_text="The minute forecast.")
    made = models.DateTimeField()
    value = models.FloatField()

    class Meta:
        ordering = ["ts"]
        constraints = [models.UniqueConstraint(fields=["pool", "metric", "ts"], name="forecast_pool_metric_ts")]


class GuardWatch(models.Model):
    """One policy activation under watch: compared with the period before it, and rolled back when worse."""

    class State(models.TextChoices):
        WATCHING = "watching"
        PASSED = "passed"
        ROLLED_BACK = "rolled_back"
        SKIPPED = "skipped"  # not enough traffic for a verdict, or superseded by a later change

    revision = models.OneToOneField(PolicyRevision, on_delete=models.CASCADE, related_name="guard_watch")
    kind = models.CharField(max_length=16)
    state = models.CharField(max_length=16, choices=State.choices, default=State.WATCHING)
    started = models.DateTimeField()
    until = models.DateTimeField()
    baseline = models.JSONField(default=dict, blank=True)
    observed = models.JSONField(default=dict, blank=True)
    verdict = models.TextField(blank=True)
    rollback_revision = models.ForeignKey(PolicyRevision, null=True, blank=True, on_delete=models.SET_NULL,
                                          related_name="+")
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started"]
        indexes = [models.Index(fields=["state", "until"])]


class Rollout(models.Model):
    """A deployment revision rolled out to a pool, batch by batch (control/controller/rollout.py)."""

    class State(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"  # stopped where it was: the batches before it run the new revision, the rest the old

    class Step(models.TextChoices):
        DRAIN = "drain"  # the current batch is about to be drained
        DRAINING = "draining"  # waiting for its in-flight requests (or the drain timeout)
        RESTARTING = "restarting"  # the provider restarts it with the new configuration; waiting for it to serve

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="rollouts")
    revision = models.ForeignKey(PolicyRevision, on_delete=models.PROTECT, related_name="+")
    previous = models.ForeignKey(PolicyRevision, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                 help_text="the deployment revision active before; a revert re-applies it")
    entry = models.JSONField(help_text="the pool's entry of the revision, as rolled out")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    step = models.CharField(max_length=16, choices=Step.choices, default=Step.DRAIN)
    batches = models.JSONField(default=list, help_text="node names per batch, in order")
    batch = models.PositiveIntegerField(default=0, help_text="index of the batch in progress")
    done_nodes = models.JSONField(default=list, blank=True)
    step_deadline = models.DateTimeField(null=True, blank=True)
    step_started = models.DateTimeField(null=True, blank=True)
    provider = models.CharField(max_length=16, blank=True)
    provider_request_id = models.CharField(max_length=200, blank=True)
    progress = models.CharField(max_length=200, blank=True, help_text="a provider's own rollout: how far it got")
    error = models.TextField(blank=True)
    actor = models.CharField(max_length=150, default="controller")
    reason = models.TextField(blank=True)
    reverts = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reverted_by")
    created = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            # One rollout at a time per pool: a second would restart nodes the first is draining.
            models.UniqueConstraint(fields=["pool"], condition=Q(state="running"), name="rollout_one_running_per_pool"),
        ]

    def __str__(self) -> str:
        return f"rollout #{self.pk} {self.pool.name} v{self.revision.version} {self.state}"
