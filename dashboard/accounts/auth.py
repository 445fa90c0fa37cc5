"""DRF authentication by per-user API token: `Authorization: Token <t>` or `Authorization: Bearer <t>`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from core.tokens import digest
from dashboard.accounts.models import UserToken


def token_for(plain: str) -> UserToken | None:
    """The live token with this secret (its user loaded), or None."""
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
    return token


class UserTokenAuthentication(BaseAuthentication):
    keywords = ("token", "bearer")

    def authenticate(self, request: Any) -> tuple[Any, UserToken] | None:
        """(user, token): the token is `request.auth`, so a view can honour what the token allows (its class)."""
        header = request.META.get("HTTP_AUTHORIZATION", "")
        parts = header.split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Token <token>'.")
        token = token_for(parts[1])
        if token is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked API token.")
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return 'Token realm="switchyard"'
