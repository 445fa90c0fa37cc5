"""GET /api/v1/pools/summary: node counts by status and state, GPUs and load per pool, from sy:latest + liveness."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard.fleet.models import Node, Pool
from tests.conftest import full_sample, make_node
from tests.live_pages.conftest import ROLES, json_of

pytestmark = pytest.mark.usefixtures("clean_samples")
URL = "/api/v1/pools/summary"


def test_anonymous_gets_a_401_json_error(client: Client) -> None:
    resp = client.get(URL)
    assert resp.status_code == 401
    assert "credentials" in json_of(resp)["error"].lower()


def test_a_user_without_a_role_is_refused() -> None:
    get_user_model().objects.create_user("nobody", password="pw-pw-pw-pw")
    c = Client()
    c.login(username="nobody", password="pw-pw-pw-pw")
    assert c.get(URL).status_code == 403


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_it(role: str, token_as: Callable[[str], Client],
                             session_as: Callable[[str], Client]) -> None:
    for c in (token_as(role), session_as(role)):
        resp = c.get(URL)
        assert resp.status_code == 200
        assert resp.json()["pools"] == []


def seeded(push: Any) -> dict[str, dict[str, Any]]:
    """pool-a: two nodes up, one stale, one never seen and cordoned; pool-b: one up and draining; pool-c empty."""
    now = datetime.now(UTC)
    samples: dict[str, dict[str, Any]] = {}
    for name, pool, gpus, base, ago in (("gpu-a-1", "pool-a", 2, 30.0, 1), ("gpu-a-2", "pool-a", 4, 50.0, 2),
                                        ("gpu-a-3", "pool-a", 8, 90.0, 60), ("gpu-b-1", "pool-b", 2, 10.0, 0)):
        token = make_node(name, pool)
        s = samples[name] = full_sample(1, now - timedelta(seconds=ago), gpus=gpus, base=base)
        assert push(token, {"node": name, "samples": [s]}).status_code == 200
    make_node("gpu-a-4", "pool-a")
    Node.objects.filter(name="gpu-a-4").update(state="cordoned")
    make_node("gpu-a-5", "pool-a")  # scaled in by the controller: not part of the pool any more
    Node.objects.filter(name="gpu-a-5").update(state="removed")
    Node.objects.filter(name="gpu-b-1").update(state="draining")
    Pool.objects.create(name="pool-c")
    return samples


def test_counts_and_load_match_the_seeded_fleet(push: Any, viewer: Client) -> None:
    samples = seeded(push)
    body = viewer.get(URL).json()
    pools = {p["name"]: p for p in body["pools"]}
    assert list(pools) == ["pool-a", "pool-b", "pool-c"]
    a = pools["pool-a"]
    assert a["nodes"] == 4
    assert a["status"] == {"up": 2, "stale": 1, "down": 1}
    assert a["state"] == {"active": 3, "draining": 0, "cordoned": 1}
    assert a["gpus"] == 2 + 4 + 8  # registered GPUs, whatever the node's status

    up = [samples["gpu-a-1"], samples["gpu-a-2"]]  # gpu-a-3 is stale: its numbers are not live load
    utils = [g["gpu_util_pct"] for s in up for g in s["gpus"]]
    assert a["gpu_util_pct"] == pytest.approx(sum(utils) / len(utils), abs=0.01)
    assert a["queue"] == sum(s["inference"]["requests_waiting"] for s in up)
    assert a["tokens_s"] == pytest.approx(sum(s["inference"]["generation_tokens_s"] for s in up))
    assert a["power_w"] == pytest.approx(sum(g["power_w"] for s in up for g in s["gpus"]))

    rows = {n["name"]: n for n in a["node_list"]}
    assert list(rows) == ["gpu-a-1", "gpu-a-2", "gpu-a-3", "gpu-a-4"]
    assert rows["gpu-a-3"]["status"] == "stale" and rows["gpu-a-3"]["gpu_util_pct"] is None
    assert rows["gpu-a-3"]["queue"] is None and rows["gpu-a-3"]["last_seen"]
    assert rows["gpu-a-4"] == {"name": "gpu-a-4", "url": "/nodes/gpu-a-4/", "status": "down", "state": "cordoned",
                               "gpus": 0, "gpu_util_pct": None, "queue": None, "tokens_s": None, "power_w": None,
                               "last_seen": None}
    assert rows["gpu-a-2"]["queue"] == samples["gpu-a-2"]["inference"]["requests_waiting"]

    b = pools["pool-b"]
    assert b["status"] == {"up": 1, "stale": 0, "down": 0} and b["state"]["draining"] == 1
    c = pools["pool-c"]
    assert (c["nodes"], c["gpus"], c["gpu_util_pct"], c["queue"], c["node_list"]) == (0, 0, None, None, [])
    totals = body["totals"]
    assert totals["nodes"] == 5 and totals["status"] == {"up": 3, "stale": 1, "down": 1}


def test_a_gpu_without_util_is_left_out_of_the_mean(push: Any, viewer: Client) -> None:
    token = make_node("gpu-a-1", "pool-a")
    s = full_sample(1, datetime.now(UTC), gpus=3, base=20.0)
    s["gpus"][2]["gpu_util_pct"] = None
    s["inference"]["requests_waiting"] = None
    assert push(token, {"node": "gpu-a-1", "samples": [s]}).status_code == 200
    a = viewer.get(URL).json()["pools"][0]
    assert a["gpu_util_pct"] == pytest.approx((s["gpus"][0]["gpu_util_pct"] + s["gpus"][1]["gpu_util_pct"]) / 2)
    assert a["queue"] is None  # unknown, not zero
