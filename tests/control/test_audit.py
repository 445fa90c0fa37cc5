"""The audit trail: append-only at the database, request ids on every response, the read API's filters and paging."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from control.policy.models import PolicyRevision
from core.audit.context import Origin
from core.audit.models import AuditEvent
from core.audit.record import record


def some_event() -> AuditEvent:
    return record(Origin.system("controller"), "test.action", "thing:1", "because", before={"a": 1}, after={"a": 2})


@pytest.mark.parametrize("sql", [
    "UPDATE audit_auditevent SET reason = 'rewritten' WHERE id = %s",
    "DELETE FROM audit_auditevent WHERE id = %s",
])
def test_raw_sql_update_and_delete_on_the_audit_table_fail(db: None, sql: str) -> None:
    event = some_event()
    with pytest.raises(DatabaseError, match="audit_append_only"), transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql, [event.pk])
    event.refresh_from_db()
    assert event.reason == "because"


def test_the_orm_cannot_change_or_delete_an_event_either(db: None) -> None:
    event = some_event()
    event.reason = "rewritten"
    with pytest.raises(DatabaseError), transaction.atomic():
        event.save()
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).reason == "because"


def test_policy_revisions_are_immutable_too(db: None) -> None:
    from control.policy import service

    rev = service.active("scheduler")
    with pytest.raises(DatabaseError, match="policy_revision_immutable"), transaction.atomic(), \
            connection.cursor() as cur:
        cur.execute("UPDATE policy_policyrevision SET reason = 'x' WHERE id = %s", [rev.pk])
    with pytest.raises(DatabaseError), transaction.atomic():
        PolicyRevision.objects.filter(pk=rev.pk).delete()


def test_record_refuses_an_event_without_a_reason(db: None) -> None:
    with pytest.raises(ValueError, match="reason"):
        record(Origin.system(), "x", "y", "  ")


def test_every_response_carries_a_fresh_request_id(client: Any, api: Callable[..., Any]) -> None:
    ids = {client.get("/accounts/login/")["X-Request-ID"], client.get("/no/such/page/")["X-Request-ID"],
           api(None).get("/api/v1/audit/")["X-Request-ID"], api("viewer").get("/api/v1/audit/")["X-Request-ID"]}
    assert len(ids) == 4 and all(len(i) == 32 for i in ids)
    # A client cannot choose the id (it would let it attach its changes to someone else's request).
    assert client.get("/accounts/login/", HTTP_X_REQUEST_ID="chosen")["X-Request-ID"] != "chosen"


def test_audit_api_filters_and_paging(api: Callable[..., Any]) -> None:
    origin = Origin.system("controller")
    for i in range(5):
        record(origin, "node.drain", f"node:n{i}", "scale in")
    record(origin, "policy.rollback", "policy:scheduler", "guard tripped")
    viewer = api("viewer")
    body = viewer.get("/api/v1/audit/", {"actor": "controller", "limit": 2}).json()
    assert body["count"] == 6 and len(body["results"]) == 2 and body["next"]
    assert body["results"][0]["action"] == "policy.rollback"  # newest first
    assert viewer.get("/api/v1/audit/", {"action": "node.*"}).json()["count"] == 5
    assert viewer.get("/api/v1/audit/", {"action": "node.drain", "target": "node:n3"}).json()["count"] == 1
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert viewer.get("/api/v1/audit/", {"since": future}).json()["count"] == 0
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert viewer.get("/api/v1/audit/", {"since": past, "actor": "controller"}).json()["count"] == 6
    bad = viewer.get("/api/v1/audit/", {"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.json()["fields"]
    assert viewer.get("/api/v1/audit/", {"since": "2026-13-45T99:00:00"}).status_code == 400
    assert viewer.get("/api/v1/audit/", {"actor": "a\x00b"}).status_code == 400
    event = body["results"][0]
    detail = viewer.get(f"/api/v1/audit/{event['id']}/").json()
    assert detail["reason"] == "guard tripped" and detail["request_id"]
    assert viewer.get("/api/v1/audit/999999999/").status_code == 404


def test_audit_api_is_read_only(api: Callable[..., Any]) -> None:
    event = some_event()
    admin = api("admin")
    assert admin.post("/api/v1/audit/", {"actor": "x"}, format="json").status_code == 405
    assert admin.delete(f"/api/v1/audit/{event.pk}/").status_code == 405
    assert admin.put(f"/api/v1/audit/{event.pk}/", {}, format="json").status_code == 405


def test_one_request_one_id_across_its_events(api: Callable[..., Any]) -> None:
    """The request id groups what one request changed, and differs between requests."""
    from control.policy import service

    a = api("operator").post("/api/v1/policies/alerts/rollback/", {"revision": service.active("alerts").pk,
                             "reason": "r"}, format="json")
    assert a.status_code == 409  # nothing to roll back to: and nothing recorded under its id
    assert not AuditEvent.objects.filter(request_id=a["X-Request-ID"]).exists()
