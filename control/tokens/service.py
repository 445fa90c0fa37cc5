"""Issuing and revoking user API tokens, with their audit events (used by the API and by `createuser`)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from control.audit.context import Origin
from control.audit.record import record
from dashboard.accounts.models import UserToken
from dashboard.accounts.tokens import display_prefix, new_token


class UnknownClass(ValueError):
    """A priority class that the active priorities policy does not define."""


def _facts(token: UserToken) -> dict[str, Any]:
    # Never the secret or its digest: the prefix is enough to recognise a token in a list.
    facts = {"user": token.user.get_username(), "name": token.name, "prefix": token.prefix}
    if token.priority_class:
        facts["priority_class"] = token.priority_class
    return facts


def check_priority_class(name: str) -> str:
    """`name` if the active priorities policy defines it ('' = its default class), else UnknownClass."""
    if not name:
        return ""
    from control.policy.service import active

    classes = [c["name"] for c in active("priorities").document["classes"]]
    if name not in classes:
        raise UnknownClass(f"unknown priority class {name!r}; the classes are {', '.join(classes)}")
    return name


def issue(user: Any, name: str, origin: Origin, reason: str, priority_class: str = "") -> tuple[UserToken, str]:
    """A new token for `user`; returns it and the plain secret (shown once, never stored). `priority_class` is the
    gateway class of its requests (blank = the policy's default); UnknownClass when the policy has no such class."""
    priority_class = check_priority_class(priority_class)
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
    token.revoked = locked.revoked
    return True
