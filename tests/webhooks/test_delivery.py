"""Deliveries to a real local HTTP receiver: signature, payload schema, retries by status, auto-disable, CAS."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from control.webhooks import sender
from control.webhooks.events import emit
from control.webhooks.models import Attempt, Delivery, Receiver
from control.webhooks.verify import SignatureError, verify
from core.audit.models import AuditEvent
from tests.webhooks.conftest import LocalReceiver

pytestmark = pytest.mark.django_db

SECRET = "s3cret-s3cret-s3cret"
ALERT = {"status": "firing", "labels": {"alertname": "gpu-hot", "severity": "critical", "pool": "pool-a",
                                         "node": "gpu-a-1", "gpu": "0"},
         "annotations": {"summary": "GPU 0 of gpu-a-1 at 91 °C"}, "startsAt": "2026-11-28T14:00:00Z",
         "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://sy.example/alerts/", "fingerprint": "abc123"}


def make_receiver(rx: LocalReceiver, **kw: Any) -> Receiver:
    values = {"name": "oncall", "url": rx.url, "secret": SECRET, "format": "alertmanager", "events": ["alert"],
              "internal": True, **kw}
    return Receiver.objects.create(**values)


def later(seconds: float = 4000) -> Any:
    return timezone.now() + timedelta(seconds=seconds)


def test_alertmanager_payload_is_signed_and_has_the_v4_schema(receiver: LocalReceiver) -> None:
    make_receiver(receiver)
    [d] = emit("alert", {"alerts": [ALERT]})
    assert sender.deliver(d.pk) == "done"
    [got] = receiver.requests
    assert verify(SECRET, got.headers["x-switchyard-signature"], got.body) > 0
    assert got.headers["x-switchyard-event"] == "alert" and got.headers["x-switchyard-delivery"] == str(d.pk)
    body = json.loads(got.body)
    assert set(body) == {"version", "receiver", "status", "groupLabels", "commonLabels", "commonAnnotations",
                         "externalURL", "groupKey", "truncatedAlerts", "alerts"}
    assert body["version"] == "4" and body["receiver"] == "oncall" and body["status"] == "firing"
    assert body["commonLabels"]["node"] == "gpu-a-1" and body["groupLabels"] == {"alertname": "gpu-hot"}
    assert body["truncatedAlerts"] == 0 and body["groupKey"] == '{}:{alertname="gpu-hot"}'
    [alert] = body["alerts"]
    assert set(alert) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    [attempt] = Attempt.objects.filter(delivery=d)
    assert attempt.status == 200 and attempt.outcome == "ok" and attempt.body_excerpt == "ok"


def test_a_tampered_or_wrongly_keyed_body_fails_verification(receiver: LocalReceiver) -> None:
    make_receiver(receiver)
    [d] = emit("alert", {"alerts": [ALERT]})
    sender.deliver(d.pk)
    got = receiver.requests[0]
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, got.headers["x-switchyard-signature"], got.body + b" ")
    with pytest.raises(SignatureError, match="does not match"):
        verify("another-secret-entirely", got.headers["x-switchyard-signature"], got.body)


def test_slack_format(receiver: LocalReceiver) -> None:
    make_receiver(receiver, format="slack")
    [d] = emit("alert", {"alerts": [ALERT, {**ALERT, "status": "resolved", "fingerprint": "x"}]})
    sender.deliver(d.pk)
    body = json.loads(receiver.requests[0].body)
    assert body["text"] == "1 firing, 1 resolved"
    assert body["attachments"][0]["title"].startswith("[FIRING] gpu-hot (pool=pool-a node=gpu-a-1 gpu=0)")
    assert body["attachments"][1]["title"].startswith("[RESOLVED]")


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_retryable_statuses_are_retried_with_backoff_then_succeed(receiver: LocalReceiver, status: int) -> None:
    make_receiver(receiver)
    receiver.answer(status, status, 200)
    [d] = emit("alert", {"alerts": [ALERT]})
    assert sender.deliver(d.pk) == "pending"
    d.refresh_from_db()
    assert d.attempts == 1 and d.last_status == status and d.next_attempt_at > timezone.now()
    assert sender.deliver(d.pk) is None  # not due yet: nobody sends it early
    first_wait = d.next_attempt_at
    assert sender.deliver(d.pk, now=later()) == "pending"
    d.refresh_from_db()
    assert (d.next_attempt_at - timezone.now()) > (first_wait - timezone.now())  # exponential: the wait grew
    assert sender.deliver(d.pk, now=later(8000)) == "done"
    assert [a.outcome for a in Attempt.objects.filter(delivery=d)] == ["retry", "retry", "ok"]
    assert len(receiver.requests) == 3


def test_retry_after_is_honoured(receiver: LocalReceiver) -> None:
    make_receiver(receiver)
    receiver.answer(429, 200, headers={"Retry-After": "120"})
    [d] = emit("alert", {"alerts": [ALERT]})
    sender.deliver(d.pk)
    d.refresh_from_db()
    assert timedelta(seconds=110) < d.next_attempt_at - timezone.now() <= timedelta(seconds=121)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301])
def test_client_errors_are_not_retried(receiver: LocalReceiver, status: int) -> None:
    make_receiver(receiver)
    receiver.answer(status, headers={"Location": "http://elsewhere.example/"} if status == 301 else None)
    [d] = emit("alert", {"alerts": [ALERT]})
    assert sender.deliver(d.pk) == "failed"
    d.refresh_from_db()
    assert d.attempts == 1 and d.finished is not None and f"HTTP {status}" in d.last_error
    assert sender.due(now=later(10**6)) == []
    assert len(receiver.requests) == 1


def test_network_errors_are_retried_and_give_up_after_the_last_attempt() -> None:
    from tests.conftest import free_port

    r = Receiver.objects.create(name="down", url=f"http://127.0.0.1:{free_port()}/", secret=SECRET,
                                events=["alert"], internal=True)
    [d] = emit("alert", {"alerts": [ALERT]})
    states = [sender.deliver(d.pk, now=later(10**5 * (i + 1))) for i in range(sender.MAX_ATTEMPTS)]
    assert states == ["pending"] * (sender.MAX_ATTEMPTS - 1) + ["failed"]
    d.refresh_from_db()
    assert "gave up after 6 attempts" in d.last_error and "ConnectError" in d.last_error
    errors = list(Attempt.objects.filter(delivery=d).values_list("status", "outcome"))
    assert errors == [(None, "retry")] * 5 + [(None, "failed")]
    r.refresh_from_db()
    assert r.consecutive_failures == 1 and r.enabled


def test_repeated_permanent_failures_disable_the_receiver_with_an_audit_event(receiver: LocalReceiver) -> None:
    r = make_receiver(receiver)
    receiver.answer(410)
    for _ in range(sender.AUTO_DISABLE_AFTER):
        [d] = emit("alert", {"alerts": [ALERT]})
        sender.deliver(d.pk)
    r.refresh_from_db()
    assert not r.enabled and "auto-disabled after 5 failed deliveries" in r.disabled_reason
    event = AuditEvent.objects.get(action="webhook.auto_disable")
    assert event.actor == "webhooks" and event.target == f"webhook:{r.pk}" and SECRET not in json.dumps(event.after)
    assert emit("alert", {"alerts": [ALERT]}) == []  # disabled receivers get nothing new


def test_a_success_resets_the_failure_count(receiver: LocalReceiver) -> None:
    r = make_receiver(receiver)
    receiver.answer(404, 404, 200)
    for _ in range(3):
        sender.deliver(emit("alert", {"alerts": [ALERT]})[0].pk)
    r.refresh_from_db()
    assert r.consecutive_failures == 0 and r.enabled


def test_two_claims_on_one_delivery_send_it_once(receiver: LocalReceiver) -> None:
    make_receiver(receiver)
    [d] = emit("alert", {"alerts": [ALERT]})
    assert sender.claim(d.pk) is True
    assert sender.claim(d.pk) is False
    assert sender.deliver(d.pk) is None
    assert receiver.requests == []


def test_abandoned_sending_rows_are_picked_up_again(receiver: LocalReceiver) -> None:
    make_receiver(receiver)
    [d] = emit("alert", {"alerts": [ALERT]})
    assert sender.claim(d.pk)  # a worker took it and died
    assert sender.due() == []
    assert sender.due(now=later(sender.STALE_SENDING_S + 5)) == [d.pk]


def test_emit_fans_out_to_subscribed_enabled_receivers_only(receiver: LocalReceiver) -> None:
    make_receiver(receiver, name="alerts-only", events=["alert"])
    make_receiver(receiver, name="scaling", events=["scaling", "rollback"])
    make_receiver(receiver, name="off", events=["scaling"], enabled=False)
    assert [d.receiver_name for d in emit("scaling", {"pool": "pool-a", "summary": "pool-a +2"})] == ["scaling"]
    assert [d.receiver_name for d in emit("alert", {"alerts": [ALERT]})] == ["alerts-only"]
    with pytest.raises(ValueError, match="unknown event 'nope'"):
        emit("nope", {})


def test_a_scaling_event_in_alertmanager_format(receiver: LocalReceiver) -> None:
    make_receiver(receiver, events=["scaling"])
    [d] = emit("scaling", {"pool": "pool-a", "action": "scale_out", "summary": "pool-a 2 -> 4 nodes"})
    sender.deliver(d.pk)
    body = json.loads(receiver.requests[0].body)
    assert body["version"] == "4" and body["alerts"][0]["labels"]["alertname"] == "switchyard_scaling"
    assert body["alerts"][0]["labels"]["pool"] == "pool-a" and body["switchyard"]["payload"]["action"] == "scale_out"


def test_huge_payloads_are_refused_and_nothing_is_queued() -> None:
    Receiver.objects.create(name="r", url="https://hooks.example.com/", secret=SECRET, events=["job"])
    with pytest.raises(ValueError, match="the limit is 524288"):
        emit("job", {"blob": "x" * 600_000})
    assert Delivery.objects.count() == 0


def test_a_huge_answer_is_read_only_as_an_excerpt(receiver: LocalReceiver) -> None:
    make_receiver(receiver)
    receiver.answer(500, body=b"E" * 5_000_000)
    [d] = emit("alert", {"alerts": [ALERT]})
    sender.deliver(d.pk)
    assert len(Attempt.objects.get(delivery=d).body_excerpt) == 1000


def test_send_callback_posts_plain_json_signed_when_given_a_secret(receiver: LocalReceiver,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A callback URL is never internal; this one test lets loopback through to see the body on the wire.
    from control.webhooks import addresses

    monkeypatch.setattr(addresses, "refusal", lambda ip, internal: None)
    d = sender.send_callback(receiver.url, "job", {"job": "j-1", "state": "done"}, secret=SECRET)
    assert sender.deliver(d.pk) == "done"
    got = receiver.requests[0]
    verify(SECRET, got.headers["x-switchyard-signature"], got.body)
    body = json.loads(got.body)
    assert body["event"] == "job" and body["data"] == {"job": "j-1", "state": "done"} and body["delivery"] == d.pk


def test_a_deleted_receiver_fails_its_pending_delivery(receiver: LocalReceiver) -> None:
    r = make_receiver(receiver)
    [d] = emit("alert", {"alerts": [ALERT]})
    r.delete()
    assert sender.deliver(d.pk) == "failed"
    d.refresh_from_db()
    assert d.last_error == "the receiver was deleted" and receiver.requests == []
