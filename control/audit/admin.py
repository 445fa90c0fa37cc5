"""Audit events in the admin site: read-only, like the table itself."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from control.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["time", "actor", "action", "target", "reason", "request_id", "client"]
    list_filter = ["action"]
    search_fields = ["actor", "target", "reason", "request_id"]

    def has_add_permission(self, request: Any) -> bool:
        return False  # events are written by the code that makes each change, never by hand

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
