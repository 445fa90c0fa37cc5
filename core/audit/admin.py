"""Audit events in the admin site: read-only, like the table itself."""

from __future__ import annotations

from django.contrib import admin

from core.audit.admin_audit import ReadOnlyAdmin
from core.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    # Events are written by the code that makes each change, never by hand.
    list_display = ["time", "actor", "action", "target", "reason", "request_id", "client"]
    list_filter = ["action"]
    search_fields = ["actor", "target", "reason", "request_id"]
