"""DRF authentication by per-user API token: `Authorization: Token <t>` or `Authorization: Bearer <t>`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from dashboard.accounts.models import UserToken
from dashboard.accounts.tokens import digest


def user_for_token(plain: str) -> Any | None:
    token = (
        UserToken.objects.select_related("user")
        .filter(digest=digest(plain), revoked__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    # Recording every use would turn each API read into a write; once a minute is enough to spot stale tokens.
    if token.last_used is None or now - token.last_used > timedelta(minutes=1):
        UserToken.objects.filter(pk=token.pk).update(last_used=now)
    return token.user


class UserTokenAuthentication(BaseAuthentication):
    keywords = ("token", "bearer")

    def authenticate(self, request: Any) -> tuple[Any, None] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        parts = header.split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Token <token>'.")
        user = user_for_token(parts[1])
        if user is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API token.")
        return user, None

    def authenticate_header(self, request: Any) -> str:
        return 'Token realm="switchyard"'
