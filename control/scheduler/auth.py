"""Who may call the gateway: Switchyard user API tokens (looked up by digest, cached briefly) and the internal token
of Switchyard's own services (the Celery job runner), an HMAC of SECRET_KEY that needs no database row.

Revocation: `control.tokens.service.revoke` publishes the token's digest on `sy:tokens` after its commit, and every
gateway drops that entry at once (`TokenCache.drop`). A gateway that lost the channel (Redis restarted) drops its
whole cache when it subscribes again, since it may have missed a message. A user deactivated or given another role
in the admin keeps a cached entry for at most POSITIVE_TTL_S; revoking the user's tokens takes effect at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings

from control.scheduler.replies import Reply
from core.roles import RANK, ROLES
from core.tokens import digest
from dashboard.accounts.models import UserToken
from dashboard.fleet.revocation import TOKENS_CHANNEL  # noqa: F401  (the gateway's listener subscribes to it)

POSITIVE_TTL_S = 10.0  # a deactivated user or a changed role is seen within this long (a revocation at once)
NEGATIVE_TTL_S = 2.0  # an unknown token is asked for again after this long (a token created a moment ago works)
MAX_ENTRIES = 10_000
INTERNAL_USER = "switchyard-internal"


def internal_token() -> str:
    """The bearer token Switchyard's own services send to the gateway (same on every process sharing SECRET_KEY)."""
    mac = hmac.new(settings.SECRET_KEY.encode(), b"switchyard-gateway-internal-v1", hashlib.sha256).hexdigest()
    return f"sy_internal_{mac}"


@dataclass(frozen=True)
class Caller:
    user: str
    user_id: int | None  # the answer cache's tenant; None for the internal token
    role: str | None  # viewer | operator | admin, None for a user without a role
    priority_class: str  # the most important class it may ask for; "" = the priorities policy's default
    internal: bool = False

    def has_role(self, needed: str) -> bool:
        return self.internal or (self.role is not None and RANK[self.role] >= RANK[needed])


def bearer(header: str) -> str | None:
    """The secret from `Authorization: Bearer <t>` (or `Token <t>`, as the REST API accepts)."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() not in ("bearer", "token") or not value or " " in value:
        return None
    return value


def _role(groups: list[str | None], superuser: bool) -> str | None:
    """The same rule as core.roles.role_of, from values the lookup already fetched."""
    if superuser:
        return "admin"
    return next((name for name in reversed(ROLES) if name in groups), None)


def lookup(dig: str) -> Caller | None:
    """The token's owner, role and class from PostgreSQL in one query (blocking: call on a thread). Marks the token
    used once a minute."""
    from django.contrib.postgres.aggregates import ArrayAgg
    from django.db import DatabaseError, connection
    from django.db.models import Q
    from django.utils import timezone

    try:
        row = (UserToken.objects.filter(digest=dig, revoked__isnull=True, user__is_active=True)
               .values("pk", "priority_class", "last_used", "user_id", "user__username", "user__is_superuser")
               .annotate(groups=ArrayAgg("user__groups__name", filter=Q(user__groups__name__in=ROLES), default=[]))
               .first())
        if row is None:
            return None
        now = timezone.now()
        if row["last_used"] is None or now - row["last_used"] > timedelta(minutes=1):
            UserToken.objects.filter(pk=row["pk"]).update(last_used=now)
    except DatabaseError:
        connection.close()  # this thread's connection is broken: the next lookup reconnects
        raise
    return Caller(row["user__username"], row["user_id"], _role(row["groups"], row["user__is_superuser"]),
                  row["priority_class"] or "")


class TokenCache:
    """digest -> (expires, Caller | None): most requests never reach the database."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Caller | None]] = {}
        # A lookup that started before a revocation reached this gateway may have read the row just before the
        # revocation committed: its answer is used for that one request but not cached.
        self._dropped: dict[str, float] = {}  # digest -> when its revocation message came
        self._cleared = float("-inf")  # when every entry was last forgotten
        self._internal = internal_token()
        self._internal_caller = Caller(INTERNAL_USER, None, None, "", internal=True)

    def internal(self, plain: str) -> Caller | None:
        return self._internal_caller if hmac.compare_digest(plain, self._internal) else None

    def get(self, dig: str) -> tuple[bool, Caller | None]:
        """(known, caller): known is False when the database must be asked."""
        entry = self._entries.get(dig)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, dig: str, caller: Caller | None, asked_at: float) -> None:
        """Cache the answer of a lookup that started at `asked_at` (time.monotonic())."""
        if caller is not None and max(self._cleared, self._dropped.get(dig, float("-inf"))) >= asked_at:
            return
        if len(self._entries) >= MAX_ENTRIES:  # a flood of random tokens must not grow memory without bound
            self._entries.clear()
        ttl = POSITIVE_TTL_S if caller is not None else NEGATIVE_TTL_S
        self._entries[dig] = (time.monotonic() + ttl, caller)

    def drop(self, dig: str) -> None:
        """A revocation message: forget the token now."""
        self._entries.pop(dig, None)
        now = time.monotonic()
        if len(self._dropped) >= MAX_ENTRIES:  # only lookups in flight need these: a minute is plenty
            self._dropped = {d: t for d, t in self._dropped.items() if now - t < 60}
        self._dropped[dig] = now

    def clear(self) -> None:
        """Revocation messages may have been missed (the channel was lost): trust no cached entry."""
        self._entries.clear()
        self._cleared = time.monotonic()


class Authenticator:
    """The gateway's check of `Authorization`; database lookups run on `executor`, off the event loop."""

    def __init__(self, required: bool, executor: Executor) -> None:
        self.required = required
        self.cache = TokenCache()
        self._executor = executor

    async def caller(self, headers: dict[str, str]) -> Caller | None:
        """The authenticated caller; None when authentication is off. Reply 401/503 otherwise."""
        if not self.required:
            return None
        plain = bearer(headers.get("authorization", ""))
        if plain is None:
            raise Reply(401, "missing API key: send 'Authorization: Bearer <token>' with a Switchyard API token "
                             "(python manage.py createuser prints one)", code="invalid_api_key")
        internal = self.cache.internal(plain)
        if internal is not None:
            return internal
        dig = digest(plain)
        known, caller = self.cache.get(dig)
        if not known:
            asked_at = time.monotonic()
            try:
                caller = await asyncio.get_running_loop().run_in_executor(self._executor, lookup, dig)
            except Exception as exc:  # noqa: BLE001 - database down: say so rather than 'bad token'
                raise Reply(503, f"cannot check the API key now (database unavailable: {type(exc).__name__}); "
                                 "retry shortly", type_="server_error", headers={"Retry-After": "2"}) from None
            self.cache.put(dig, caller, asked_at)
        if caller is None:
            raise Reply(401, "unknown or revoked API key", code="invalid_api_key")
        return caller
