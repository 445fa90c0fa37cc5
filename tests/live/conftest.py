"""Fixtures for the live dashboard: logged-in sockets against the real ASGI app, a seeded fleet, quick ticks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from dashboard.live import broadcast, frames
from tests.conftest import full_sample, make_node, make_user
from tests.live.wsclient import WebsocketCommunicator

FLEET = (("gpu-a-2", "pool-a"), ("gpu-a-10", "pool-a"), ("gpu-b-1", "pool-b"))


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Short ticks so tests do not wait a second per step; the logic is the same at any tick length."""
    monkeypatch.setattr(broadcast, "TICK_S", 0.2)
    monkeypatch.setattr(broadcast, "LINGER_S", 0.5)
    frames.forget_nodes()
    yield
    frames.forget_nodes()


@pytest.fixture(autouse=True)
async def _stop_broadcaster() -> AsyncIterator[None]:
    yield
    try:
        await asyncio.wait_for(broadcast.shutdown(), 10)
    except TimeoutError:
        for t in asyncio.all_tasks():
            t.print_stack()
        raise


def session_for(name: str, role: str | None) -> str:
    if role is None:
        user = get_user_model().objects.create_user(name, password="correct-horse-battery")
    else:
        make_user(name, role)
        user = get_user_model().objects.get(username=name)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.fixture
def viewer_cookie(clean_samples: None) -> str:
    return session_for("vera", "viewer")


@pytest.fixture
def fleet(clean_samples: None, push: Callable[..., Any]) -> dict[str, str]:
    """Three 2-GPU nodes in two pools, each with one fresh sample: gpu_util_pct = base + GPU index."""
    tokens = {}
    for i, (name, pool) in enumerate(FLEET):
        tokens[name] = make_node(name, pool)
        resp = push(tokens[name], {"node": name, "samples": [full_sample(1, gpus=2, base=10.0 * (i + 1))]})
        assert resp.status_code == 200, resp.content
    frames.forget_nodes()
    return tokens


async def open_socket(cookie: str | None, origin: str = "http://testserver") -> WebsocketCommunicator:
    from dashboard.asgi import application

    headers = [(b"origin", origin.encode())]
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    comm = WebsocketCommunicator(application, "/ws/fleet/", headers=headers)
    connected, _ = await comm.connect(timeout=10)
    assert connected
    return comm


async def viewer_socket(cookie: str) -> WebsocketCommunicator:
    comm = await open_socket(cookie)
    hello = await comm.receive_json_from(timeout=10)
    assert hello["type"] == "hello" and hello["protocol"] == 1
    return comm


async def subscribe(comm: WebsocketCommunicator, topic: str) -> dict[str, Any]:
    await comm.send_json_to({"type": "subscribe", "topic": topic})
    return await comm.receive_json_from(timeout=10)


async def next_of(comm: WebsocketCommunicator, topic: str, timeout: float = 10) -> dict[str, Any]:
    """The next message for `topic` (skipping others)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        msg = await comm.receive_json_from(timeout=max(0.05, left))
        if msg.get("topic") == topic:
            return msg


def sample_at(seq: int, base: float, gpus: dict[tuple[int, str], float] | None = None,
              ts: datetime | None = None) -> dict[str, Any]:
    """A 2-GPU sample like the fleet's, with some GPU values changed ({(1, 'gpu_util_pct'): 77})."""
    s = full_sample(seq, ts=ts or datetime.now(UTC), gpus=2, base=base)
    for (g, metric), value in (gpus or {}).items():
        s["gpus"][g][metric] = value
    return s
