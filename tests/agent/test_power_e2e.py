"""Power capping end to end: a real agent (agents.push with the simulated GPUs) pushing to the real server
(`manage.py serve`: uvicorn, ingest, PostgreSQL, Redis) while the controller's power loop runs in the test.

A power policy revision caps the node's pool; the caps reach the agent in the ingest answer, the simulated boards
take them, the agent reports them, and the controller sees the node converge and audits it. Lifting the cap
restores the boards' default.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.push import PushConfig, Pusher
from control.controller import power
from control.policy import service as policies
from core.audit.context import Origin
from core.audit.models import AuditEvent
from tests.agent.test_power_agent import Recording
from tests.conftest import free_port, make_node
from tests.test_agent_e2e import Server

pytestmark = pytest.mark.usefixtures("clean_samples")


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(free_port())
    srv.start()
    yield srv
    srv.stop()



def set_policy(document: dict[str, Any], reason: str) -> Any:
    return policies.create_revision("power", document, reason, policies.active("power").pk,
                                    Origin.system("test")).revision


def converge(pusher: Pusher, node: str, rounds: int = 6) -> list[str]:
    """Push and reconcile, as the agent and the controller's beat would, until the node converges."""
    seen = []
    for _ in range(rounds):
        assert pusher.once(), pusher.last_error
        status = power.reconcile().status[node]
        seen.append(status)
        if status in ("converged", "clamped"):
            break
    return seen


def test_a_pool_cap_from_a_policy_revision_reaches_the_boards_and_converges(server: Server, tmp_path: Path) -> None:
    token = make_node("gpu-a-1", "pool-a")
    make_node("gpu-b-1", "pool-b")  # another pool: never capped
    sim = Recording(gpus=2, seed=11)
    config = PushConfig(server=f"http://127.0.0.1:{server.port}", token=token, node="gpu-a-1",
                        state_dir=tmp_path / "state", timeout_s=10.0)
    pusher = Pusher(config, sim)
    try:
        assert converge(pusher, "gpu-a-1") == ["converged"]  # uncapped, and nothing was ever set
        assert sim.calls == []

        rev = set_policy({"default": {"mode": "uncapped"}, "pools": {"pool-a": {"mode": "cap_pct", "pct": 65}}},
                         "e2e: cap pool-a at 65 % of default")
        seen = converge(pusher, "gpu-a-1")
        assert seen[-1] == "converged" and len(seen) <= 3
        assert sim.calls == [(0, 455.0), (1, 455.0)]  # 65 % of the H100's 700 W, asked once per GPU
        assert [g["power_limit_w"] for g in sim.collect()["gpus"]] == [455.0, 455.0]
        (cap,) = AuditEvent.objects.filter(action="power.cap")
        assert cap.target == "pool:pool-a" and f"power policy v{rev.version}" in cap.reason
        assert cap.after == {"gpu-a-1": {"0": 455.0, "1": 455.0}}
        (done,) = AuditEvent.objects.filter(action="power.converged")
        assert done.target == "pool:pool-a" and done.details["nodes"] == ["gpu-a-1"]
        summary = {r["pool"]: r for r in power.power_summary(window_s=900)}
        assert (summary["pool-a"]["converged"], summary["pool-a"]["gpus"]) == (2, 2)
        assert summary["pool-a"]["desired_w"] == {"min": 455.0, "max": 455.0}

        # Below the board's 200 W floor: the board takes 200 W, which counts as converged, clamped.
        set_policy({"default": {"mode": "uncapped"}, "pools": {"pool-a": {"mode": "cap", "cap_w": 150}}},
                   "e2e: squeeze pool-a")
        assert converge(pusher, "gpu-a-1")[-1] == "clamped"
        assert [g["power_limit_w"] for g in sim.collect()["gpus"]] == [200.0, 200.0]

        set_policy({"default": {"mode": "uncapped"}, "pools": {}}, "e2e: lift the caps")
        assert converge(pusher, "gpu-a-1")[-1] == "converged"
        assert sim.calls[-2:] == [(0, 700.0), (1, 700.0)]  # the default restored
        assert [g["power_limit_w"] for g in sim.collect()["gpus"]] == [700.0, 700.0]
        assert AuditEvent.objects.filter(action="power.cap").count() == 3
        assert AuditEvent.objects.filter(action="power.not_converged").count() == 0
    finally:
        pusher.close()
