"""Who may call the gateway: Switchyard user API tokens (looked up by digest, cached briefly) and the internal token
of Switchyard's own services (the Celery job runner), an HMAC of SECRET_KEY that needs no database row."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings

from dashboard.accounts.tokens import digest

POSITIVE_TTL_S = 10.0  # a revoked token stops working within this long
NEGATIVE_TTL_S = 2.0  # an unknown token is asked for again after this long (a token created a moment ago works)
MAX_ENTRIES = 10_000


def internal_token() -> str:
    """The bearer token Switchyard's own services send to the gateway (same on every process sharing SECRET_KEY)."""
    mac = hmac.new(settings.SECRET_KEY.encode(), b"switchyard-gateway-internal-v1", hashlib.sha256).hexdigest()
    return f"sy_internal_{mac}"


@dataclass(frozen=True)
class Caller:
    user: str
    priority_class: str  # "" = the priorities policy's default
    internal: bool = False


def bearer(header: str) -> str | None:
    """The secret from `Authorization: Bearer <t>` (or `Token <t>`, as the REST API accepts)."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() not in ("bearer", "token") or not value or " " in value:
        return None
    return value


def lookup(plain: str) -> Caller | None:
    """The token's owner and class from PostgreSQL (blocking: call on a thread). Marks it used once a minute."""
    from django.utils import timezone

    from dashboard.accounts.models import UserToken

    row = (UserToken.objects.filter(digest=digest(plain), revoked__isnull=True, user__is_active=True)
           .values("pk", "priority_class", "last_used", "user__username").first())
    if row is None:
        return None
    now = timezone.now()
    if row["last_used"] is None or now - row["last_used"] > timedelta(minutes=1):
        UserToken.objects.filter(pk=row["pk"]).update(last_used=now)
    return Caller(row["user__username"], row["priority_class"] or "")


class TokenCache:
    """digest -> (expires, Caller | None): most requests never reach the database."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Caller | None]] = {}
        self._internal = internal_token()

    def get(self, plain: str) -> tuple[bool, Caller | None]:
        """(known, caller): known is False when the database must be asked."""
        if hmac.compare_digest(plain, self._internal):
            return True, Caller("switchyard-internal", "", internal=True)
        entry = self._entries.get(plain)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, plain: str, caller: Caller | None) -> None:
        if len(self._entries) >= MAX_ENTRIES:  # a flood of random tokens must not grow memory without bound
            self._entries.clear()
        ttl = POSITIVE_TTL_S if caller is not None else NEGATIVE_TTL_S
        self._entries[plain] = (time.monotonic() + ttl, caller)
