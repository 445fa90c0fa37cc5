"""Fixtures of the fleet simulator's tests: a real fleet (real HTTP servers on free ports) in a background loop."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from agents.sim.background import BackgroundFleet

MODEL = "sim-llm"


@pytest.fixture
def fleet() -> Iterator[BackgroundFleet]:
    """A fleet at 20x real time with a control API on a free port and no agents."""
    with BackgroundFleet(pool="t", model=MODEL, gpus=2, time_scale=20.0, seed=7, control_port=0) as f:
        yield f


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as c:
        yield c


def chat(content: str = "Hello there, how are you?", **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def sse_events(lines: list[str]) -> list[str]:
    """The data payloads of an SSE stream, in order."""
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]
