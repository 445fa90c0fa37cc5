"""Role checks for HTML views: anonymous users go to the login page, users without the role get 403."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from dashboard.accounts.roles import has_role, role_of


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
