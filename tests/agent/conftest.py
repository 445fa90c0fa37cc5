"""Fixtures the agent's tests share: a local ingest server and pushers on one state directory."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.collectors.sim import SimBackend
from agents.push import PushConfig, Pusher
from tests.agent.test_push import TOKEN, FakeTime, IngestServer


@pytest.fixture
def server() -> Iterator[IngestServer]:
    s = IngestServer()
    yield s
    s.stop()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Pusher]]:
    """Pushers on one state directory (so that a second one is the first one restarted), on a fake clock; the
    backend defaults to one simulated GPU."""
    made: list[Pusher] = []
    ft = FakeTime()

    def factory(url: str, backend: Any = None) -> Pusher:
        cfg = PushConfig(server=url, token=TOKEN, node="gpu-a-1", state_dir=tmp_path / "state", timeout_s=2.0)
        backend = backend if backend is not None else SimBackend(gpus=1, seed=0)
        made.append(Pusher(cfg, backend, clock=ft.clock, sleep=ft.sleep, rng=random.Random(7)))
        return made[-1]

    yield factory
    for p in made:
        p.close()
