"""The real processes: a Celery worker running the storage tasks, and `manage.py demo` bringing the fleet up with
its load flowing through the gateway."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dashboard.metrics import rollups
from tests.conftest import count, free_port, full_sample, make_node, subprocess_env

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("clean_samples")


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_a_real_celery_worker_runs_the_rollup_task(push: Any, tmp_path: Path) -> None:
    from dashboard.metrics import tasks

    token = make_node()
    start = rollups.floor_to(datetime.now(UTC) - timedelta(minutes=5), timedelta(minutes=1))
    samples = [full_sample(i + 1, start + timedelta(seconds=10 * i)) for i in range(12)]
    assert push(token, {"node": "gpu-a-1", "samples": samples}).status_code == 200
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--pool", "solo", "--loglevel", "warning"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        tasks.rollup_minutes.delay()
        assert wait_for(lambda: count("gpu_sample_1m") > 0, 60), worker.stdout and worker.stdout.read1()
        assert count("gpu_sample_1m") == 2 * 2  # 12 samples x 10 s = 2 minutes, 2 GPUs
    finally:
        worker.terminate()
        worker.wait(20)


def test_demo_routes_its_load_through_the_gateway_onto_the_simulated_fleet(tmp_path: Path) -> None:
    """web + gateway + Celery + one simfleet process + loadgen: samples arrive from every node, and the load
    generator's requests reach the fleet through the gateway (its request log), spread over the nodes."""
    from control.routing import reqlog
    from dashboard.metrics.latest import redis_client

    port, gateway_port, control_port = free_port(), free_port(), free_port()
    proc = subprocess.run(
        [sys.executable, "manage.py", "demo", "--nodes", "2", "--gpus", "2", "--port", str(port),
         "--gateway-port", str(gateway_port), "--control-port", str(control_port), "--interval", "2",
         "--load-curve", "constant", "--load-rate", "6", "--duration", "20"],
        cwd=ROOT, env=subprocess_env(SWITCHYARD_VAR_DIR=str(tmp_path)), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"Switchyard is running at http://127.0.0.1:{port}/" in out
    assert "admin login: admin / " in out
    assert f"http://127.0.0.1:{gateway_port}/v1/chat/completions" in out
    assert f"http://127.0.0.1:{control_port}/nodes" in out
    assert "load token:  sy_user_" in out
    assert "Stopped." in out
    # Two nodes with two GPUs each, pushing every 2 s for about 20 s, from the one simfleet process.
    assert count("gpu_sample") >= 2 * 2 * 5
    assert {r for r in count_nodes()} == {"demo-01", "demo-02"}
    # The load went through the gateway: every routed request is in its log, with the node that served it.
    entries = [reqlog.parse(eid, fields) for eid, fields in redis_client().xrange(reqlog.STREAM)]
    served = Counter(e.node for e in entries if e.status == 200)
    assert set(served) == {"demo-01", "demo-02"}, served
    assert min(served.values()) >= 0.2 * sum(served.values()), served  # spread, not all on one node
    assert {e.pool for e in entries if e.node} == {"demo"}
    # The watch loop reported the routing from the same log.
    assert "gateway, last minute:" in out and "demo-01:" in out


def test_demo_stops_its_children_on_sigterm_too(tmp_path: Path) -> None:
    """Not only Ctrl-C: a `kill` (or a supervisor) must not leave the web server, gateway and fleet orphaned."""
    import os
    import signal
    import socket

    port, gateway_port, control_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--nodes", "1", "--gpus", "1", "--port", str(port),
         "--gateway-port", str(gateway_port), "--control-port", str(control_port), "--no-load", "--no-celery"],
        cwd=ROOT, env=subprocess_env(SWITCHYARD_VAR_DIR=str(tmp_path)), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        seen = ""
        for line in proc.stdout:
            seen += line
            if "Ctrl-C stops everything" in line:
                break
        assert "Switchyard is running" in seen, seen[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Stopped." in rest, rest[-3000:]

    def listening(p: int) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", p)) == 0

    assert not any(listening(p) for p in (port, gateway_port, control_port))


def count_nodes() -> list[str]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT DISTINCT n.name FROM node_sample s JOIN fleet_node n ON n.id = s.node_id")
        return [r[0] for r in cur.fetchall()]
