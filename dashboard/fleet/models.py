"""Pools, nodes, GPUs and node tokens."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

NAME_RE = RegexValidator(
    r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$",
    "Use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit.",
)


class Pool(models.Model):
    name = models.CharField(max_length=63, unique=True, validators=[NAME_RE])
    description = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Node(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active"
        DRAINING = "draining"
        CORDONED = "cordoned"
        # Scaled in by the controller: its instance is gone. The row stays for its history; a report brings it back.
        REMOVED = "removed"

    name = models.CharField(max_length=63, unique=True, validators=[NAME_RE])
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="nodes")
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    endpoint = models.URLField(max_length=300, blank=True, help_text="Base URL of the node's inference server.")
    # Not named `models`: that would shadow django.db.models inside the class body.
    served_models = models.JSONField(default=list, blank=True, db_column="models", help_text="Models the node serves.")
    agent = models.CharField(max_length=100, blank=True)
    interval_s = models.PositiveIntegerField(null=True, blank=True, help_text="Push interval; empty = default.")
    created = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pool__name", "name"]

    def __str__(self) -> str:
        return self.name


class GPU(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=96, blank=True)
    name = models.CharField(max_length=128, blank=True)
    first_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["node__name", "index"]
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="gpu_node_index_unique")]

    def __str__(self) -> str:
        return f"{self.node.name}/gpu{self.index}"


class NodeToken(models.Model):
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="tokens")
    prefix = models.CharField(max_length=32)
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)
    revoked = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.node.name} {self.prefix}…"
