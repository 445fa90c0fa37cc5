"""End to end: `manage.py simfleet` (a subprocess) against a real `manage.py serve`: nodes registered through the
audited createnode path (an existing node's token rotated), agents pushing, Node rows with endpoint and models."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.db import connection

from core.audit.models import AuditEvent
from dashboard.fleet.models import Node, NodeToken
from tests.conftest import count, free_port, make_node, subprocess_env, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve(clean_samples: None, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "serve.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--log-level", "warning"], cwd=ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def samples_of(name: str) -> tuple[int, int, int]:
    with connection.cursor() as cur:
        cur.execute("SELECT count(*), max(s.requests_running), count(s.ttft_p50_s) FROM node_sample s "
                    "JOIN fleet_node n ON n.id = s.node_id WHERE n.name = %s", [name])
        return cur.fetchone()  # type: ignore[return-value]


def test_simfleet_registers_nodes_and_their_agents_push_to_a_real_server(serve: str) -> None:
    old_token = make_node("simx-01", "simx")  # an existing node of the same name: its token is rotated
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "simfleet", "--nodes", "2", "--gpus", "2", "--pool", "simx", "--server", serve,
         "--interval", "1", "--duration", "12", "--control-port", "0", "--profile", "mixed", "--time-scale", "5"],
        cwd=ROOT, env=subprocess_env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        out = "".join(lines)
        urls = dict(re.findall(r"^(simx-\d\d)\s+\S+\s+2\s+up\s+(http://\S+)$", out, re.M))
        assert set(urls) == {"simx-01", "simx-02"}, out
        control = re.search(r"Control API: (http://\S+)", out)
        assert control is not None, out
        # Traffic while the agents push, so the inference metrics have something to show.
        with httpx.Client(timeout=30) as client:
            for _ in range(3):
                for url in urls.values():
                    r = client.post(f"{url}/v1/completions", json={"model": "sim-llm", "prompt": "hi",
                                                                   "max_tokens": 20})
                    assert r.status_code == 200
                time.sleep(1)
            nodes = client.get(f"{control.group(1)}/nodes").json()["nodes"]
            assert [n["profile"] for n in nodes] == ["h100", "a100"]
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out += rest
    assert proc.returncode == 0, out[-3000:]
    assert "Stopped." in out

    for name, url in urls.items():
        node = Node.objects.get(name=name)
        assert node.pool.name == "simx"
        assert node.endpoint == url
        assert node.served_models == ["sim-llm"]
        n, _, with_ttft = samples_of(name)
        assert n >= 5, f"{name}: {n} samples"
        assert with_ttft >= 1  # an interval with requests in it has a TTFT
    assert count("gpu_sample") >= 2 * 2 * 5
    # Registration went through createnode: audited, and the pre-existing node's old token no longer works.
    assert AuditEvent.objects.filter(action="node.create", target="node:simx-02").exists()
    assert AuditEvent.objects.filter(action="node.token.revoke", target="node:simx-01", reason="manage.py simfleet",
                                     actor__startswith="manage.py createnode").exists()
    assert NodeToken.objects.filter(node__name="simx-01", revoked__isnull=True).count() == 1
    resp = httpx.post(f"{serve}/api/v1/ingest", json={"node": "simx-01", "samples": []},
                      headers={"Authorization": f"Bearer {old_token}"})
    assert resp.status_code == 401


def test_simfleet_refuses_bad_flags() -> None:
    for args, message in ((["--nodes", "-1"], "--nodes must be 0-500"),
                          (["--time-scale", "0"], "--time-scale must be above 0"),
                          (["--server", "ftp://x"], "--server must be an http:// or https:// URL"),
                          (["--pool", "Bad Pool"], "pool name 'Bad Pool' is not valid"),
                          (["--profile", "tpu"], "invalid choice: 'tpu'")):
        proc = subprocess.run([sys.executable, "manage.py", "simfleet", *args, "--duration", "1"], cwd=ROOT,
                              env=subprocess_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr
