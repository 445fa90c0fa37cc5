"""A simulated GPU fleet in one asyncio process: nodes, their agents, and the control API.

    fleet = SimFleet(pool="p", model="sim-llm", gpus=8, server_url="http://127.0.0.1:8000", register=issue_token)
    await fleet.start(control_port=8399)
    node = await fleet.add_node(profile="h100")
    fleet.fail(node.name, "refuse"); fleet.recover(node.name)
    await fleet.stop()

`register(name, pool) -> token` is called (in a worker thread: it may block on a database) for every node added;
with `server_url` each node then gets an agent pushing to Switchyard with that token. Without `server_url` the
nodes only serve (tests of the OpenAI side, benchmarks of a gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from agents.sim import profiles
from agents.sim.agent import NodeAgent
from agents.sim.kv_events import KVEventsConfig
from agents.sim.metrics import STYLES
from agents.sim.node import FAIL_MODES, SimNode
from agents.sim.serving import Serving

if TYPE_CHECKING:
    from agents.sim.control import ControlApi

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")  # the server's node-name rule
MAX_BOOT_DELAY_S = 3600.0
MAX_SLOW_FACTOR = 1000.0

Register = Callable[[str, str], str]


class UnknownNode(KeyError):
    def __str__(self) -> str:
        return f"no node named {self.args[0]!r} in this fleet"


class SimFleet:
    def __init__(self, pool: str = "p", model: str = "sim-llm", gpus: int = 8, host: str = "127.0.0.1",
                 time_scale: float = 1.0, server_url: str | None = None, register: Register | None = None,
                 interval_s: float = 5.0, seed: int | None = None, profile: str = "h100", base_port: int = 0,
                 state_dir: str | Path | None = None, advertise_host: str | None = None,
                 metrics_style: str = "vllm", kv_events: KVEventsConfig | None = None) -> None:
        if not NAME_RE.match(pool):
            raise ValueError(f"pool name {pool!r} is not valid: use 1-63 lowercase letters, digits, '.', '_' or '-'")
        if not 1 <= gpus <= 64:
            raise ValueError(f"gpus must be 1-64, got {gpus}")
        if not time_scale > 0:
            raise ValueError(f"time_scale must be above 0, got {time_scale}")
        if server_url is not None and register is None:
            raise ValueError("server_url needs register: each node's agent pushes with its own token")
        if metrics_style not in STYLES:
            raise ValueError(f"unknown metrics style {metrics_style!r}; use one of {', '.join(STYLES)}")
        if profile not in profiles.PROFILE_CHOICES:
            raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(profiles.PROFILE_CHOICES)}")
        self.pool, self.model, self.gpus, self.host = pool, model, gpus, host
        self.time_scale, self.server_url, self.register = time_scale, server_url, register
        self.interval_s, self.seed, self.profile = interval_s, seed, profile
        self.base_port, self.advertise_host = base_port, advertise_host
        self.metrics_style = metrics_style  # which server's /metrics names the nodes expose (vllm or sglang)
        self.kv_events = kv_events  # each node publishes vLLM's KV-cache events with this config (kv_events.py)
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._own_state_dir = False
        self._nodes: dict[str, SimNode] = {}
        self._agents: dict[str, NodeAgent] = {}
        self._boots: dict[str, asyncio.Task[None]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._added = 0
        self._cycle = 0
        self._client: httpx.AsyncClient | None = None
        self.control: ControlApi | None = None  # when started with a control port
        self.control_url: str | None = None
        self._lock = asyncio.Lock()
        # What new nodes run: the last deployment a restart applied (None: the profile's own model).
        self.serving: Serving | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self, control_port: int | None = None) -> None:
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix=f"simfleet-{self.pool}-"))
            self._own_state_dir = True
        if self.server_url is not None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0),
                                             limits=httpx.Limits(max_connections=50, max_keepalive_connections=20))
        if control_port is not None:
            from agents.sim.control import ControlApi

            api = ControlApi(self, self.host, control_port)
            await api.start()
            self.control = api
            self.control_url = api.url

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.close()
            self.control = None
        for name in list(self._nodes):
            await self.remove_node(name)
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._own_state_dir and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)

    # -- nodes ----------------------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[SimNode]:
        return list(self._nodes.values())

    def node(self, name: str) -> SimNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise UnknownNode(name) from None

    def _next_name(self) -> str:
        while True:
            self._added += 1
            name = f"{self.pool}-{self._added:02d}"[:63]
            if name not in self._nodes:
                return name

    def _ports(self) -> list[int]:
        """Ports to try for a new node: any free one, or the first ones from base_port that no node holds."""
        if self.base_port <= 0:
            return [0]
        used = {n.port for n in self._nodes.values()}
        return [p for p in range(self.base_port, min(65536, self.base_port + len(used) + 100)) if p not in used]

    async def add_node(self, name: str | None = None, profile: str | None = None,
                       boot_delay_s: float = 0.0, serving: Serving | None = None) -> SimNode:
        """Add a node. With boot_delay_s > 0 it returns at once in state "booting" and starts serving (and its
        agent pushing) after the delay, in wall seconds."""
        if profile is None or profile == "mixed":
            # A mixed fleet (or a request for "mixed") takes the next profile of the h100, a100, l40s cycle.
            profile = profiles.for_index(self.profile if profile is None else "mixed", self._cycle)
            self._cycle += 1
        prof = profiles.get(profile)
        if not 0 <= boot_delay_s <= MAX_BOOT_DELAY_S:
            raise ValueError(f"boot_delay_s must be 0-{MAX_BOOT_DELAY_S:g} seconds, got {boot_delay_s}")
        async with self._lock:  # two concurrent adds must not pick the same name or port
            if name is None:
                name = self._next_name()
            elif not NAME_RE.match(name):
                raise ValueError(f"node name {name!r} is not valid: use 1-63 lowercase letters, digits, '.', '_' "
                                 "or '-', starting and ending with a letter or digit")
            if name in self._nodes:
                raise ValueError(f"a node named {name!r} already exists in this fleet")
            token = await asyncio.to_thread(self.register, name, self.pool) if self.register is not None else None
            seed = None if self.seed is None else self.seed * 1000 + len(self._nodes)
            error: OSError | None = None
            for port in self._ports():
                try:
                    node = SimNode(name, prof, model=self.model, gpus=self.gpus, host=self.host, port=port,
                                   time_scale=self.time_scale, seed=seed, advertise_host=self.advertise_host,
                                   serving=serving or self.serving, kv_events=self.kv_events)
                    break
                except OSError as exc:  # taken by another process: the next one
                    error = exc
            else:
                raise OSError(f"no free port for node {name} from {self.base_port}: {error}")
            node.metrics_style = self.metrics_style
            self._nodes[name] = node
        if boot_delay_s > 0:
            self._boots[name] = asyncio.get_running_loop().create_task(self._boot(node, token, boot_delay_s))
        else:
            await self._boot(node, token, 0.0)
        log.info("node %s (%s) at %s: %s", name, profile, node.url, node.state)
        return node

    async def _boot(self, node: SimNode, token: str | None, delay: float) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            await node.boot()
            if self.server_url is not None and token is not None and self._client is not None:
                assert self._state_dir is not None
                agent = NodeAgent(node, self.server_url, token, self._state_dir / node.name, self.interval_s,
                                  self._client)
                self._agents[node.name] = agent
                agent.start()
        finally:
            self._boots.pop(node.name, None)

    def restart_node(self, name: str, serving: Serving | None = None, boot_delay_s: float = 0.0) -> SimNode:
        """Restart a node's inference server (with `serving` from now on, which new nodes then get too); at once
        the node is "booting", and it serves again after the delay. ServingError when `serving` cannot run on it,
        ValueError when it is booting already."""
        node = self.node(name)
        if name in self._boots:
            raise ValueError(f"node {name!r} is booting already; wait until it is up")
        if not 0 <= boot_delay_s <= MAX_BOOT_DELAY_S:
            raise ValueError(f"boot_delay_s must be 0-{MAX_BOOT_DELAY_S:g} seconds, got {boot_delay_s}")
        if serving is not None:
            from agents.sim.serving import shape

            shape(node.hardware, serving, len(node.gpu.gpus))  # ServingError before anything stops
            self.serving = serving

        async def run() -> None:
            try:
                await node.restart(serving, boot_delay_s)
            finally:
                self._boots.pop(name, None)

        node.booted = False  # "booting" from this moment, not from the task's first step
        self._boots[name] = asyncio.get_running_loop().create_task(run())
        return node

    async def remove_node(self, name: str) -> None:
        node = self.node(name)
        boot = self._boots.pop(name, None)
        if boot is not None:
            boot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await boot
        agent = self._agents.pop(name, None)
        if agent is not None:
            await agent.stop()
        del self._nodes[name]
        await node.close()

    def slow_down(self, name: str, factor: float) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= MAX_SLOW_FACTOR:
            raise ValueError(f"factor must be a number above 0 and at most {MAX_SLOW_FACTOR:g} (1 = normal speed, "
                             f"2 = twice as slow), got {factor!r}")
        self.node(name).slow_down(float(factor))

    def fail(self, name: str, mode: str) -> asyncio.Task[None]:
        """Fail at once; the returned task (awaitable, not required) finishes reopening a port a previous
        `refuse` closed."""
        if mode not in FAIL_MODES:
            raise ValueError(f"unknown failure mode {mode!r}; use one of {', '.join(FAIL_MODES)}")
        return self._track(self.node(name).fail(mode))

    def recover(self, name: str) -> asyncio.Task[None]:
        """Recover at once; the returned task (awaitable, not required) finishes listening again after `refuse`."""
        return self._track(self.node(name).recover_now())

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task
