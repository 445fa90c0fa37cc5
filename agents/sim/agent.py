"""The agent of a simulated node: the real push code (agents/push.py) driven on the fleet's event loop.

Each node gets a Pusher with its own token and state directory (spool, sequence number, dead letters), so
batching, replay after an outage, dead-lettering and `desired` (interval, drain state, power limits) behave as on
a real host; only the I/O differs: pushes go through one shared httpx.AsyncClient instead of a thread per node.
The inference metrics are the node's own `/metrics` text run through the agent's parser in-process (the loop
cannot scrape itself with the blocking scraper); while the node's server is down or hung they are null, as a
real agent's failed scrape makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from agents.catalogue import INFERENCE_METRICS
from agents.collectors.base import CompositeBackend, Metrics, empty
from agents.collectors.inference import InferenceMetrics, parse_prometheus
from agents.push import PushConfig, Pusher
from agents.sim.metrics import render
from agents.sim.node import SimNode

log = logging.getLogger(__name__)


class NodeInference:
    """The node's inference metrics as the agent's scraper computes them from its /metrics text."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self._metrics = InferenceMetrics()

    def collect(self) -> Metrics:
        if not self.node.serving():
            return empty(INFERENCE_METRICS)
        return self._metrics.update(parse_prometheus(render(self.node.engine, self.node.model)), time.monotonic())

    def models(self) -> list[str] | None:
        return [self.node.model] if self.node.serving() else None

    def serving(self) -> dict[str, Any] | None:
        return self.node.advertised() if self.node.serving() else None

    def close(self) -> None:
        pass


class AsyncPusher(Pusher):
    def __init__(self, config: PushConfig, backend: Any, client: httpx.AsyncClient) -> None:
        self._aclient = client
        super().__init__(config, backend)

    def _open_client(self) -> Any:
        return None  # pushes go through the shared asynchronous client

    async def aflush(self, deadline: float | None = None) -> bool:
        steps = self.flush_steps(deadline)
        try:
            body = next(steps)
            while True:
                try:
                    resp = await self._aclient.post(self.url, content=body, headers=self.headers)
                except httpx.HTTPError as exc:
                    body = steps.throw(exc)
                else:
                    body = steps.send(resp)
        except StopIteration as done:
            return bool(done.value)


class NodeAgent:
    """Collects every `interval` seconds and pushes between collections, like Pusher.run, as a task."""

    def __init__(self, node: SimNode, server_url: str, token: str, state_dir: Path, interval_s: float,
                 client: httpx.AsyncClient) -> None:
        self.node = node
        backend = CompositeBackend(node.gpu, node.host, NodeInference(node))
        config = PushConfig(server=server_url, token=token, node=node.name, state_dir=state_dir,
                            interval_s=max(1, round(interval_s)), endpoint=node.url)
        self.pusher = AsyncPusher(config, backend, client)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-agent-{self.node.name}")

    async def _run(self) -> None:
        p = self.pusher
        next_collect = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_collect:
                try:
                    p.collect_once()
                except Exception:  # noqa: BLE001 - one bad reading must not end the agent
                    log.exception("%s: collecting a sample failed", self.node.name)
                next_collect += p.interval
                if next_collect <= now:
                    next_collect = now + p.interval
            if len(p.spool) and time.monotonic() >= p.retry_at:
                try:
                    await p.aflush(deadline=next_collect)
                except Exception:  # noqa: BLE001
                    log.exception("%s: pushing failed", self.node.name)
                self.node.admin_state = p.state
            wake = min(next_collect, p.retry_at) if len(p.spool) else next_collect
            await asyncio.sleep(max(0.05, wake - time.monotonic()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.pusher.close()
