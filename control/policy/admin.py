"""Policy revisions in the admin site: read-only (changes go through the editor or the API, which audit them)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from control.policy.models import PolicyRevision


@admin.register(PolicyRevision)
class PolicyRevisionAdmin(admin.ModelAdmin):
    list_display = ["kind", "scope", "version", "author", "reason", "created"]
    list_filter = ["kind"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
