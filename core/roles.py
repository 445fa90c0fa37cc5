"""Roles are Django groups, ordered: viewer < operator < admin (a superuser is an admin). The checks for DRF views
(IsViewer, IsOperator, IsAdmin), for HTML views (role_required: anonymous users go to the login page, users without
the role get 403) and the template context (role_context) all read them here."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from rest_framework.permissions import BasePermission

ROLES = ("viewer", "operator", "admin")
RANK = {name: i for i, name in enumerate(ROLES)}


def role_of(user: AbstractBaseUser | AnonymousUser | None) -> str | None:
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    if getattr(user, "is_superuser", False):
        return "admin"
    names = {g.name for g in user.groups.all()}  # type: ignore[union-attr]
    for name in reversed(ROLES):
        if name in names:
            return name
    return None


def has_role(user: Any, needed: str) -> bool:
    role = role_of(user)
    return role is not None and RANK[role] >= RANK[needed]


def set_role(user: Any, role: str) -> None:
    if role not in RANK:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    user.groups.remove(*Group.objects.filter(name__in=ROLES))
    group, _ = Group.objects.get_or_create(name=role)
    user.groups.add(group)
    # Django's own flags follow the role, so the admin site and role checks agree on who is an admin.
    user.is_staff = user.is_superuser = role == "admin"
    user.save(update_fields=["is_staff", "is_superuser"])


class _RolePermission(BasePermission):
    role = "viewer"
    message = "This needs the viewer role."

    def has_permission(self, request: Any, view: Any) -> bool:
        return has_role(request.user, self.role)


class IsViewer(_RolePermission):
    role = "viewer"
    message = "This needs the viewer role (or higher)."


class IsOperator(_RolePermission):
    role = "operator"
    message = "This needs the operator role (or admin)."


class IsAdmin(_RolePermission):
    role = "admin"
    message = "This needs the admin role."


def role_required(role: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Decorate a view so that it needs `role` (viewer < operator < admin)."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied(f"This page needs the {role} role; ask an admin to grant it.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


def role_context(request: HttpRequest) -> dict[str, Any]:
    """Template context processor: `role`, `can_operate`, `can_admin` for showing or hiding edit controls."""
    role = role_of(getattr(request, "user", None))
    return {
        "role": role,
        "can_operate": has_role(request.user, "operator") if role else False,
        "can_admin": role == "admin",
    }
