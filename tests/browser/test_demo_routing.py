"""Issue 5's "done when", end to end: on `manage.py demo` (web, gateway, simulated fleet), an operator changing a
scheduler weight in the dashboard visibly changes where the requests go.

The story: one of three nodes turns slow (the simulated fleet's control API, as a degraded GPU would). The classic
weights (GPU free, CPU load, network RTT; the default's expected_wait scorer turned off first, since it alone would
already steer most of the load away) still send it a good share of the traffic. The operator opens the
scheduler policy in the browser, makes the latency scorer count the gateway's observed time to first byte
(normalised over the fleet) with weight -1, and saves; within seconds the gateway stops sending the slow node
anything. Shares are counted from the gateway's own request log by the time each request was sent (its end minus
its latency), so requests that were already running on the slow node when the policy changed do not blur the
"after" window.

The load is a `loadgen` process of uniform, non-streamed requests rather than the demo's own mix: the gateway's
time to first byte of a streamed chat answer is the time to its first SSE event, which OpenAI servers (vLLM, the
simulator) send before any token, so it does not tell a slow node from a fast one; and a mix of 32- to 512-token
answers makes the average swing more than a 3x slowdown does. `tests/test_processes.py` checks the demo's own load.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.policy import service
from control.routing import reqlog, summary
from control.scheduler.status import read_status
from core.audit.context import Origin
from dashboard.metrics.latest import redis_client
from tests.browser.conftest import ROOT, screenshot
from tests.conftest import free_port, make_user, subprocess_env

SLOW = "demo-02"
SLOW_FACTOR = 3.0  # slow enough to matter, not so slow that the classic weights already starve it


class Demo:
    """`manage.py demo` as a child process, its stdout collected line by line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            assert self.proc.poll() is None, f"demo exited with {self.proc.returncode}:\n{self.output[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {needle!r} within {timeout:g} s:\n{self.output[-3000:]}")

    def interrupt(self) -> None:
        """Ctrl-C, as a person would stop it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)


def sent_shares(start: float, end: float) -> tuple[Counter[str], int]:
    """Answered requests per node among those the gateway sent in [start, end) (unix seconds)."""
    sent: Counter[str] = Counter()
    for eid, fields in redis_client().xrange(reqlog.STREAM, min=f"{int(start * 1000)}"):
        e = reqlog.parse(eid, fields)
        at = e.ts - (e.latency_ms or 0.0) / 1000
        if e.node and e.status == 200 and start <= at < end:
            sent[e.node] += 1
    return sent, sum(sent.values())


def in_flight(node: str) -> int:
    return sum(int(n.get("in_flight") or 0) for s in summary.gateway_states() for n in s.get("nodes") or []
               if n.get("node") == node)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.mark.usefixtures("clean_samples")
def test_a_weight_changed_in_the_dashboard_moves_the_demo_load_off_a_slow_node(page: Any, tmp_path: Path) -> None:
    port, gateway_port, control_port = free_port(), free_port(), free_port()
    web, gateway, control = (f"http://127.0.0.1:{p}" for p in (port, gateway_port, control_port))
    demo = Demo([sys.executable, "manage.py", "demo", "--nodes", "3", "--gpus", "1", "--profile", "h100",
                 "--interval", "2", "--no-celery", "--no-load",
                 "--port", str(port), "--gateway-port", str(gateway_port), "--control-port", str(control_port),
                 "--duration", "300"],  # a safety net: the test stops it with Ctrl-C long before
                env=subprocess_env(SWITCHYARD_VAR_DIR=str(tmp_path)))
    load: subprocess.Popen[bytes] | None = None
    try:
        password = demo.wait_for_line("admin login: admin / ", 120).rsplit(" ", 1)[-1]
        demo.wait_for_line("Ctrl-C stops everything.", 10)
        watcher = make_user("watcher", "viewer")  # the gateway's /metrics needs a viewer (the demo has its own key)
        wait_until(lambda: read_status(gateway, watcher).eligible == 3, 30,
                   "three eligible nodes at the gateway")
        # The operator starts from the classic formula alone: the default's expected_wait scorer steers load off a
        # slow node by itself (tests/scheduler/test_expected_wait.py), so it is turned off here, and the weight
        # changed below in the dashboard is what must move the load.
        document = service.active("scheduler").document
        for scorer in document["scorers"]:
            if scorer["metric"] == "expected_wait":
                scorer["weight"] = 0.0
        classic = service.create_revision("scheduler", document, "the classic formula alone",
                                          service.active("scheduler").pk, Origin.system("test")).revision.pk
        wait_until(lambda: read_status(gateway, watcher).policy.get("scheduler") == classic,
                   5, "the gateway to load the classic policy")
        load = subprocess.Popen(
            [sys.executable, "manage.py", "loadgen", "--url", gateway, "--token", make_user("load", "viewer"),
             "--rate", "8", "--duration", "300", "--stream-fraction", "0", "--prompt-tokens", "128:1",
             "--max-tokens", "32:1", "--no-progress"],
            cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        httpx.post(f"{control}/nodes/{SLOW}/slow", json={"factor": SLOW_FACTOR}, timeout=5).raise_for_status()
        slowed = time.time()

        page.goto(f"{web}/accounts/login/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{web}/")
        page.goto(f"{web}/policies/scheduler/")
        document = json.loads(page.input_value("#document"))
        [latency] = [s for s in document["scorers"] if s["metric"] == "latency"]
        assert latency["weight"] == -0.1 and document["latency"]["source"] == "rtt"
        latency["weight"] = -1.0
        document["latency"].update(source="ttft", normalise="fleet")
        page.fill("#document", json.dumps(document, indent=2))
        page.fill("#reason", f"{SLOW} answers slowly: route by observed time to first byte")
        page.click("button[value=preview]")
        assert "scorers[2].weight" in page.inner_text("main")

        # "Before": the classic weights, with the slowdown in effect (its first requests already slow).
        wait_until(lambda: time.time() >= slowed + 16, 30, "a before window")
        before, before_total = sent_shares(slowed + 4, time.time())
        page.click("button[value=save]")
        page.wait_for_url(f"{web}/policies/scheduler/history/")
        revision = service.active("scheduler").pk
        wait_until(lambda: read_status(gateway, watcher).policy.get("scheduler") == revision,
                   5, "the gateway to load the new revision (within 2 s by contract)")
        changed = time.time()

        # "After": requests sent from 2 s after the change on. Let them finish (the slow node's last ones too)
        # before counting, so nothing sent in the window is missing from the log.
        wait_until(lambda: time.time() >= changed + 12, 30, "an after window")
        page.goto(f"{web}/routing/")
        page.wait_for_selector(f'#routing-nodes tr[data-node="{SLOW}"]', timeout=15_000)
        screenshot(page, "demo-routing-after-weight-change")
        # The page's score chart shows why: the slow node's latency part is the fleet's worst, at the full weight.
        [slow_view] = [n for s in summary.gateway_states() for n in s["nodes"] if n["node"] == SLOW]
        assert slow_view["parts"]["latency"] <= -0.5, slow_view
        wait_until(lambda: in_flight(SLOW) == 0, 60, f"{SLOW}'s requests to finish")
        time.sleep(0.5)  # the gateway writes its log every 0.2 s
        after, after_total = sent_shares(changed + 2, changed + 12)
    finally:
        if load is not None:
            load.terminate()
            load.wait(20)
        demo.interrupt()

    report = f"before {dict(before)} after {dict(after)}"
    assert before_total >= 40 and after_total >= 30, report
    assert set(before) == {"demo-01", "demo-02", "demo-03"}, report  # the classic weights spread over all three
    assert before[SLOW] / before_total >= 0.08, report  # ...the slow node included
    assert after[SLOW] / after_total <= 0.03, report  # the new weight moved it off the slow node
    assert after["demo-01"] > 0 and after["demo-03"] > 0, report
    assert "Stopped." in demo.output, demo.output[-2000:]
    assert page.js_errors == []
