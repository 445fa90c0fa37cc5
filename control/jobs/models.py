"""Asynchronous inference jobs and their shards (a job that is not split has exactly one shard)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        MERGING = "merging"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.DONE, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    model = models.CharField(max_length=200)
    input = models.TextField(blank=True, help_text="the prompt, when the job was sent with `input`")
    messages = models.JSONField(null=True, blank=True, help_text="chat messages, when sent with `messages`")
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    priority = models.CharField(max_length=64)
    callback_url = models.URLField(max_length=2000, blank=True)
    # The key of the callback's X-Switchyard-Signature, returned once in the 201 of POST /api/v1/jobs. Stored as
    # generated, like a webhook receiver's secret: the sender must compute HMACs with it when the job ends (a hash
    # is useless for that), and encrypting it with a key kept beside the database (SECRET_KEY) protects nothing
    # against whoever reads both. Never in the job API, pages, audit events or logs (docs/jobs.md).
    callback_secret = models.CharField(max_length=200, blank=True)
    token_budget = models.PositiveIntegerField(null=True, blank=True, help_text="shard size in estimated tokens")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    shards_total = models.PositiveIntegerField(default=1)
    shards_done = models.PositiveIntegerField(default=0)
    result = models.TextField(blank=True)
    error = models.TextField(blank=True)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    @property
    def terminal(self) -> bool:
        return self.status in self.TERMINAL


class Shard(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        WAITING = "waiting"  # the gateway said 429/503 + Retry-After: a Celery retry is scheduled
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="shards")
    index = models.PositiveIntegerField()
    input = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    node = models.CharField(max_length=120, blank=True, help_text="X-Switchyard-Node of the answer")
    attempts = models.PositiveIntegerField(default=0)
    waited_s = models.FloatField(default=0.0, help_text="seconds spent waiting on Retry-After")
    tries = models.JSONField(default=list, blank=True,
                             help_text="the latest gateway calls: [{at, status, node, retry_after}], oldest first")
    output = models.TextField(blank=True)
    error = models.TextField(blank=True)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="jobs_shard_index")]
