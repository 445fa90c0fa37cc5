"""expected_ttft through the gateway (issue 14): the proxy tells the core which requests were streamed, the core
learns each node's time to first token from those only, and streamed requests go where the first token comes
soonest while plain ones still go where the whole answer is quickest."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.scheduler.conftest import MODEL, Fleet

STREAM = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": True, "max_tokens": 8}


def streamed(url: str, token: str, n: int) -> list[str]:
    """n streamed chat requests at once, read to the end; the node that answered each."""
    async def one(client: httpx.AsyncClient) -> str:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=STREAM,
                                 headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status_code == 200
            async for _ in resp.aiter_raw():
                pass
            return resp.headers["X-Switchyard-Node"]

    async def go() -> list[str]:
        async with httpx.AsyncClient(timeout=30) as client:
            return list(await asyncio.gather(*(one(client) for _ in range(n))))

    return asyncio.run(go())


def test_streamed_requests_go_where_the_first_token_comes_soonest(fleet: Fleet, upstreams: Any, gateway: Any,
                                                                  user_token: str) -> None:
    late_first, slow_rest = upstreams(2)
    # late_first: its first token 0.3 s after the role event, then the rest at once (a streamed answer ~0.3 s).
    # slow_rest: the first token at once, then 0.5 s pauses (~1 s): a quicker start, a slower answer.
    late_first.control(role_gap=0.3)
    slow_rest.control(token_gap=0.5)
    fleet.add(late_first.name, late_first.url)
    fleet.add(slow_rest.name, slow_rest.url)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {late_first.name, slow_rest.name}, what="2 eligible nodes")
    sched = gw.app.sched
    nodes = [sched.nodes[late_first.name], sched.nodes[slow_rest.name]]
    for _ in range(10):  # concurrent bursts spread over both nodes until each has answered a streamed request
        streamed(gw.url, user_token, 4)
        if all(n.stream_ttft_s is not None for n in nodes):
            break
    late, quick = nodes
    assert late.stream_ttft_s is not None and quick.stream_ttft_s is not None
    assert late.stream_ttft_s >= 0.3 > quick.stream_ttft_s  # no first token from late_first before its 0.3 s gap
    assert quick.latency_s is not None and late.latency_s is not None and quick.latency_s > late.latency_s
    # A plain request goes where the whole answer is quickest (expected_wait): late_first.
    assert sched.pick(MODEL).node is late
    # A streamed one, one at a time: where the first token comes soonest.
    after = Counter(streamed(gw.url, user_token, 1)[0] for _ in range(5))
    assert after == {slow_rest.name: 5}, after


def test_the_gateway_tells_the_core_each_prompt_length_so_it_learns_the_prefill_rate(
        fleet: Fleet, upstreams: Any, gateway: Any, user_token: str) -> None:
    (up,) = upstreams(1)
    up.control(role_gap=0.2)
    fleet.add(up.name, up.url)
    gw = gateway()
    gw.wait(lambda: gw.eligible() == {up.name}, what="1 eligible node")
    node = gw.app.sched.nodes[up.name]
    body = {**STREAM, "messages": [{"role": "user", "content": "x" * 4000}]}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {user_token}"}) as resp:
        assert resp.status_code == 200
        for _ in resp.iter_raw():
            pass
    # length.need_tokens' estimate of the prompt: 4,000 characters / 4 + 4 for the chat template = 1,004 tokens,
    # all of them ahead of its first token (nothing else was queued there)
    assert node.stream_ttft_s is not None and node.stream_ttft_s >= 0.2
    assert node.prefill_tps == pytest.approx(1004 / node.stream_ttft_s)
    assert node.sent_work == {}
