"""The gateway in front of the simulated fleet (agents/sim): real OpenAI-speaking nodes with a batching model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agents.sim.background import BackgroundFleet
from tests.scheduler.conftest import Fleet
from tests.scheduler.test_gateway import burst

SIM_MODEL = "sim-llm"
BODY = {"model": SIM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


@pytest.fixture
def sim() -> Iterator[BackgroundFleet]:
    with BackgroundFleet(pool="pool-a", model=SIM_MODEL, gpus=1, time_scale=10.0, seed=7) as fleet:
        yield fleet


def register(fleet: Fleet, sim: BackgroundFleet, n: int) -> list[Any]:
    nodes = [sim.add_node(name=f"sim-{i}") for i in range(n)]
    for node in nodes:  # the gateway reads endpoint and models from the registry, metrics from sy:latest
        fleet.add(node.name, node.url, models=(SIM_MODEL,))
    return nodes


def test_burst_over_the_simulated_fleet(fleet: Fleet, sim: BackgroundFleet, gateway: Any, user_token: str) -> None:
    nodes = register(fleet, sim, 4)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {n.name for n in nodes}, what="4 sim nodes eligible")
    responses = burst(gw.url, user_token, 100, BODY)
    assert {r.status_code for r in responses} == {200}
    share = Counter(r.headers["X-Switchyard-Node"] for r in responses)
    assert max(share.values()) <= 50, share
    assert all(r.headers["X-Sim-Node"] == r.headers["X-Switchyard-Node"] for r in responses)


def test_a_refusing_sim_node_is_retried_around_and_quarantined(fleet: Fleet, sim: BackgroundFleet, gateway: Any,
                                                               user_token: str) -> None:
    nodes = register(fleet, sim, 3)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {n.name for n in nodes}, what="3 sim nodes eligible")
    sim.fail(nodes[0].name, "refuse")
    hdrs = {"Authorization": f"Bearer {user_token}"}
    served = []
    while gw.app.sched.nodes[nodes[0].name].quarantined_until is None:  # picked 3 times: ties break at random
        assert len(served) < 100, "the refusing node was never quarantined"
        served.append(httpx.post(f"{gw.url}/v1/chat/completions", json=BODY, headers=hdrs, timeout=30))
    assert {r.status_code for r in served} == {200}
    assert nodes[0].name not in {r.headers["X-Switchyard-Node"] for r in served}
    row = next(n for n in gw.app.state()["nodes"] if n["node"] == nodes[0].name)
    assert row["reason"].startswith("quarantined") and gw.app.counters["retries"] >= 3
    sim.recover(nodes[0].name)
    gw.app.sched.nodes[nodes[0].name].quarantined_until = 0.0  # skip the 30 s default cooldown
    gw.wait(lambda: nodes[0].name in gw.eligible(), what="node back after its cooldown")
    back = burst(gw.url, user_token, 9, BODY)
    assert nodes[0].name in {r.headers["X-Switchyard-Node"] for r in back}
