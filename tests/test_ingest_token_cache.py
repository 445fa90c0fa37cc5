"""Node tokens from the ingest workers' in-process cache: no token query per push, and a revocation refused by every
worker from the next push on (dashboard/fleet/node_tokens.py, revocation.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.db import connection

from dashboard.fleet import ingest as service
from dashboard.fleet import node_tokens
from dashboard.fleet.models import Node, NodeToken
from tests.conftest import count, free_port, full_sample, make_node, subprocess_env, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("clean_samples")


def rotate(name: str = "gpu-a-1") -> str:
    out = StringIO()
    call_command("createnode", name, "--pool", "pool-a", "--rotate", stdout=out)
    return out.getvalue().strip().splitlines()[-1]


@pytest.fixture
def workers() -> list[node_tokens.NodeTokenCache]:
    """Two workers' caches; `as_worker(i)` makes the ingest service use worker i's."""
    return [node_tokens.NodeTokenCache(), node_tokens.NodeTokenCache()]


def authenticate_as(monkeypatch: pytest.MonkeyPatch, cache: node_tokens.NodeTokenCache, token: str) -> Any:
    monkeypatch.setattr(service, "token_cache", cache)
    return service.authenticate(token)


def test_a_cached_token_costs_no_query(django_assert_num_queries: Any, monkeypatch: pytest.MonkeyPatch,
                                       workers: list[node_tokens.NodeTokenCache]) -> None:
    token = make_node()
    assert isinstance(authenticate_as(monkeypatch, workers[0], token), service.Pusher)
    with django_assert_num_queries(0):
        pusher = authenticate_as(monkeypatch, workers[0], token)
    assert isinstance(pusher, service.Pusher) and pusher.node.name == "gpu-a-1"


@pytest.mark.parametrize("how", ["rotate", "admin-save", "delete-token", "delete-node"])
def test_a_revoked_token_is_refused_at_once_by_every_worker(monkeypatch: pytest.MonkeyPatch, how: str,
                                                            workers: list[node_tokens.NodeTokenCache]) -> None:
    token = make_node()
    for cache in workers:  # both workers hold the token
        assert isinstance(authenticate_as(monkeypatch, cache, token), service.Pusher)
    if how == "rotate":
        new = rotate()
    elif how == "admin-save":
        t = NodeToken.objects.get(node__name="gpu-a-1")
        t.revoked = t.created
        t.save()
    elif how == "delete-token":
        NodeToken.objects.filter(node__name="gpu-a-1").delete()
    else:
        Node.objects.filter(name="gpu-a-1").delete()
    for cache in workers:
        reply = authenticate_as(monkeypatch, cache, token)
        assert isinstance(reply, service.Reply) and reply.status == 401, reply
        assert "unknown or revoked node token" in reply.body["error"]
    if how == "rotate":  # the new token works on every worker
        for cache in workers:
            assert isinstance(authenticate_as(monkeypatch, cache, new), service.Pusher)


def test_a_revocation_of_another_token_keeps_this_one_working(monkeypatch: pytest.MonkeyPatch,
                                                              workers: list[node_tokens.NodeTokenCache]) -> None:
    a, _ = make_node("gpu-a-1"), make_node("gpu-a-2")
    assert isinstance(authenticate_as(monkeypatch, workers[0], a), service.Pusher)
    rotate("gpu-a-2")
    pusher = authenticate_as(monkeypatch, workers[0], a)  # asked the database again, still valid
    assert isinstance(pusher, service.Pusher) and pusher.node.name == "gpu-a-1"


@pytest.fixture
def two_worker_server() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port), "--workers", "2"], cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_real_server_with_two_workers_refuses_a_rotated_token_on_the_next_push(two_worker_server: int) -> None:
    token = make_node()
    seq = iter(range(1, 10_000))

    def push(tok: str) -> int:
        doc = {"node": "gpu-a-1", "samples": [full_sample(next(seq))]}
        with httpx.Client(base_url=f"http://127.0.0.1:{two_worker_server}", timeout=30) as client:  # a connection
            return client.post("/api/v1/ingest", json=doc, headers={"Authorization": f"Bearer {tok}"}).status_code

    with ThreadPoolExecutor(8) as pool:  # many connections at once, so that both workers cache the token
        assert set(pool.map(push, [token] * 24)) == {200}
        new = rotate()
        assert set(pool.map(push, [token] * 24)) == {401}
        assert set(pool.map(push, [new] * 8)) == {200}


@pytest.fixture
def expiring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_tokens, "TTL_S", -1.0)  # every cache entry is past its TTL as soon as it is made


def test_a_push_whose_entry_expired_is_checked_with_its_group_not_looked_up_alone(
        push: Any, expiring: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token = make_node()
    assert push(token, {"node": "gpu-a-1", "samples": [full_sample(1)]}).status_code == 200  # cached, expired
    alone: list[str | None] = []
    looked_up = service.authenticate
    monkeypatch.setattr(service, "authenticate", lambda t: alone.append(t) or looked_up(t))
    reply = push(token, {"node": "gpu-a-1", "samples": [full_sample(2)]})
    assert reply.status_code == 200 and reply.json()["accepted"] == 1, reply.content
    assert alone == []  # no thread, no Redis round trip and query of its own: its group asked for it
    assert count("node_sample") == 2


def test_a_token_revoked_behind_the_announcement_is_refused_once_its_entry_expired(push: Any, expiring: None) -> None:
    token = make_node()
    assert push(token, {"node": "gpu-a-1", "samples": [full_sample(1)]}).status_code == 200
    with connection.cursor() as cur:  # raw SQL: no announcement, so only the TTL bounds how long the cache trusts it
        cur.execute("UPDATE fleet_nodetoken SET revoked = now()")
    for seq in (2, 3):  # refused, and the entry is gone: the next push is refused too
        reply = push(token, {"node": "gpu-a-1", "samples": [full_sample(seq)]})
        assert reply.status_code == 401, reply.content
        assert "unknown or revoked node token" in reply.json()["error"]
    assert count("node_sample") == 1 and count("gpu_sample") == 2
