"""A request's priority class. The caller's token sets the most important class it may have (the internal token:
the top class; a token with no class: the policy's default); `X-Priority` may lower a request's class, never raise
it above that ceiling. Without authentication (`--auth off`) every class may be asked for."""

from __future__ import annotations

from control.scheduler.auth import Caller
from control.scheduler.config import Priorities
from control.scheduler.replies import Reply


def ceiling(priorities: Priorities, caller: Caller | None) -> str:
    """The most important class `caller` may ask for."""
    if caller is None or caller.internal:
        return priorities.top_class
    return priorities.class_or_default(caller.priority_class)


def user_ceiling(priorities: Priorities, token_class: str | None, admin: bool) -> str:
    """The most important class a user may give work submitted outside the gateway (a batch job): an admin any
    class; otherwise the class of the API token it came with (a session, or a token without a class: the default).
    The job runner then sends it with the internal token, so this is where the ceiling must hold."""
    if admin:
        return priorities.top_class
    return priorities.class_or_default(token_class or "")


def request_class(priorities: Priorities, wanted: str, caller: Caller | None) -> str:
    """The class of a request whose `X-Priority` header is `wanted` ('' when absent)."""
    allowed = ceiling(priorities, caller)
    wanted = wanted.strip()
    if not wanted:
        return priorities.default_class if caller is None else allowed
    if wanted not in priorities.classes:
        raise Reply(400, f"unknown priority class {wanted!r} in X-Priority; the classes are "
                         f"{', '.join(c.name for c in priorities.ordered())}", param="X-Priority")
    if priorities.ranks_above(wanted, allowed):
        raise Reply(403, f"X-Priority {wanted!r} is above what this API token allows: its class is {allowed!r} "
                         "(X-Priority may only lower a request's class)", code="priority_not_allowed",
                    param="X-Priority")
    return wanted
