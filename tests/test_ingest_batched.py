"""Batched pushes (issue 15): an agent with --batch-interval sends every sample taken since its last push in one
request; all of them are stored, and one bad value refuses the request with the sample named."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from agents.collectors.sim import SimBackend
from agents.push import PushConfig, Pusher
from tests.agent.test_push import FakeTime
from tests.conftest import count, free_port, full_sample, make_node
from tests.test_agent_e2e import Server

pytestmark = pytest.mark.usefixtures("clean_samples")


def twelve(start: int = 1) -> list[dict[str, Any]]:
    """A minute of 5-s samples, oldest first, as a --batch-interval 60 agent sends them."""
    now = datetime.now(UTC)
    return [full_sample(start + i, ts=now - timedelta(seconds=5 * (11 - i)), base=10.0 + i) for i in range(12)]


def test_a_push_of_twelve_samples_stores_all_of_them(push: Any) -> None:
    token = make_node()
    resp = push(token, {"node": "gpu-a-1", "agent": "switchyard-agent/1.0", "samples": twelve()})
    assert resp.status_code == 200, resp.content
    assert resp.json()["accepted"] == 12 and resp.json()["duplicates"] == 0
    assert count("node_sample") == 12 and count("gpu_sample") == 24
    with connection.cursor() as cur:
        cur.execute("SELECT seq, gpu_util_pct FROM gpu_sample WHERE gpu = 0 ORDER BY ts")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == list(range(1, 13))
    assert len({r[1] for r in rows}) == 12  # each sample's own values, not one copied twelve times


def test_a_bad_value_in_one_sample_refuses_the_batch_naming_it(push: Any) -> None:
    token = make_node()
    samples = twelve()
    samples[7]["gpus"][1]["gpu_util_pct"] = 140
    samples[9]["host"]["cpu_util_pct"] = "busy"
    resp = push(token, {"node": "gpu-a-1", "samples": samples})
    assert resp.status_code == 400
    assert resp.json()["fields"] == {"samples[7].gpus[1].gpu_util_pct": "140 is above 100",
                                     "samples[9].host.cpu_util_pct":
                                         "'busy' is not a number (send null when the metric is unavailable)"}
    assert "nothing was stored" in resp.json()["error"]
    assert count("node_sample") == 0 and count("gpu_sample") == 0


def test_a_batched_push_replayed_in_part_counts_only_the_new_samples(push: Any) -> None:
    token = make_node()
    samples = twelve()
    assert push(token, {"node": "gpu-a-1", "samples": samples[:5]}).json()["accepted"] == 5
    resp = push(token, {"node": "gpu-a-1", "samples": samples})  # its last push was stored but not acknowledged
    assert resp.json()["accepted"] == 7 and resp.json()["duplicates"] == 5
    assert count("node_sample") == 12


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(free_port())
    srv.start()
    yield srv
    srv.stop()


def test_the_agent_with_a_batch_interval_stores_every_sample_in_fewer_pushes(server: Server,
                                                                             tmp_path: Path) -> None:
    token = make_node()
    ft = FakeTime()
    cfg = PushConfig(server=f"http://127.0.0.1:{server.port}", token=token, node="gpu-a-1",
                     state_dir=tmp_path / "state", interval_s=5, batch_interval_s=30, timeout_s=10.0)
    pusher = Pusher(cfg, SimBackend(gpus=2, seed=0), clock=ft.clock, sleep=ft.sleep, rng=random.Random(7))
    sizes: list[int] = []
    post = pusher._client.post

    def counted(url: str, **kwargs: Any) -> Any:
        resp = post(url, **kwargs)
        sizes.append(resp.json().get("accepted", -1))
        return resp

    pusher._client.post = counted  # type: ignore[method-assign]
    try:
        pusher.run(max_iterations=13)  # 13 samples over 60 s (the fake clock's)
    finally:
        pusher.close()
    assert sizes == [1, 6, 6]  # at once, then every 30 s what the 5-s interval took since
    assert count("node_sample") == 13 and count("gpu_sample") == 26
    with connection.cursor() as cur:
        cur.execute("SELECT seq FROM node_sample ORDER BY seq")
        assert [r[0] for r in cur.fetchall()] == list(range(1, 14))
