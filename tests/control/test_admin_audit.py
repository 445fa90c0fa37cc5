"""Changes through the Django admin need a reason and are audited like every other change; deletes are off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model

from dashboard.fleet.models import Node, Pool
from tests.conftest import make_node
from tests.control.conftest import events_since, last_event_id


def node_form(node: Node, **changes: Any) -> dict[str, Any]:
    data = {"name": node.name, "pool": node.pool_id, "state": node.state, "endpoint": node.endpoint,
            "interval_s": "", "gpus-TOTAL_FORMS": "0", "gpus-INITIAL_FORMS": "0", "gpus-MIN_NUM_FORMS": "0",
            "gpus-MAX_NUM_FORMS": "1000"}
    data.update(changes)
    return data


def test_node_change_needs_a_reason_and_is_audited(browser: Callable[..., Any]) -> None:
    make_node("gpu-a-1", "pool-a")
    node = Node.objects.get(name="gpu-a-1")
    client = browser("admin")
    client.handler.enforce_csrf_checks = False  # the admin's own CSRF handling is Django's, tested there
    url = f"/admin/fleet/node/{node.pk}/change/"
    assert "Reason" in client.get(url).content.decode()

    mark = last_event_id()
    page = client.post(url, node_form(node, state="cordoned"))
    assert page.status_code == 200 and "This field is required" in page.content.decode()
    assert Node.objects.get(pk=node.pk).state == "active" and events_since(mark) == []

    resp = client.post(url, node_form(node, state="cordoned", interval_s="10", audit_reason="rack maintenance"))
    assert resp.status_code == 302, resp.content.decode()[-2000:]
    [event] = events_since(mark)
    assert (event.action, event.target, event.actor, event.reason) == ("node.update", "node:gpu-a-1", "admin",
                                                                        "rack maintenance")
    assert event.before["state"] == "active" and event.after["state"] == "cordoned"
    assert event.details == {"via": "admin", "fields": ["interval_s", "state"]}
    assert event.request_id == resp["X-Request-ID"]


def test_role_change_on_a_user_is_audited_and_deletes_are_off(browser: Callable[..., Any]) -> None:
    from django.contrib.auth.models import Group

    client = browser("admin")
    client.handler.enforce_csrf_checks = False
    viewer = get_user_model().objects.get(username="viewer")
    operator_group = Group.objects.get(name="operator")
    url = f"/admin/auth/user/{viewer.pk}/change/"
    data = {"username": "viewer", "first_name": "", "last_name": "", "email": "", "is_active": "on",
            "groups": [operator_group.pk], "last_login_0": "", "last_login_1": "",
            "date_joined_0": "2026-11-28", "date_joined_1": "12:00:00", "audit_reason": "on call this week"}
    mark = last_event_id()
    resp = client.post(url, data)
    assert resp.status_code == 302, resp.content.decode()[-3000:]
    [event] = events_since(mark)
    assert (event.action, event.target, event.reason) == ("user.update", "user:viewer", "on call this week")
    assert event.before["groups"] == ["viewer"] and event.after["groups"] == ["operator"]
    assert event.after["password"] == "***"
    # Promoting to admin through the group also gives Django's admin flags, as set_role does.
    admin_group = Group.objects.get(name="admin")
    assert client.post(url, {**data, "groups": [admin_group.pk], "audit_reason": "new lead"}).status_code == 302
    promoted = get_user_model().objects.get(pk=viewer.pk)
    assert promoted.is_staff and promoted.is_superuser
    assert client.post(url, {**data, "groups": [operator_group.pk], "audit_reason": "back"}).status_code == 302
    assert not get_user_model().objects.get(pk=viewer.pk).is_superuser
    assert client.get(f"/admin/auth/user/{viewer.pk}/delete/").status_code == 403
    assert client.post(f"/admin/fleet/pool/{Pool.objects.create(name='p').pk}/delete/",
                       {"post": "yes"}).status_code == 403
    assert client.get("/admin/auth/group/add/").status_code == 403  # roles are fixed


def test_audit_events_and_revisions_are_read_only_in_the_admin(browser: Callable[..., Any]) -> None:
    from control.policy import service
    from core.audit.models import AuditEvent

    client = browser("admin")
    rev = service.active("scheduler")
    event = AuditEvent.objects.order_by("-id").first()
    assert client.get(f"/admin/policy/policyrevision/{rev.pk}/change/").status_code == 200  # viewable
    assert client.post(f"/admin/policy/policyrevision/{rev.pk}/change/", {"reason": "x"}).status_code == 403
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403


def test_a_password_set_in_the_admin_is_audited_without_the_password(browser: Callable[..., Any]) -> None:
    client = browser("admin")
    client.handler.enforce_csrf_checks = False
    viewer = get_user_model().objects.get(username="viewer")
    mark = last_event_id()
    resp = client.post(f"/admin/auth/user/{viewer.pk}/password/",
                       {"password1": "a-new-long-passphrase-42", "password2": "a-new-long-passphrase-42",
                        "usable_password": "true"})
    assert resp.status_code == 302, resp.content.decode()[-2000:]
    [event] = events_since(mark)
    assert (event.action, event.target, event.actor) == ("user.password", "user:viewer", "admin")
    assert "a-new-long-passphrase-42" not in str(event.before) + str(event.after) + str(event.details)
