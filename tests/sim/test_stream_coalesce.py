"""A streamed answer whose writer fell behind the engine sends the steps it missed in one write (issue 14): the same
SSE events in the same order, fewer writes. Driven on the node's stream generator itself, no sockets."""

from __future__ import annotations

import asyncio

import orjson

from agents.sim import openai
from agents.sim.engine import SimRequest
from agents.sim.node import SimNode
from agents.sim.profiles import PROFILES


def events(writes: list[bytes]) -> list[dict | str]:
    out: list[dict | str] = []
    for part in b"".join(writes).split(b"\n\n"):
        if part.startswith(b"data: "):
            data = part[6:]
            out.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return out


async def stream(steps: list[int], behind: bool) -> list[bytes]:
    """The node's stream of a 6-token chat answer made in `steps` engine steps. behind: every step ended before the
    writer got to run (a busy process); else the writer takes each step as it comes."""
    node = SimNode("n1", PROFILES["h100"])
    try:
        body = orjson.dumps({"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                             "max_tokens": 6, "stream_options": {"include_usage": True}})
        c = openai.parse(body, "chat", "sim-llm", 4096)
        sim = SimRequest(prompt_tokens=3, target_tokens=6, finish_reason="length", stream=asyncio.Queue())
        sim.outcome = "length"
        gen = node._stream(c, sim, ["a ", "b ", "c ", "d ", "e ", "f"], "chatcmpl-x", 1)
        writes = [await anext(gen)]  # the role chunk, before any token
        assert sim.stream is not None
        if behind:
            for n in steps:
                sim.stream.put_nowait(n)
            sim.stream.put_nowait(None)
        else:
            for n in steps:
                sim.stream.put_nowait(n)
                writes.append(await anext(gen))
            sim.stream.put_nowait(None)
        writes += [w async for w in gen]
        return writes
    finally:
        await node.close()


def test_a_writer_behind_the_engine_sends_the_missed_steps_at_once_with_the_same_events() -> None:
    steps = [1, 1, 2, 1, 1]  # the prefill's token, then decode steps (a multi-step sleep gave one of them 2)
    in_step = asyncio.run(stream(steps, behind=False))
    behind = asyncio.run(stream(steps, behind=True))
    assert len(in_step) == 1 + len(steps) + 1  # role, one write per engine step, the end
    assert len(behind) == 3  # role, every token at once, the end (finish, usage, [DONE] in one write)
    same = events(in_step)
    assert events(behind) == same  # same events, same order, nothing lost or added
    tokens = [e["choices"][0]["delta"].get("content") for e in same if isinstance(e, dict) and e["choices"]]
    assert tokens == ["", "a ", "b ", "c ", "d ", "e ", "f", None]  # role (empty), one event per token, finish
    assert same[-2]["usage"]["completion_tokens"] == 6 and same[-1] == "[DONE]"
