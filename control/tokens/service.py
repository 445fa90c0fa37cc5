"""Issuing and revoking user API tokens, with their audit events (used by the API, the page and `createuser`).

A token's priority class is the most important class its requests may have at the gateway, so only an admin may
issue one whose class ranks above the priorities policy's default. A revocation is announced to every gateway
(`sy:tokens`, the token's digest) once it has committed.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from core.audit.context import Origin
from core.audit.record import record
from core.tokens import display_prefix, new_token
from dashboard.accounts.models import UserToken
from dashboard.fleet.revocation import announce_revocation


class UnknownClass(ValueError):
    """A priority class that the active priorities policy does not define."""


class ClassNotAllowed(PermissionError):
    """A class above the policy's default, asked for by someone who is not an admin."""


def _facts(token: UserToken) -> dict[str, Any]:
    # Never the secret or its digest: the prefix is enough to recognise a token in a list.
    facts = {"user": token.user.get_username(), "name": token.name, "prefix": token.prefix}
    if token.priority_class:
        facts["priority_class"] = token.priority_class
    return facts


def check_priority_class(name: str, *, by_admin: bool) -> str:
    """`name` if the active priorities policy defines it ('' = its default class), else UnknownClass; a class that
    ranks above the default is ClassNotAllowed unless `by_admin`."""
    if not name:
        return ""
    from control.policy.service import active
    from control.scheduler.config import Priorities

    priorities = Priorities.from_document(active("priorities").document)
    if name not in priorities.classes:
        raise UnknownClass(f"unknown priority class {name!r}; the classes are "
                           f"{', '.join(c.name for c in priorities.ordered())}")
    default = priorities.default_class
    if not by_admin and priorities.ranks_above(name, default):
        raise ClassNotAllowed(f"only an admin may issue a token of class {name!r}, which ranks above the default "
                              f"class {default!r}; yours may have {default!r} or below")
    return name


def issue(user: Any, name: str, origin: Origin, reason: str, priority_class: str = "", *,
          by_admin: bool = False) -> tuple[UserToken, str]:
    """A new token for `user`; returns it and the plain secret (shown once, never stored). `priority_class` is the
    most important gateway class of its requests (blank = the policy's default); UnknownClass when the policy has
    no such class, ClassNotAllowed when it ranks above the default and the issuer (`by_admin`) is not an admin."""
    priority_class = check_priority_class(priority_class, by_admin=by_admin)
    plain, dig = new_token("user")
    with transaction.atomic():
        token = UserToken.objects.create(user=user, prefix=display_prefix(plain), digest=dig, name=name,
                                         priority_class=priority_class)
        record(origin, "token.create", f"token:{token.pk}", reason, after=_facts(token))
    return token, plain


def revoke(token: UserToken, origin: Origin, reason: str) -> bool:
    """Revoke a token at once; False (and nothing audited) when it already was revoked."""
    with transaction.atomic():
        locked = UserToken.objects.select_for_update().select_related("user").get(pk=token.pk)
        if locked.revoked is not None:
            return False
        locked.revoked = timezone.now()
        locked.save(update_fields=["revoked"])
        record(origin, "token.revoke", f"token:{locked.pk}", reason, before={**_facts(locked), "revoked": None},
               after={**_facts(locked), "revoked": locked.revoked.isoformat()})
        _announce_revocation(locked.digest)
    token.revoked = locked.revoked
    return True


def _announce_revocation(dig: str) -> None:
    """Tell every gateway to forget the token, once the revocation has committed (the digest, never the secret):
    the one announcement that node-token revocations use too (dashboard/fleet/revocation.py)."""
    announce_revocation(dig)
