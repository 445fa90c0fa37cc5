"""Cache-aware routing end to end: a real gateway in front of simulated nodes whose engines keep a prefix cache.
A shared-prefix burst reaches a higher prefix-cache hit rate (as the nodes themselves count it) with the
prefix_affinity scorer on than with today's default policy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agents.sim.background import BackgroundFleet
from control.loadgen.workloads import text_of
from tests.scheduler.conftest import Fleet
from tests.scheduler.test_gateway import api_client  # noqa: F401  (the fixture)
from tests.scheduler.test_simfleet import SIM_MODEL, register

GROUPS, PER_GROUP = 8, 6


@pytest.fixture
def sim() -> Iterator[BackgroundFleet]:
    with BackgroundFleet(pool="pool-a", model=SIM_MODEL, gpus=1, time_scale=20.0, seed=7) as fleet:
        yield fleet


def fleet_hits(sim: BackgroundFleet) -> tuple[int, int]:
    def read(f: Any) -> tuple[int, int]:
        return (sum(n.engine.prefix_hits_total for n in f.nodes),
                sum(n.engine.prefix_queries_total for n in f.nodes))

    return sim.call(read)


def shared_prefix_burst(url: str, token: str, tag: str) -> list[httpx.Response]:
    """The first prompt of every group, then the other prompts of all groups at once."""
    import random

    rng = random.Random(tag)
    systems = [text_of(1500, rng, f"[{tag} system {g}]") for g in range(GROUPS)]

    def body(g: int, p: int) -> dict[str, Any]:
        return {"model": SIM_MODEL, "max_tokens": 4, "messages": [
            {"role": "system", "content": systems[g]}, {"role": "user", "content": f"question {p} of group {g}"}]}

    async def go(bodies: list[dict[str, Any]]) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=b,
                                                      headers={"Authorization": f"Bearer {token}"}) for b in bodies))

    first = asyncio.run(go([body(g, 0) for g in range(GROUPS)]))
    rest = asyncio.run(go([body(g, p) for p in range(1, PER_GROUP) for g in range(GROUPS)]))
    return first + rest


def set_affinity(api_client: Any, gw: Any, weight: float) -> None:  # noqa: F811
    doc = api_client.get("/api/v1/policies/scheduler/").json()
    scorers = [s for s in doc["document"]["scorers"] if s["metric"] != "prefix_affinity"]
    doc["document"]["scorers"] = [*scorers, {"metric": "prefix_affinity", "weight": weight, "invert": False}]
    r = api_client.post("/api/v1/policies/scheduler/revisions/", {
        "document": doc["document"], "reason": f"prefix_affinity {weight}", "parent": doc["id"]}, format="json")
    assert r.status_code == 201, r.content
    gw.wait(lambda: gw.app.policy_ids.get("scheduler") == r.json()["id"], what="policy loaded")


def test_a_shared_prefix_burst_hits_the_cache_more_with_the_affinity_scorer(
        fleet: Fleet, sim: BackgroundFleet, gateway: Any, user_token: str, api_client: Any) -> None:  # noqa: F811
    nodes = register(fleet, sim, 4)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {n.name for n in nodes}, what="4 sim nodes eligible")

    set_affinity(api_client, gw, 0.0)  # the default policy without the scorer
    h0, q0 = fleet_hits(sim)
    off = shared_prefix_burst(gw.url, user_token, "off")
    assert {r.status_code for r in off} == {200}
    h1, q1 = fleet_hits(sim)
    rate_off = (h1 - h0) / (q1 - q0)

    set_affinity(api_client, gw, 2.0)  # the default weight

    on = shared_prefix_burst(gw.url, user_token, "on")  # new system prompts: nothing of them is cached yet
    assert {r.status_code for r in on} == {200}
    h2, q2 = fleet_hits(sim)
    rate_on = (h2 - h1) / (q2 - q1)
    # Blind: a group's prompts land on several nodes, each paying the prefill once. With affinity only the first.
    assert rate_on > rate_off + 0.15, (rate_on, rate_off)
    assert rate_on > 0.7
    # And the groups still spread over the fleet (no herding onto one node). Not ">= 3": on a loaded machine the
    # groups' first prompts can reach an idle fleet one after another, and then the score rightly prefers the nodes
    # the "off" burst measured fastest (CI saw all 8 groups on 2 of the 4 nodes).
    used = {r.headers["X-Switchyard-Node"] for r in on}
    assert len(used) >= 2
