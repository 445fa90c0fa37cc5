"""Silences suppress delivery while active, expire (by time or by an operator) and are audited."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from control.alerts import evaluator, silences
from control.alerts.models import Alert
from control.webhooks import sender
from control.webhooks.models import Delivery, Receiver
from control.webhooks.verify import verify
from core.audit.context import Origin
from core.audit.models import AuditEvent
from tests.alerts.conftest import at, rule, set_rules

pytestmark = pytest.mark.django_db
OP = Origin("op", "req-1", "127.0.0.1")


def test_a_silence_suppresses_delivery_and_the_alert_notifies_once_it_expires(fleet: Any, receiver: Any) -> None:
    Receiver.objects.create(name="oncall", url=receiver.url, secret="s" * 20, events=["alert"], internal=True)
    set_rules(rule(for_s=0))
    silences.create([{"label": "node", "op": "=", "value": "gpu-a-1"}], at(60), "maintenance", OP, now=at(0))
    for s in (0, 10, 50):
        fleet("gpu-a-1", at(s), gpus=[{"temp_c": 90.0}])
        evaluator.evaluate(at(s))
    a = Alert.objects.get()
    assert a.state == "firing" and a.silenced and a.notified == ""
    assert Delivery.objects.count() == 0
    fleet("gpu-a-1", at(60), gpus=[{"temp_c": 90.0}])
    evaluator.evaluate(at(60))  # the silence ended at 60
    a.refresh_from_db()
    assert not a.silenced and a.notified == "firing"
    [d] = Delivery.objects.all()
    assert sender.deliver(d.pk) == "done"
    got = receiver.requests[0]
    verify("s" * 20, got.headers["x-switchyard-signature"], got.body)
    assert json.loads(got.body)["alerts"][0]["labels"]["node"] == "gpu-a-1"


def test_a_silence_does_not_touch_other_alerts(fleet: Any) -> None:
    Receiver.objects.create(name="oncall", url="https://hooks.example.com/", secret="s" * 20, events=["alert"])
    set_rules(rule(for_s=0))
    silences.create([{"label": "node", "op": "=~", "value": "gpu-a-1"}], at(600), "maintenance", OP, now=at(0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    fleet("gpu-a-2", at(0), gpus=[{"temp_c": 90.0}])
    evaluator.evaluate(at(0))
    [d] = Delivery.objects.all()
    assert [a["labels"]["node"] for a in d.payload["alerts"]] == ["gpu-a-2"]


def test_an_alert_silenced_its_whole_life_never_notifies_at_all(fleet: Any) -> None:
    Receiver.objects.create(name="oncall", url="https://hooks.example.com/", secret="s" * 20, events=["alert"])
    set_rules(rule(for_s=0))
    silences.create([{"label": "alertname", "op": "=", "value": "gpu-hot"}], at(600), "known", OP, now=at(0))
    for s, temp in ((0, 90.0), (10, 70.0)):
        fleet("gpu-a-1", at(s), gpus=[{"temp_c": temp}])
        evaluator.evaluate(at(s))
    assert Alert.objects.get().state == "resolved" and Delivery.objects.count() == 0


def test_a_resolution_is_sent_even_under_a_silence_if_the_firing_was_sent(fleet: Any) -> None:
    Receiver.objects.create(name="oncall", url="https://hooks.example.com/", secret="s" * 20, events=["alert"])
    set_rules(rule(for_s=0))
    fleet("gpu-a-1", at(0), gpus=[{"temp_c": 90.0}])
    evaluator.evaluate(at(0))
    silences.create([{"label": "alertname", "op": "=", "value": "gpu-hot"}], at(600), "on it", OP, now=at(5))
    fleet("gpu-a-1", at(10), gpus=[{"temp_c": 70.0}])
    evaluator.evaluate(at(10))
    statuses = [d.payload["alerts"][0]["status"] for d in Delivery.objects.order_by("id")]
    assert statuses == ["firing", "resolved"]  # the receiver is never left with an incident that ended


def test_expiring_a_silence_is_audited_and_ends_it(db: None) -> None:
    from django.utils import timezone

    s = silences.create([{"label": "pool", "op": "=", "value": "pool-a"}], timezone.now() + timedelta(hours=1),
                        "upgrade", OP)
    silences.expire(s.pk, "upgrade done", OP)
    s.refresh_from_db()
    assert not s.active_at(timezone.now()) and s.expired_by == "op"
    events = list(AuditEvent.objects.filter(target=f"silence:{s.pk}").order_by("id"))
    assert [e.action for e in events] == ["silence.create", "silence.expire"]
    assert events[0].reason == "upgrade" and events[0].after["matchers"][0]["value"] == "pool-a"
    assert events[1].reason == "upgrade done" and events[1].after["expired_at"] is not None
    with pytest.raises(silences.SilenceError, match="already ended"):
        silences.expire(s.pk, "again", OP)


@pytest.mark.parametrize(("matchers", "message"), [
    ([], "at least one matcher"),
    ([{"label": "node", "op": "=~", "value": "gpu-(a"}], "matchers[0].value"),
    ([{"label": "node", "op": "=~", "value": "gpu-(a"}], "invalid regular expression"),
    ([{"label": "colour", "op": "=", "value": "red"}], "matchers[0].label"),
    ([{"label": "node", "op": "~~", "value": "x"}], "matchers[0].op"),
    ("node=x", "at least one matcher"),
])
def test_bad_matchers_are_refused_and_nothing_is_stored(db: None, matchers: Any, message: str) -> None:
    from django.utils import timezone

    with pytest.raises(silences.SilenceError) as err:
        silences.create(matchers, timezone.now() + timedelta(hours=1), "x", OP)
    assert message in err.value.message or message in json.dumps(err.value.fields)
    assert not AuditEvent.objects.filter(action="silence.create").exists()
