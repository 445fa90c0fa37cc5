from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class UserToken(models.Model):
    """A per-user API token for automation (`Authorization: Token <t>` or `Bearer <t>`)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, default="default")
    prefix = models.CharField(max_length=32, help_text="The first characters, to recognise the token in lists.")
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)
    priority_class = models.CharField(
        max_length=63, blank=True, default="",
        help_text="The gateway's priority class for requests with this token when they send no X-Priority; "
                  "blank = the priorities policy's default class.")

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.user} {self.prefix}…"
