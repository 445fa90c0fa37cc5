"""Two workers never send one delivery twice: threads with their own database connections race on one row."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from control.webhooks import sender
from control.webhooks.events import emit
from control.webhooks.models import Attempt, Delivery, Receiver
from tests.webhooks.conftest import LocalReceiver


@pytest.mark.django_db(transaction=True)
def test_racing_workers_send_a_delivery_once(receiver: LocalReceiver, _close_worker_connections: None) -> None:
    Receiver.objects.create(name="r", url=receiver.url, secret="x" * 20, events=["alert"], internal=True)
    [d] = emit("alert", {"alerts": []})
    start = threading.Barrier(6)
    results: list[Any] = []

    def worker() -> None:
        try:
            start.wait()
            results.append(sender.deliver(d.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count("done") == 1 and results.count(None) == 5
    assert len(receiver.requests) == 1
    assert Attempt.objects.filter(delivery=d).count() == 1 and Delivery.objects.get().attempts == 1
