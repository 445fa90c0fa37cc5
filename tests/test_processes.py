"""The real processes: a Celery worker running the storage tasks, and `manage.py demo` bringing the fleet up."""

from __future__ import annotations

import subprocess
import sys
import time
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


def test_demo_starts_web_celery_and_agents_and_rows_arrive(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "manage.py", "demo", "--nodes", "2", "--gpus", "2", "--port", str(port),
         "--interval", "2", "--duration", "20"],
        cwd=ROOT, env=subprocess_env(SWITCHYARD_VAR_DIR=str(tmp_path)), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Switchyard is running at http://127.0.0.1:{port}/" in proc.stdout
    assert "admin login: admin / " in proc.stdout
    assert "Stopped." in proc.stdout
    # Two agents with two GPUs each, pushing every 2 s for about 20 s.
    assert count("gpu_sample") >= 2 * 2 * 5
    assert {r for r in count_nodes()} == {"sim-demo-01", "sim-demo-02"}


def count_nodes() -> list[str]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT DISTINCT n.name FROM node_sample s JOIN fleet_node n ON n.id = s.node_id")
        return [r[0] for r in cur.fetchall()]
