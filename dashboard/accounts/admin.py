from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db import transaction

from core.audit.admin_audit import AuditedAdmin, ReadOnlyAdmin
from core.audit.context import Origin
from core.audit.record import record
from core.roles import ROLES
from dashboard.accounts.models import UserToken


def role_from_groups(names: set[str]) -> str | None:
    return next((r for r in reversed(ROLES) if r in names), None)


@admin.register(UserToken)
class UserTokenAdmin(AuditedAdmin):
    audit_kind = "token"
    list_display = ["user", "name", "prefix", "created", "last_used", "revoked"]
    readonly_fields = ["user", "prefix", "digest", "created", "last_used"]

    def has_add_permission(self, request: Any) -> bool:
        return False  # tokens are issued by manage.py createuser and shown once

    def target_of(self, obj: Any) -> str:
        return f"token:{obj.pk}"  # as the tokens API and page record it


admin.site.unregister(get_user_model())
admin.site.unregister(Group)


@admin.register(get_user_model())
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    """Users and their role (group) through the admin: each change needs a reason and is audited as user.*."""

    audit_kind = "user"
    # The role is the group; Django's staff/superuser flags follow it (set_role), so they are not offered here.
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        ("Role", {"fields": ("is_active", "groups"),
                  "description": "Pick one role group: viewer (read), operator (change policies, drain), admin."}),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )

    def user_change_password(self, request: Any, id: str, form_url: str = "") -> Any:
        # The password form has no reason field (it is Django's own page); the event and the change land together.
        with transaction.atomic():
            return super().user_change_password(request, id, form_url)

    def log_change(self, request: Any, obj: Any, message: Any) -> Any:
        entry = super().log_change(request, obj, message)
        if request.path.rstrip("/").endswith("/password"):
            record(Origin.from_request(request), "user.password", f"user:{obj.get_username()}",
                   "password set in the admin site", details={"via": "admin"})  # that it changed, never what to
        return entry

    def after_save(self, obj: Any) -> None:
        role = role_from_groups({g.name for g in obj.groups.all()})
        admin_flag = role == "admin"
        if (obj.is_staff, obj.is_superuser) != (admin_flag, admin_flag):
            obj.is_staff = obj.is_superuser = admin_flag
            obj.save(update_fields=["is_staff", "is_superuser"])


@admin.register(Group)
class RoleGroupAdmin(ReadOnlyAdmin, GroupAdmin):
    """The groups are the three roles: read-only here (a user's role is set on the user)."""
