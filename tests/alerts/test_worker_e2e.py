"""End to end with the real processes: a Celery worker runs `control.alerts.tasks.evaluate`, the firing alert is
queued on commit as `control.webhooks.tasks.deliver`, and a real local HTTP receiver gets it signed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from control.alerts.tasks import evaluate
from control.webhooks.models import Delivery, Receiver
from control.webhooks.verify import verify
from dashboard.fleet.models import Node
from dashboard.metrics.latest import store_latest
from tests.alerts.conftest import rule, set_rules
from tests.conftest import make_node, subprocess_env
from tests.webhooks.conftest import LocalReceiver

ROOT = Path(__file__).resolve().parents[2]
SECRET = "end-to-end-secret-123"


@pytest.mark.django_db(transaction=True)
def test_worker_evaluates_and_delivers_a_signed_alertmanager_message(redis_db: Any, receiver: LocalReceiver,
                                                                    _close_worker_connections: None) -> None:
    Receiver.objects.create(name="oncall", url=receiver.url, secret=SECRET, events=["alert"], internal=True)
    set_rules(rule(for_s=0))
    make_node("gpu-a-1", "pool-a")
    now = timezone.now()
    Node.objects.filter(name="gpu-a-1").update(last_seen=now)
    store_latest("gpu-a-1", {"node": "gpu-a-1", "pool": "pool-a", "received": now.isoformat(), "host": {},
                             "inference": {}, "gpus": [{"index": 0, "temp_c": 93.0}]})
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--pool", "solo", "--loglevel", "warning"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        evaluate.delay()
        deadline = time.monotonic() + 60
        while not receiver.requests and time.monotonic() < deadline:
            time.sleep(0.3)
        assert receiver.requests, worker.stdout and worker.stdout.read1()
    finally:
        worker.terminate()
        worker.wait(20)
    got = receiver.requests[0]
    verify(SECRET, got.headers["x-switchyard-signature"], got.body)
    body = json.loads(got.body)
    assert body["version"] == "4" and body["status"] == "firing"
    assert body["alerts"][0]["annotations"]["summary"] == "GPU 0 of gpu-a-1 at 93 °C"
    assert Delivery.objects.get().state == "done"
