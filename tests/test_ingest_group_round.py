"""The Redis round trip of pushes authenticated from the token cache is made once per commit group
(dashboard/fleet/ingest.py, admit): every push still counted against its node's rate limit, answered with its own
node's power caps, and refused if its token was revoked since it was cached."""

from __future__ import annotations

import threading
from collections.abc import Callable
from io import StringIO
from typing import Any

import orjson
import pytest
from django.core.management import call_command

from dashboard.fleet.group_commit import committer
from dashboard.fleet.ingest import POWER_DESIRED_KEY
from dashboard.metrics.latest import redis_client
from tests.conftest import AsgiResponse, count, full_sample, make_node
from tests.test_ingest import _ingest_with_unread_body
from tests.test_ingest_group_commit import wait_until

pytestmark = pytest.mark.usefixtures("clean_samples")


def doc(node: str, seq: int) -> dict[str, Any]:
    return {"node": node, "agent": "switchyard-agent/1.0", "samples": [full_sample(seq)]}


def test_a_group_answers_each_push_with_its_own_node_s_caps(push: Callable[..., AsgiResponse]) -> None:
    tokens = {name: make_node(name) for name in ("gpu-a-1", "gpu-a-2", "gpu-a-3")}
    for name, token in tokens.items():  # first pushes: tokens cached
        assert push(token, doc(name, 1)).status_code == 200
    redis_client().hset(POWER_DESIRED_KEY, "gpu-a-1", orjson.dumps({"0": 400.0}))
    redis_client().hset(POWER_DESIRED_KEY, "gpu-a-2", orjson.dumps({"1": 550.0}))
    replies: dict[str, AsgiResponse] = {}
    threads = [threading.Thread(target=lambda n=n, t=t: replies.__setitem__(n, push(t, doc(n, 2))))
               for n, t in tokens.items()]
    groups = committer.groups
    with committer.hold():
        for t in threads:
            t.start()
        wait_until(lambda: committer.waiting == 3, "three pushes queued")
    for t in threads:
        t.join(30)
    assert committer.groups == groups + 1  # one commit for the three
    assert {n: r.json()["desired"]["power_limit_w"] for n, r in replies.items()} == {
        "gpu-a-1": {"0": 400.0}, "gpu-a-2": {"1": 550.0}, "gpu-a-3": {}}
    assert count("node_sample") == 6


def test_a_cached_token_over_the_limit_gets_429_before_its_body_is_read(push: Callable[..., AsgiResponse],
                                                                        settings: Any) -> None:
    settings.INGEST_RATE_PER_MINUTE = 2
    token = make_node()
    codes = [push(token, doc("gpu-a-1", i)).status_code for i in (1, 2)]
    if codes != [200, 200]:  # the minute rolled over between them: once more
        codes = [push(token, doc("gpu-a-1", i)).status_code for i in (3, 4)]
    assert codes == [200, 200]
    reply, received = _ingest_with_unread_body({"Authorization": f"Bearer {token}", "Content-Length": "500000"})
    assert reply.status_code == 429 and received == [] and 1 <= int(reply["retry-after"]) <= 60


def test_pushes_refused_for_their_body_still_count_against_the_limit(push: Callable[..., AsgiResponse],
                                                                     settings: Any) -> None:
    settings.INGEST_RATE_PER_MINUTE = 3
    token = make_node()
    for _ in range(2):
        codes = [push(token, doc("gpu-a-1", 1)).status_code]  # cached from here on
        bad = doc("gpu-a-1", 2)
        bad["samples"][0]["gpus"][0]["gpu_util_pct"] = 140
        codes += [push(token, bad).status_code, push(token, bad).status_code]
        codes.append(push(token, doc("gpu-a-1", 3)).status_code)
        if codes[-1] == 429:  # else the minute rolled over between the pushes: once more
            break
    assert codes == [200, 400, 400, 429]


def test_a_token_revoked_after_it_was_cached_is_refused_by_the_group(push: Callable[..., AsgiResponse]) -> None:
    token = make_node()
    assert push(token, doc("gpu-a-1", 1)).status_code == 200  # cached
    call_command("createnode", "gpu-a-1", "--pool", "pool-a", "--rotate", stdout=StringIO())
    reply = push(token, doc("gpu-a-1", 2))
    assert reply.status_code == 401 and "unknown or revoked node token" in reply.json()["error"]
    assert count("node_sample") == 1
