"""End to end on the simulated fleet, every part a real process: web (ingest), one simfleet with its agents, the
gateway, the load generator and `manage.py controller` (Celery worker + beat). A load peak through the gateway
queues up on one slow node; the controller scales the pool out through the local provider, the new node joins when
its agent reports, the queue drains; after the peak the controller scales in, draining the node it removes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from control.controller import bindings, loop, observe
from control.controller.models import ScalingAction
from control.policy import service as policies
from core.audit.context import Origin
from core.audit.models import AuditEvent
from dashboard.fleet.models import Node, Pool
from dashboard.metrics.latest import redis_client
from tests.conftest import free_port, make_user, subprocess_env, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
POOL = "e2e"
pytestmark = pytest.mark.usefixtures("clean_samples")


def wait_until(check: Callable[[], Any], timeout: float, what: str, procs: dict[str, subprocess.Popen[bytes]]
               ) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for name, p in procs.items():
            assert p.poll() is None or name == "loadgen", f"{name} exited: {tail(p)}"
        time.sleep(1.0)
    actions = list(ScalingAction.objects.values_list("id", "kind", "from_size", "to_size", "rule", "state", "error"))
    # Everything a diagnosis needs in one message: CI keeps no tmp_path, only this text.
    pool = Pool.objects.get(name=POOL)
    queue = observe.pool_metric(pool.id, "queue_length", 10, timezone.now())
    # The last tick's decision for the pool, as the scaling page shows it; None means no tick reached the pool.
    published = redis_client().hget(loop.POOLS_KEY, POOL)
    logs = "\n".join(f"--- {name} log:\n{tail(p, 1500)}" for name, p in procs.items())
    raise AssertionError(f"timed out waiting for {what}; actions: {actions}; pool queue over the last 10 s: {queue}; "
                         f"last tick: {published!r}\n"
                         f"{logs}")


def tail(p: subprocess.Popen[bytes], chars: int = 3000) -> str:
    path = getattr(p, "log_path", None)
    return Path(path).read_text(errors="replace")[-chars:] if path else ""


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    running: dict[str, subprocess.Popen[bytes]] = {}
    yield running
    for p in running.values():
        if p.poll() is None:
            p.terminate()
    for p in running.values():
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def start(procs: dict[str, subprocess.Popen[bytes]], tmp_path: Path, name: str, *argv: str) -> None:
    log = tmp_path / f"{name}.log"
    p = subprocess.Popen([sys.executable, "manage.py", *argv], cwd=ROOT, env=subprocess_env(PYTHONUNBUFFERED="1"),
                         stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    p.log_path = str(log)  # type: ignore[attr-defined]
    procs[name] = p


def test_a_peak_scales_out_and_the_quiet_after_it_scales_in_with_a_drain(
        tmp_path: Path, procs: dict[str, subprocess.Popen[bytes]]) -> None:
    web, gateway, control = free_port(), free_port(), free_port()
    token = make_user("loader", "operator")
    Pool.objects.create(name=POOL)
    redis_client().hdel(loop.POOLS_KEY, POOL)  # an earlier run's publication is not this controller's tick
    active = policies.active("scaling")
    doc = dict(active.document)
    doc["pools"] = {POOL: {
        "min_nodes": 1, "max_nodes": 3, "tolerance": 0.0,
        "rules": [{"metric": "queue_length", "threshold": 3, "step": 1, "cooldown_s": 30, "window_s": 10}],
        # GPU utilisation is not the test's signal: the queue is. 100 % turns the GPU condition of scale-in off.
        "scale_down": {"stabilization_window_s": 20, "step": 1, "gpu_util_below_pct": 100, "drain_timeout_s": 60},
        "predictive": {"enabled": False},
    }}
    policies.create_revision("scaling", doc, "e2e test pool", active.pk, Origin.system("test"))
    bindings.set_provider(POOL, "local", {"url": f"http://127.0.0.1:{control}", "boot_delay_s": 2,
                                          "profile": "h100"}, True, "e2e", Origin.system("test"))

    start(procs, tmp_path, "web", "serve", "--port", str(web))
    wait_for_port(web)
    start(procs, tmp_path, "fleet", "simfleet", "--nodes", "1", "--gpus", "1", "--pool", POOL, "--profile", "l40s",
          "--server", f"http://127.0.0.1:{web}", "--interval", "1", "--control-port", str(control),
          "--state-dir", str(tmp_path / "fleet"))
    start(procs, tmp_path, "gateway", "gateway", "--port", str(gateway))
    start(procs, tmp_path, "controller", "controller", "--concurrency", "1", "--loglevel", "warning",
          "--schedule", str(tmp_path / "beat"))
    wait_for_port(control)
    wait_for_port(gateway)
    wait_until(lambda: Node.objects.filter(pool__name=POOL, last_seen__isnull=False).exists(), 60,
               "the first node to report", procs)

    # The controller must be ticking before the peak starts: on a loaded machine its worker and beat can take longer
    # to boot than the 35-s peak lasts, and a peak no tick saw scales nothing.
    wait_until(lambda: redis_client().hexists(loop.POOLS_KEY, POOL), 90, "the controller's first tick", procs)

    # The peak: more than one L40S node serves, through the gateway.
    start(procs, tmp_path, "loadgen", "loadgen", "--url", f"http://127.0.0.1:{gateway}", "--token", token,
          "--curve", "constant", "--rate", "12", "--duration", "35", "--max-tokens", "60", "--prompt-tokens", "50",
          "--stream-fraction", "0")
    out = wait_until(lambda: ScalingAction.objects.filter(kind="scale_out", state="done").first(), 120,
                     "a scale-out", procs)
    assert out.rule == "queue_length>3" and out.actor == "controller"
    assert out.metrics["queue_length>3"] > 3
    assert AuditEvent.objects.filter(action="scaling.scale_out", actor="controller").exists()
    # The new node joins when its agent reports (registered by the fleet, pushing to ingest).
    wait_until(lambda: Node.objects.filter(pool__name=POOL, state="active").count() >= 2, 60,
               "the new node to join", procs)

    # After the peak: the queue drains and the controller scales in, draining before removing.
    procs["loadgen"].wait(120)
    scale_in = wait_until(lambda: ScalingAction.objects.filter(kind="scale_in", state="done").first(), 180,
                          "a scale-in after the peak", procs)
    assert scale_in.rule == "scale_down" and len(scale_in.nodes) == 1
    removed = scale_in.nodes[0]
    assert Node.objects.get(name=removed).state == "removed"
    drain = AuditEvent.objects.get(action="node.drain", target=f"node:{removed}")
    gone = AuditEvent.objects.get(action="node.remove", target=f"node:{removed}")
    assert drain.actor == gone.actor == "controller" and drain.pk < gone.pk and drain.time <= gone.time
    # It had finished its work: no drain deadline was needed.
    assert scale_in.error == "", scale_in.error
    # The fleet itself lost the node; the pool keeps at least min_nodes.
    import httpx

    listed = {n["name"] for n in httpx.get(f"http://127.0.0.1:{control}/nodes", timeout=5).json()["nodes"]}
    assert removed not in listed and len(listed) >= 1
