"""`manage.py gateway` as the process operators run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx

from control.scheduler.auth import internal_token
from control.scheduler.status import read_status
from tests.conftest import free_port, subprocess_env, wait_for_port
from tests.scheduler.conftest import MODEL, ROOT, Fleet


def test_help_lists_every_flag() -> None:
    out = subprocess.run([sys.executable, "manage.py", "gateway", "--help"], cwd=ROOT, capture_output=True,
                         text=True, env=subprocess_env(), check=True).stdout
    for flag in ("--host", "--port", "--id", "--auth", "--max-body-mb", "--log-level"):
        assert flag in out


def test_the_gateway_command_routes_and_publishes_its_state(fleet: Fleet, upstreams: Any, redis_db: Any,
                                                            user_token: str) -> None:
    (node,) = upstreams(1)
    fleet.add(node.name, node.url)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "manage.py", "gateway", "--port", str(port), "--id", "gw-cmd"],
                            cwd=ROOT, env=subprocess_env())
    try:
        wait_for_port(port, timeout=30)
        deadline = time.monotonic() + 10
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        while read_status(f"http://127.0.0.1:{port}", internal_token()).eligible != 1:
            assert time.monotonic() < deadline, "the node never became eligible"
            time.sleep(0.1)
        body = {"model": MODEL, "prompt": "once upon a time"}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body,
                       headers={"Authorization": f"Bearer {user_token}"}, timeout=10)
        assert r.status_code == 200 and r.headers["X-Switchyard-Node"] == node.name
        assert r.json()["choices"][0]["text"].startswith(node.name)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body,
                       headers={"Authorization": f"Bearer {internal_token()}"}, timeout=10)
        assert r.status_code == 200  # the job runner's token, computed in another process from SECRET_KEY
        assert httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=10).status_code == 401
        def state() -> dict[str, Any]:
            raw = redis_db.get("sy:gw:state:gw-cmd")
            return json.loads(raw) if raw else {}

        deadline = time.monotonic() + 10  # rewritten every second: wait for the one after the two requests
        while state().get("counters", {}).get("requests") != 2:
            assert time.monotonic() < deadline, f"no state key counting both requests: {state()}"
            time.sleep(0.1)
        assert state()["id"] == "gw-cmd"
    finally:
        proc.terminate()
        proc.wait(15)
