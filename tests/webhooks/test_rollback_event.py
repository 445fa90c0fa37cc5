"""A policy rollback reaches the receivers subscribed to `rollback` (and only them), signed, with who and why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control.policy import service
from control.webhooks import sender
from control.webhooks.models import Delivery, Receiver
from control.webhooks.verify import verify
from core.audit.context import Origin
from tests.webhooks.conftest import LocalReceiver

pytestmark = pytest.mark.django_db

SECRET = "rollback-secret-0123456789"


def heavier_gpu(document: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(document))
    doc["scorers"][0]["weight"] = 0.95
    return doc


def test_rollback_queues_a_signed_rollback_event(receiver: LocalReceiver) -> None:
    Receiver.objects.create(name="oncall", url=receiver.url, secret=SECRET, format="alertmanager",
                            events=["rollback"], internal=True)
    Receiver.objects.create(name="alerts-only", url=receiver.url, secret=SECRET, format="alertmanager",
                            events=["alert"], internal=True)
    origin = Origin(actor="alice", request_id="req-rollback-1")
    v1 = service.active("scheduler")
    service.create_revision("scheduler", heavier_gpu(v1.document), "try gpu", v1.pk, origin)
    assert not Delivery.objects.exists()  # creating or activating a revision is not a rollback

    service.rollback("scheduler", v1.pk, "p95 doubled", origin)
    [delivery] = Delivery.objects.all()
    assert delivery.receiver_name == "oncall" and delivery.event == "rollback"
    assert delivery.payload["kind"] == "scheduler" and delivery.payload["actor"] == "alice"
    assert delivery.payload["restored_version"] == v1.version and delivery.payload["description"] == "p95 doubled"

    assert sender.deliver(delivery.pk) == "done"
    [got] = receiver.requests
    assert verify(SECRET, got.headers["x-switchyard-signature"], got.body) > 0
    body = json.loads(got.body)
    [alert] = body["alerts"]
    assert alert["labels"]["alertname"] == "switchyard_rollback" and alert["labels"]["kind"] == "scheduler"
    assert alert["annotations"]["summary"] == f"scheduler policy rolled back to v{v1.version} by alice"


def test_a_refused_rollback_sends_nothing(receiver: LocalReceiver) -> None:
    Receiver.objects.create(name="oncall", url=receiver.url, secret=SECRET, events=["rollback"], internal=True)
    v1 = service.active("scheduler")
    with pytest.raises(service.Conflict):
        service.rollback("scheduler", v1.pk, "nothing to undo", Origin(actor="bob", request_id="r2"))
    assert not Delivery.objects.exists()
