"""Django admin for the fleet: browse pools, nodes and GPUs. Tokens are issued only by `createnode` (shown once)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from core.audit.admin_audit import AuditedAdmin
from dashboard.fleet.models import GPU, Node, NodeToken, Pool


@admin.register(Pool)
class PoolAdmin(AuditedAdmin):
    audit_kind = "pool"
    list_display = ["name", "description", "created"]
    search_fields = ["name"]


class GPUInline(admin.TabularInline):
    model = GPU
    extra = 0
    readonly_fields = ["index", "uuid", "name", "first_seen"]
    can_delete = False


@admin.register(Node)
class NodeAdmin(AuditedAdmin):
    audit_kind = "node"
    list_display = ["name", "pool", "state", "endpoint", "agent", "last_seen"]
    list_filter = ["pool", "state"]
    search_fields = ["name", "endpoint"]
    readonly_fields = ["agent", "last_seen", "created", "served_models"]
    inlines = [GPUInline]


@admin.register(NodeToken)
class NodeTokenAdmin(AuditedAdmin):
    audit_kind = "nodetoken"
    list_display = ["node", "prefix", "created", "revoked"]
    readonly_fields = ["node", "prefix", "digest", "created"]

    def has_add_permission(self, request: Any) -> bool:
        return False  # a token typed into a form would not be random: use manage.py createnode

    def target_of(self, obj: Any) -> str:
        return f"nodetoken:{obj.pk}"
