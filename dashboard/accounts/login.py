"""The sign-in page and the admin site's sign-in, both throttled (dashboard/accounts/throttle.py)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.http import HttpResponse

from core.audit.context import client_address
from dashboard.accounts import throttle


class ThrottledLogin:
    """Mixed into an AuthenticationForm: refuse early past a limit; count each wrong password."""

    throttled: throttle.Verdict | None = None

    def clean(self) -> dict[str, Any]:
        form: Any = self
        username = (form.cleaned_data.get("username") or "")[:150]
        address = client_address(form.request)
        if username:
            verdict = throttle.check(username, address)
            if not verdict.allowed:
                self.throttled = verdict
                raise forms.ValidationError(verdict.message(), code="throttled")
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except forms.ValidationError as exc:
            if username and any(e.code == "invalid_login" for e in exc.error_list):
                throttle.failed(username, address)
            raise
        throttle.succeeded(username)
        return cleaned


class ThrottledAuthenticationForm(ThrottledLogin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(ThrottledLogin, AdminAuthenticationForm):
    pass


class ThrottledLoginView(LoginView):
    """/accounts/login/: a throttled attempt answers 429 with Retry-After, so scripts and proxies see it too."""

    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form: Any) -> HttpResponse:
        response = super().form_invalid(form)
        verdict = getattr(form, "throttled", None)
        if verdict is not None:
            response.status_code = 429
            response["Retry-After"] = str(verdict.retry_after_s)
        return response
