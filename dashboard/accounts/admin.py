from __future__ import annotations

from typing import Any

from django.contrib import admin

from dashboard.accounts.models import UserToken


@admin.register(UserToken)
class UserTokenAdmin(admin.ModelAdmin):
    list_display = ["user", "name", "prefix", "created", "last_used", "revoked"]
    readonly_fields = ["user", "prefix", "digest", "created", "last_used"]

    def has_add_permission(self, request: Any) -> bool:
        return False  # tokens are issued by manage.py createuser and shown once
