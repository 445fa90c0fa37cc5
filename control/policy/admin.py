"""Policy revisions in the admin site: read-only (changes go through the editor or the API, which audit them)."""

from __future__ import annotations

from django.contrib import admin

from control.policy.models import PolicyRevision
from core.audit.admin_audit import ReadOnlyAdmin


@admin.register(PolicyRevision)
class PolicyRevisionAdmin(ReadOnlyAdmin):
    list_display = ["kind", "scope", "version", "author", "reason", "created"]
    list_filter = ["kind"]
