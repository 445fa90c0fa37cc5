"""A POST reaches a node at most once per gateway attempt; every retry the gateway makes is visible (item 10).

The node here is a raw TCP server: it answers its first request and keeps the connection alive (so the gateway
pools it), then reads every later request, counts it and closes without a byte — a node that took the request and
died. The gateway must not send it there again on a fresh connection; it may try the next node, and says so.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.scheduler.conftest import MODEL, Fleet
from tests.scheduler.test_gateway import CHAT, chat, reqlog

ANSWER = (b'{"id":"x","object":"chat.completion","model":"test-model","choices":[{"index":0,"message":'
          b'{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}')


class DroppingNode:
    """Answers the first request it reads; reads, counts and drops every later one."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                self.requests.append(head + await reader.readexactly(length))
                if len(self.requests) > 1:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(ANSWER), ANSWER))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def start(self) -> str:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop).result(10)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        assert self.server is not None
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def dropping_node() -> Iterator[DroppingNode]:
    node = DroppingNode()
    yield node
    node.stop()


def test_a_node_that_read_the_request_and_died_sees_it_once_and_the_retry_is_marked(
        fleet: Fleet, upstreams: Any, gateway: Any, user_token: str, redis_db: Any,
        dropping_node: DroppingNode) -> None:
    url = dropping_node.start()
    fleet.add("dropper", url, gpu=5.0)  # the idle GPU: the best score, tried first
    (good,) = upstreams(1)
    fleet.add(good.name, good.url, gpu=95.0)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {"dropper", good.name}, what="2 eligible nodes")

    warm = chat(gw, user_token)  # answered by the dropper, whose connection the gateway now keeps
    assert warm.status_code == 200 and warm.headers["X-Switchyard-Node"] == "dropper"
    assert warm.headers["X-Switchyard-Retries"] == "0"

    body = {**CHAT, "messages": [{"role": "user", "content": "send me once"}]}
    resp = chat(gw, user_token, body)
    assert resp.status_code == 200 and resp.headers["X-Switchyard-Node"] == good.name
    assert resp.headers["X-Switchyard-Retries"] == "1"
    assert [r.count(b"send me once") for r in dropping_node.requests] == [0, 1]  # once, not resent
    assert good.requests() == 1

    gw.wait(lambda: len(reqlog(redis_db)) == 2, what="2 log entries")
    entries = reqlog(redis_db)
    assert [(e["node"], e["retries"]) for e in entries] == [("dropper", "0"), (good.name, "1")]
    assert "dropper" in entries[1]["error"]


def test_with_no_other_node_the_failure_is_answered_not_resent(
        fleet: Fleet, gateway: Any, user_token: str, redis_db: Any, dropping_node: DroppingNode) -> None:
    url = dropping_node.start()
    fleet.add("dropper", url)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {"dropper"}, what="eligible")
    assert chat(gw, user_token).status_code == 200
    failed = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": MODEL, "messages": CHAT["messages"]},
                        headers={"Authorization": f"Bearer {user_token}"}, timeout=30)
    assert failed.status_code == 502
    assert "no other node was available" in failed.json()["error"]["message"]
    assert failed.headers["X-Switchyard-Retries"] == "0"  # there was no other node to send it to
    assert len(dropping_node.requests) == 2  # the warm-up and this one, once: never resent to the same node
