"""Failed sign-ins counted per user name and per client address in Redis; past a limit, sign-in waits.

Why not django-axes: it is well maintained, but it writes a database row per attempt and brings its own models,
admin and middleware, while what is needed here is two counters with an expiry shared by every `serve` replica —
which Redis, already a dependency, gives in one pipelined round trip. The counters are fixed windows: the first
failure starts the window (SWITCHYARD_LOGIN_WINDOW_S) and the limit holds until it ends.

Per user name (default 10 failures) stops guessing one account's password from many addresses; per address
(default 50) stops one client from trying many accounts. The per-user limit lets anyone lock a known user name out
for a window; that is the usual trade (a lockout ends by itself, a guessed password does not), and the window is
short. The address is REMOTE_ADDR, as in the audit: behind a reverse proxy every client shares the proxy's address,
so raise SWITCHYARD_LOGIN_MAX_FAILURES_PER_ADDRESS there. When Redis is down, sign-in is not throttled (and a
warning is logged): locking every operator out during an incident would be worse.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

KEY = "sy:login:fail:{}:{}"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0
    scope: str = ""  # "user" or "address": which limit was reached

    def message(self) -> str:
        minutes = max(1, -(-self.retry_after_s // 60))
        who = "this user name" if self.scope == "user" else "your address"
        return (f"Too many failed sign-ins for {who}. Try again in {minutes} minute{'s' if minutes != 1 else ''}; "
                "if you have forgotten the password, an admin can set a new one "
                "(manage.py createuser NAME --role ROLE --password NEW).")


def _keys(username: str, address: str | None) -> list[tuple[str, str, int]]:
    # Hashed: a user name is chosen by whoever types it, and a key must not carry arbitrary bytes or length.
    user = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    out = [("user", KEY.format("user", user), settings.LOGIN_MAX_FAILURES_PER_USER)]
    if address:
        out.append(("address", KEY.format("addr", address), settings.LOGIN_MAX_FAILURES_PER_ADDRESS))
    return out


def _redis() -> Any:
    from dashboard.metrics.latest import redis_client

    return redis_client()


def check(username: str, address: str | None) -> Verdict:
    """Whether a sign-in for `username` from `address` may be tried now."""
    keys = _keys(username, address)
    try:
        p = _redis().pipeline(transaction=False)
        for _, key, _ in keys:
            p.get(key)
            p.ttl(key)
        replies = p.execute()
    except Exception as exc:  # noqa: BLE001 - see the module's docstring: fail open, loudly
        log.warning("sign-in throttle unavailable (Redis: %s); not throttling", type(exc).__name__)
        return Verdict(True)
    for i, (scope, _, limit) in enumerate(keys):
        failures, ttl = int(replies[2 * i] or 0), int(replies[2 * i + 1])
        if failures >= limit:
            return Verdict(False, ttl if ttl > 0 else settings.LOGIN_WINDOW_S, scope)
    return Verdict(True)


def failed(username: str, address: str | None) -> None:
    """Count one failed sign-in against the user name and the address."""
    try:
        p = _redis().pipeline(transaction=False)
        for _, key, _ in _keys(username, address):
            # The first failure starts the window (SET NX EX, then INCR keeps the expiry; EXPIRE NX needs Redis 7).
            p.set(key, 0, ex=settings.LOGIN_WINDOW_S, nx=True)
            p.incr(key)
        p.execute()
    except Exception as exc:  # noqa: BLE001
        log.warning("sign-in throttle could not count a failure (Redis: %s)", type(exc).__name__)


def succeeded(username: str) -> None:
    """A correct password clears the user name's count (the address keeps its own)."""
    try:
        _redis().delete(_keys(username, None)[0][1])
    except Exception as exc:  # noqa: BLE001
        log.warning("sign-in throttle could not reset a count (Redis: %s)", type(exc).__name__)
