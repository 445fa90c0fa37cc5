"""createuser and createnode --rotate write audit events for user, role and token changes."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from core.audit.models import AuditEvent
from tests.control.conftest import events_since, last_event_id

pytestmark = pytest.mark.django_db


def run(*args: str) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_createuser_audits_creation_role_change_and_token() -> None:
    mark = last_event_id()
    run("createuser", "opal", "--role", "viewer", "--reason", "new on-call")
    events = events_since(mark)
    assert [(e.action, e.target) for e in events] == [("user.create", "user:opal"), ("token.create",
                                                                                    events[1].target)]
    assert events[0].after == {"role": "viewer"} and events[0].reason == "new on-call"
    assert events[0].actor.startswith("manage.py createuser")
    assert len({e.request_id for e in events}) == 1  # one command run, one id
    mark = last_event_id()
    run("createuser", "opal", "--role", "operator")
    role, token = events_since(mark)
    assert (role.action, role.before, role.after) == ("user.role", {"role": "viewer"}, {"role": "operator"})
    assert token.action == "token.create" and role.request_id == token.request_id


def test_createnode_rotate_audits_revoke_and_create() -> None:
    mark = last_event_id()
    run("createnode", "gpu-a-1", "--pool", "pool-a")
    assert [e.action for e in events_since(mark)] == ["node.create", "node.token.create"]
    mark = last_event_id()
    token = run("createnode", "gpu-a-1", "--pool", "pool-a", "--rotate", "--reason", "token leaked")[-1]
    revoke, create = events_since(mark)
    assert (revoke.action, revoke.reason, revoke.details) == ("node.token.revoke", "token leaked", {"revoked": 1})
    assert create.action == "node.token.create" and token.startswith(create.after["prefix"])
    assert token not in str(AuditEvent.objects.values_list("after", flat=True))
