"""SimFleet for synchronous code (tests, benchmarks): the fleet's event loop runs in a thread.

    with BackgroundFleet(pool="p", time_scale=20.0) as fleet:
        node = fleet.add_node(profile="l40s")
        httpx.post(f"{node.url}/v1/completions", json={...})
        fleet.fail(node.name, "refuse")

Every call runs on the fleet's loop and waits for it; errors (ValueError, UnknownNode) are raised in the caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from agents.sim.fleet import SimFleet
from agents.sim.node import SimNode

T = TypeVar("T")
CALL_TIMEOUT_S = 60.0


class BackgroundFleet:
    def __init__(self, control_port: int | None = None, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._control_port = control_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.fleet: SimFleet | None = None

    # -- plumbing -------------------------------------------------------------------------------------------

    def _run(self, coro: Awaitable[T]) -> T:
        assert self._loop is not None, "use BackgroundFleet as a context manager (or call start())"

        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(CALL_TIMEOUT_S)

    def _call(self, fn: Callable[[], T]) -> T:
        async def wrap() -> T:
            return fn()

        return self._run(wrap())

    def start(self) -> BackgroundFleet:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="sim-fleet", daemon=True)
        self._thread.start()
        ready.wait()

        async def build() -> SimFleet:
            fleet = SimFleet(**self._kwargs)
            await fleet.start(control_port=self._control_port)
            return fleet

        self.fleet = self._run(build())
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self.fleet is not None:
            self._run(self.fleet.stop())
            self.fleet = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> BackgroundFleet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the fleet's API, synchronously ---------------------------------------------------------------------

    @property
    def _f(self) -> SimFleet:
        assert self.fleet is not None, "the fleet is not running"
        return self.fleet

    @property
    def control_url(self) -> str | None:
        return self._f.control_url

    @property
    def nodes(self) -> list[SimNode]:
        return self._call(lambda: self._f.nodes)

    def node(self, name: str) -> SimNode:
        return self._call(lambda: self._f.node(name))

    def add_node(self, name: str | None = None, profile: str | None = None, boot_delay_s: float = 0.0) -> SimNode:
        return self._run(self._f.add_node(name=name, profile=profile, boot_delay_s=boot_delay_s))

    def remove_node(self, name: str) -> None:
        self._run(self._f.remove_node(name))

    def slow_down(self, name: str, factor: float) -> None:
        self._call(lambda: self._f.slow_down(name, factor))

    def fail(self, name: str, mode: str) -> None:
        async def go() -> None:
            await self._f.fail(name, mode)

        self._run(go())

    def recover(self, name: str) -> None:
        async def go() -> None:
            await self._f.recover(name)

        self._run(go())

    def call(self, fn: Callable[[SimFleet], T]) -> T:
        """Run fn(fleet) on the fleet's loop (to read engine state consistently)."""
        return self._call(lambda: fn(self._f))
