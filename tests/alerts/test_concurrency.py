"""Evaluators running at the same moment (threads, own connections): one alert, one notification."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from control.alerts import evaluator
from control.alerts.models import Alert
from control.webhooks.models import Delivery, Receiver
from dashboard.fleet.models import Node
from dashboard.metrics.latest import store_latest
from tests.alerts.conftest import rule, set_rules
from tests.conftest import make_node


@pytest.mark.django_db(transaction=True)
def test_concurrent_evaluations_open_one_alert_and_notify_once(redis_db: Any,
                                                               _close_worker_connections: None) -> None:
    Receiver.objects.create(name="r", url="https://hooks.example.com/", secret="x" * 20, events=["alert"])
    set_rules(rule(for_s=0))
    make_node("gpu-a-1", "pool-a")
    now = timezone.now()
    Node.objects.filter(name="gpu-a-1").update(last_seen=now)
    store_latest("gpu-a-1", {"node": "gpu-a-1", "pool": "pool-a", "received": now.isoformat(), "host": {},
                             "inference": {}, "gpus": [{"index": 0, "temp_c": 95.0}]})
    start = threading.Barrier(5)
    results: list[Any] = []

    def run() -> None:
        try:
            start.wait()
            results.append(evaluator.evaluate(now))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 5 and any(r is not None for r in results)
    assert Alert.objects.count() == 1 and Alert.objects.get().state == "firing"
    assert Delivery.objects.count() == 1
