"""simfleet: run a simulated GPU fleet (OpenAI-speaking nodes + their agents + a control API) in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from io import StringIO
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from agents.sim import profiles
from agents.sim.control import DEFAULT_PORT
from agents.sim.fleet import SimFleet
from agents.sim.kv_events import KVEventsConfig
from dashboard.fleet.models import Node

MAX_NODES = 500


def register(name: str, pool: str) -> str:
    """Issue the node's agent token through createnode (the audited path), rotating it when the node exists.

    Runs in a worker thread of the fleet's loop (the ORM is synchronous), so its connection is closed after."""
    try:
        out = StringIO()
        rotate = Node.objects.filter(name=name).exists()
        call_command("createnode", name, pool=pool, rotate=rotate, reason="manage.py simfleet", stdout=out)
        return out.getvalue().strip().splitlines()[-1]
    finally:
        close_old_connections()


class Command(BaseCommand):
    help = (
        "Run a simulated GPU fleet in this process: N virtual nodes, each a real HTTP server on its own port that "
        "speaks the OpenAI API (/v1/chat/completions, /v1/completions, streaming or not, /v1/models) with a "
        "performance model (continuous batching, prefill and decode times per hardware profile) and exposes "
        "vLLM-named /metrics; a virtual NVML reports GPUs that follow the load. Each node is registered like "
        "`createnode` does (audited; an existing node of the same name gets a new token) and gets an agent that "
        "pushes to --server with its own token. A JSON control API adds, removes, slows down, fails and recovers "
        "nodes (see docs/simfleet.md). Runs until Ctrl-C or --duration."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--nodes", type=int, default=4, help=f"nodes to start with, 0-{MAX_NODES} (default 4)")
        parser.add_argument("--gpus", type=int, default=8, help="GPUs per node, 1-64 (default 8)")
        parser.add_argument("--pool", default="sim", help="pool of the nodes, created if new (default sim); nodes "
                                                         "are named <pool>-01, <pool>-02, ...")
        parser.add_argument("--server", metavar="URL", default=None,
                            help=f"Switchyard URL the agents push to (default: EXTERNAL_URL, {settings.EXTERNAL_URL})")
        parser.add_argument("--no-agents", action="store_true",
                            help="serve only: no agents, no node registration (for gateway benchmarks)")
        parser.add_argument("--profile", choices=profiles.PROFILE_CHOICES, default="h100",
                            help="hardware profile of the nodes; mixed cycles h100, a100, l40s (default h100)")
        parser.add_argument("--model", default="sim-llm", help="model name the nodes serve (default sim-llm)")
        parser.add_argument("--metrics-style", choices=["vllm", "sglang"], default="vllm",
                            help="which server's /metrics names the nodes expose: vLLM's (default) or SGLang's "
                                 "(sglang:cache_hit_rate for the prefix cache)")
        parser.add_argument("--time-scale", type=float, default=1.0,
                            help="model seconds per wall second: 10 runs the performance model ten times faster "
                                 "than real time (default 1)")
        parser.add_argument("--interval", type=int, default=5, help="agent push interval in seconds (default 5)")
        parser.add_argument("--host", default="127.0.0.1",
                            help="address the nodes and the control API listen on (default 127.0.0.1)")
        parser.add_argument("--advertise-host", default=None,
                            help="host name put in the node URLs the agents report (default: --host, or "
                                 "127.0.0.1 when --host is 0.0.0.0)")
        parser.add_argument("--base-port", type=int, default=0,
                            help="first node port; the next nodes take the following ones (default 0: any free "
                                 "ports)")
        parser.add_argument("--control-port", type=int, default=DEFAULT_PORT,
                            help=f"control API port (default {DEFAULT_PORT}; 0: any free port; -1: no control API)")
        parser.add_argument("--seed", type=int, default=None, help="seed for GPU ids and jitter (default: random)")
        parser.add_argument("--state-dir", default=None,
                            help="where the agents keep their spools (default: a temporary directory, removed at "
                                 "exit)")
        parser.add_argument("--duration", type=float, default=0,
                            help="stop by itself after this many seconds (default: run until Ctrl-C)")
        parser.add_argument("--kv-events-config", metavar="JSON",
                            default=os.environ.get("SWITCHYARD_SIM_KV_EVENTS_CONFIG", ""),
                            help="publish vLLM's KV-cache events (BlockStored/BlockRemoved/AllBlocksCleared over "
                                 "ZMQ), vLLM's option: e.g. '{\"enable_kv_cache_events\": true, \"publisher\": "
                                 "\"zmq\", \"endpoint\": \"tcp://127.0.0.1:5557\"}'; topic kv@<node>@<model> "
                                 "unless set (default: $SWITCHYARD_SIM_KV_EVENTS_CONFIG, else off)")

    def handle(self, *args: Any, **opts: Any) -> None:
        if not 0 <= opts["nodes"] <= MAX_NODES:
            raise CommandError(f"--nodes must be 0-{MAX_NODES}, got {opts['nodes']}")
        if not 1 <= opts["gpus"] <= 64:
            raise CommandError(f"--gpus must be 1-64, got {opts['gpus']}")
        if not opts["time_scale"] > 0:
            raise CommandError(f"--time-scale must be above 0, got {opts['time_scale']}")
        if not 1 <= opts["interval"] <= 300:
            raise CommandError(f"--interval must be 1-300 seconds, got {opts['interval']}")
        if not (0 <= opts["base_port"] <= 65535 and -1 <= opts["control_port"] <= 65535):
            raise CommandError("--base-port must be 0-65535 and --control-port -1-65535")
        if opts["duration"] < 0:
            raise CommandError(f"--duration must be 0 or more seconds, got {opts['duration']}")
        server = None if opts["no_agents"] else (opts["server"] or settings.EXTERNAL_URL).rstrip("/")
        if server is not None and not server.startswith(("http://", "https://")):
            raise CommandError(f"--server must be an http:// or https:// URL, got {server!r}")
        kv_events = None
        if opts["kv_events_config"]:
            try:
                kv_events = KVEventsConfig.parse(opts["kv_events_config"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            fleet = SimFleet(pool=opts["pool"], model=opts["model"], gpus=opts["gpus"], host=opts["host"],
                             time_scale=opts["time_scale"], server_url=server,
                             register=None if server is None else register, interval_s=opts["interval"],
                             seed=opts["seed"], profile=opts["profile"], base_port=opts["base_port"],
                             state_dir=opts["state_dir"], advertise_host=opts["advertise_host"],
                             metrics_style=opts["metrics_style"], kv_events=kv_events)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        try:
            asyncio.run(self.run(fleet, opts, server))
        except OSError as exc:
            raise CommandError(f"cannot listen: {exc}; pick other ports (--base-port, --control-port)") from exc

    async def run(self, fleet: SimFleet, opts: dict[str, Any], server: str | None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        control = None if opts["control_port"] < 0 else opts["control_port"]
        await fleet.start(control_port=control)
        try:
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with the server install
                tqdm = None
            bar = (tqdm(total=opts["nodes"], desc="starting nodes", unit="node", file=sys.stderr)
                   if tqdm is not None and sys.stderr.isatty() and opts["nodes"] > 1 else None)
            for _ in range(opts["nodes"]):
                try:
                    await fleet.add_node()
                except Exception as exc:  # noqa: BLE001 - registration errors (name in another pool) end the run
                    raise CommandError(f"could not add a node: {exc}") from exc
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            self.print_table(fleet, server)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=opts["duration"] or None)
            self.stdout.write("Stopping ...")
        finally:
            await fleet.stop()
        self.stdout.write("Stopped.")

    def print_table(self, fleet: SimFleet, server: str | None) -> None:
        rows = [("NODE", "PROFILE", "GPUS", "STATE", "URL")]
        rows += [(n.name, n.profile, str(len(n.gpu.gpus)), n.state, n.url) for n in fleet.nodes]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        self.stdout.write(f"Pool {fleet.pool!r}, model {fleet.model!r}, time scale {fleet.time_scale:g}.")
        self.stdout.write(f"Agents push to {server} every {fleet.interval_s:g} s." if server
                          else "No agents (--no-agents).")
        self.stdout.write(f"Control API: {fleet.control_url}" if fleet.control_url else "Control API: off")
        self.stdout.write("Press Ctrl-C to stop.")
        self.stdout.flush()
