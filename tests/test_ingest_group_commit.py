"""Group commit (dashboard/fleet/group_commit.py): pushes that queue while a commit runs share the next one, each is
acknowledged only after that commit, and a failure reaches exactly the pushes it hit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from dashboard.fleet.group_commit import committer
from dashboard.fleet.models import Node
from dashboard.metrics.latest import INGEST_CHANNEL, latest, redis_client
from tests.conftest import AsgiResponse, count, full_sample, make_node

pytestmark = pytest.mark.usefixtures("clean_samples")


def body(node: str, *samples: dict[str, Any]) -> dict[str, Any]:
    return {"node": node, "agent": "switchyard-agent/1.0", "samples": list(samples)}


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Pushes:
    """Pushes sent from threads (each through the real ASGI app), their replies collected by name."""

    def __init__(self, push: Callable[..., AsgiResponse]) -> None:
        self.push = push
        self.replies: dict[str, AsgiResponse] = {}
        self.threads: list[threading.Thread] = []

    def send(self, name: str, token: str, doc: dict[str, Any]) -> None:
        def run() -> None:
            self.replies[name] = self.push(token, doc)

        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a push never got its answer"


@pytest.fixture
def pushes(push: Callable[..., AsgiResponse]) -> Iterator[Pushes]:
    p = Pushes(push)
    yield p
    p.join()


def group_of(pushes: Pushes, docs: dict[str, tuple[str, dict[str, Any]]], before_commit: Callable[[], None]
             = lambda: None) -> None:
    """Send every push while the committer is held, check that none is answered or stored, then let them commit."""
    with committer.hold():
        base = count("node_sample")
        for name, (token, doc) in docs.items():
            pushes.send(name, token, doc)
        wait_until(lambda: committer.waiting == len(docs), f"{len(docs)} pushes queued for the committer")
        assert pushes.replies == {}, "a push was answered before its commit"
        assert count("node_sample") == base
        before_commit()
    pushes.join()


def test_two_pushes_share_one_commit_and_are_acknowledged_only_after_it(pushes: Pushes) -> None:
    a, b = make_node("gpu-a-1"), make_node("gpu-a-2")
    now = datetime.now(UTC)
    group_of(pushes, {"a": (a, body("gpu-a-1", full_sample(1, now))),
                      "b": (b, body("gpu-a-2", full_sample(1, now - timedelta(seconds=5)), full_sample(2, now)))})
    assert pushes.replies["a"].status_code == 200, pushes.replies["a"].content
    assert pushes.replies["b"].status_code == 200, pushes.replies["b"].content
    assert (pushes.replies["a"].json()["accepted"], pushes.replies["b"].json()["accepted"]) == (1, 2)
    with connection.cursor() as cur:
        # One transaction wrote every row of both pushes: they carry one transaction id.
        cur.execute("SELECT count(DISTINCT xmin::text) FROM (SELECT xmin FROM node_sample "
                    "UNION ALL SELECT xmin FROM gpu_sample) r")
        assert cur.fetchone()[0] == 1
    assert count("node_sample") == 3 and count("gpu_sample") == 6
    assert latest("gpu-a-1")["seq"] == 1 and latest("gpu-a-2")["seq"] == 2


def test_a_replay_in_a_group_is_counted_for_its_own_push_only(push: Any, pushes: Pushes) -> None:
    a, b = make_node("gpu-a-1"), make_node("gpu-a-2")
    first = full_sample(1)  # stored, then sent again (its acknowledgement was lost) with the next sample
    assert push(a, body("gpu-a-1", first)).json()["accepted"] == 1
    group_of(pushes, {"replay": (a, body("gpu-a-1", first, full_sample(2))),
                      "fresh": (b, body("gpu-a-2", full_sample(1), full_sample(2)))})
    replay, fresh = pushes.replies["replay"].json(), pushes.replies["fresh"].json()
    assert (replay["accepted"], replay["duplicates"]) == (1, 1)
    assert (fresh["accepted"], fresh["duplicates"]) == (2, 0)
    assert count("node_sample") == 4


def test_a_push_whose_rows_fail_gets_its_own_error_and_the_others_succeed(pushes: Pushes) -> None:
    a, b, c = make_node("gpu-a-1"), make_node("gpu-a-2"), make_node("gpu-a-3")

    def delete_b() -> None:
        # Authenticated, validated, queued: then its node goes. Its GPU rows now break a foreign key.
        Node.objects.filter(name="gpu-a-2").delete()

    group_of(pushes, {"a": (a, body("gpu-a-1", full_sample(1))), "b": (b, body("gpu-a-2", full_sample(1))),
                      "c": (c, body("gpu-a-3", full_sample(1)))}, before_commit=delete_b)
    assert pushes.replies["a"].status_code == 200 and pushes.replies["a"].json()["accepted"] == 1
    assert pushes.replies["c"].status_code == 200 and pushes.replies["c"].json()["accepted"] == 1
    assert pushes.replies["b"].status_code == 503, pushes.replies["b"].content
    assert "database" in pushes.replies["b"].json()["error"]
    with connection.cursor() as cur:
        cur.execute("SELECT n.name FROM node_sample s JOIN fleet_node n ON n.id = s.node_id ORDER BY n.name")
        assert [r[0] for r in cur.fetchall()] == ["gpu-a-1", "gpu-a-3"]
    assert latest("gpu-a-2") is None


def test_a_connection_lost_mid_group_is_retried_once_on_a_new_one(push: Any, pushes: Pushes) -> None:
    a, b = make_node("gpu-a-1"), make_node("gpu-a-2")
    assert push(a, body("gpu-a-1", full_sample(1))).status_code == 200  # the committer holds a connection now

    def drop_connection() -> None:
        # What a database restart does to the committer's connection (only it: the ingest threads' connections
        # are shared with later tests).
        assert committer.backend_pid is not None
        with connection.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", [committer.backend_pid])

    dropped = committer.backend_pid
    group_of(pushes, {"a": (a, body("gpu-a-1", full_sample(2))), "b": (b, body("gpu-a-2", full_sample(1)))},
             before_commit=drop_connection)
    for name in ("a", "b"):
        assert pushes.replies[name].status_code == 200, pushes.replies[name].content
        assert pushes.replies[name].json()["accepted"] == 1
    assert committer.backend_pid != dropped
    assert count("node_sample") == 3


def test_a_group_tells_live_readers_of_all_its_nodes_in_one_message(pushes: Pushes) -> None:
    a, b = make_node("gpu-a-1"), make_node("gpu-a-2")
    listener = redis_client().pubsub(ignore_subscribe_messages=True)
    listener.subscribe(INGEST_CHANNEL)
    try:
        wait_until(lambda: listener.get_message(timeout=0.1) is None and listener.subscribed, "the subscription")
        group_of(pushes, {"a": (a, body("gpu-a-1", full_sample(1))), "b": (b, body("gpu-a-2", full_sample(1)))})
        assert {r.status_code for r in pushes.replies.values()} == {200}
        messages = []
        while (m := listener.get_message(timeout=1.0)) is not None:
            messages.append(m["data"].decode())
    finally:
        listener.close()
    # Pub/sub ignores the database number: other users of this Redis may publish on the channel too.
    messages = [m for m in messages if "gpu-a-1" in m.split("\n") or "gpu-a-2" in m.split("\n")]
    assert len(messages) == 1 and sorted(messages[0].split("\n")) == ["gpu-a-1", "gpu-a-2"], messages


@pytest.mark.parametrize(("rate", "wait_ms", "expected_ms"), [
    (0.0, 50, 0.0),  # nothing measured yet, or a quiet fleet: commit at once
    (10.0, 50, 0.0),  # under one more push expected within the wait: waiting would only add latency
    (100.0, 50, 50.0),  # 16 pushes take 160 ms at 100/s: the most it may wait
    (400.0, 50, 40.0),  # 16 pushes take 40 ms
    (2000.0, 50, 8.0),  # a busy worker: groups of 16 come quickly, so latency stays low
    (400.0, 0, 0.0),  # SWITCHYARD_INGEST_GROUP_WAIT_MS=0 turns the wait off
])
def test_the_group_wait_aims_at_a_group_of_16_within_the_configured_most(
        settings: Any, rate: float, wait_ms: int, expected_ms: float) -> None:
    from dashboard.fleet.group_commit import GROUP_TARGET, Committer

    assert GROUP_TARGET == 16
    settings.INGEST_GROUP_WAIT_MS = wait_ms
    c = Committer()
    c.rate = rate
    assert c.group_wait() * 1000 == pytest.approx(expected_ms)


@pytest.mark.parametrize(("environment", "expected_ms"), [
    (None, 100),  # the shipped default: 1,000 nodes every 5 s on 2 workers (100 pushes/s each) wait 100 ms
    ("30", 30),  # SWITCHYARD_INGEST_GROUP_WAIT_MS still sets the most
])
def test_a_worker_at_100_pushes_a_second_waits_100_ms_unless_the_environment_says_otherwise(
        environment: str | None, expected_ms: int) -> None:
    """At 50 ms a worker of a 1,000-node fleet committed about 4 pushes at a time, and the commits cost more CPU per
    value than Prometheus spends on a whole scrape (bench/vs_prometheus.py); the settings are read as a fresh server
    reads them, in a new process."""
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_INGEST_GROUP_WAIT_MS"}
    if environment is not None:
        env["SWITCHYARD_INGEST_GROUP_WAIT_MS"] = environment
    env["DJANGO_SETTINGS_MODULE"] = "dashboard.settings"
    code = ("import django; django.setup()\n"
            "from dashboard.fleet.group_commit import Committer\n"
            "c = Committer(); c.rate = 100.0; print(round(c.group_wait() * 1000))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, timeout=60, check=True)
    assert int(out.stdout.split()[-1]) == expected_ms
