"""demo: everything on one machine — web, gateway, Celery worker + beat, a simulated fleet and a load generator whose
requests go through the gateway onto the fleet; Ctrl-C stops it all."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from control.controller import bindings
from control.policy import service as policies
from control.routing import summary
from control.scheduler.auth import internal_token
from control.scheduler.status import read_status
from control.tokens.service import revoke
from core import embedded
from core.audit.context import Origin
from core.roles import set_role
from dashboard.accounts.models import UserToken
from dashboard.fleet.models import Pool

ROOT = Path(__file__).resolve().parents[3]
LOAD_USER = "loadgen"
WEEK_S = 7 * 86400  # loadgen's longest run: "until Ctrl-C" in practice


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = (
        "Run a local Switchyard: migrate, seed an admin, then start the web app, the gateway, a Celery worker with "
        "beat, a simulated fleet (`simfleet`: OpenAI-speaking virtual GPU nodes with their agents) and a load "
        "generator that sends a compressed day with its 14:00 peak through the gateway onto the fleet. Prints the "
        "URLs, an admin login and the load generator's API token. Ctrl-C (or --duration) stops everything it started."
    )
    logs: Path  # .var/demo-logs (or under SWITCHYARD_VAR_DIR), set by handle

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--nodes", type=int, default=6, help="simulated nodes (default 6)")
        parser.add_argument("--gpus", type=int, default=8, help="GPUs per simulated node (default 8)")
        parser.add_argument("--pool", default="demo",
                            help="pool of the simulated nodes (default demo); nodes are named <pool>-01, ...")
        parser.add_argument("--profile", default="mixed", choices=["h100", "a100", "l40s", "mixed"],
                            help="hardware profile of the nodes; mixed cycles h100, a100, l40s (default mixed)")
        parser.add_argument("--host", default="127.0.0.1", help="web address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="web port (default 8000)")
        parser.add_argument("--gateway-port", type=int, default=8400, help="gateway port (default 8400)")
        parser.add_argument("--control-port", type=int, default=8399,
                            help="the simulated fleet's control API port (default 8399)")
        parser.add_argument("--interval", type=int, default=5, help="agent push interval in seconds (default 5)")
        parser.add_argument("--load-rate", type=float, default=40.0,
                            help="load in req/s: the daily curve's 14:00 peak (its night is an eighth of it), "
                                 "or the constant rate (default 40)")
        parser.add_argument("--load-curve", default="daily", choices=["daily", "constant"],
                            help="shape of the load (default daily)")
        parser.add_argument("--day-seconds", type=float, default=300.0,
                            help="length of one compressed day of the daily curve in seconds (default 300: "
                                 "the peak comes 175 s after the start)")
        parser.add_argument("--no-load", action="store_true", help="do not start the load generator")
        parser.add_argument("--no-celery", action="store_true", help="do not start the Celery worker and beat")
        parser.add_argument("--duration", type=float, default=0,
                            help="stop by itself after this many seconds (default: run until Ctrl-C)")

    def handle(self, *args: Any, **opts: Any) -> None:
        self.check_options(opts)
        self.stdout.write("Migrating the database ...")
        call_command("migrate", verbosity=0)
        password = self.seed_admin()
        load_token = None if opts["no_load"] else self.seed_load_user()
        host = opts["host"]
        url = f"http://{host}:{opts['port']}"
        gateway_url = f"http://{host}:{opts['gateway_port']}"
        control_url = f"http://{host}:{opts['control_port']}"
        self.seed_scaling(opts["pool"], opts["nodes"], control_url)
        # Children get the resolved URLs, so they neither start nor stop the embedded servers: this process
        # holds them for as long as the demo runs. The job runner (Celery) sends batch work through our gateway.
        env = dict(os.environ, SWITCHYARD_DATABASE_URL=settings.DATABASE_URL, SWITCHYARD_REDIS_URL=settings.REDIS_URL,
                   SWITCHYARD_GATEWAY_URL=gateway_url, PYTHONUNBUFFERED="1")
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        logs = self.logs = embedded.var_dir() / "demo-logs"
        logs.mkdir(exist_ok=True)

        def start(name: str, argv: list[str]) -> None:
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process at the end)
            procs.append((name, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True)))

        py = sys.executable
        # The children run in sessions of their own (a Ctrl-C reaches only us, and we stop them in order), so a
        # `kill`, a closed terminal or a supervisor's SIGTERM must take the same way out or they would be orphaned.
        # SIGINT too: Python leaves Ctrl-C ignored when it starts with SIGINT ignored, as every background job of a
        # non-interactive shell does (`.ci/run &`), and the demo then never stopped on Ctrl-C.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)
        try:
            start("web", [py, "manage.py", "serve", "--host", host, "--port", str(opts["port"])])
            start("gateway", [py, "manage.py", "gateway", "--host", host, "--port", str(opts["gateway_port"]),
                              "--id", f"demo:{opts['gateway_port']}"])
            if not opts["no_celery"]:
                start("celery", [py, "-m", "celery", "-A", "dashboard", "worker", "--beat", "--concurrency", "1",
                                 "--loglevel", "warning", "--schedule", str(embedded.var_dir() / "celerybeat")])
            self.wait_for_port(host, opts["port"], "web", procs)
            # One process for the whole fleet: it registers each node through createnode (a fresh token per run)
            # and runs every node's agent in its own event loop.
            start("simfleet", [py, "manage.py", "simfleet", "--nodes", str(opts["nodes"]), "--gpus", str(opts["gpus"]),
                               "--pool", opts["pool"], "--profile", opts["profile"], "--server", url,
                               "--interval", str(opts["interval"]), "--host", host,
                               "--control-port", str(opts["control_port"]),
                               "--state-dir", str(embedded.var_dir() / "simfleet")])
            self.wait_for_port(host, opts["gateway_port"], "gateway", procs)
            self.wait_for_port(host, opts["control_port"], "simfleet", procs, timeout=30 + opts["nodes"])
            if load_token is not None:
                self.wait_for_eligible(gateway_url, procs, timeout=max(30, 4 * opts["interval"]))
                start("loadgen", [py, "manage.py", "loadgen", *self.load_args(opts, gateway_url, load_token)])
            self.stdout.write(self.style.SUCCESS(f"\nSwitchyard is running at {url}/"))
            self.stdout.write(f"  admin login: admin / {password}")
            self.stdout.write(f"  heatmap:     {url}/heatmap/    routing: {url}/routing/    "
                              f"scheduler weights: {url}/policies/scheduler/")
            self.stdout.write(f"  gateway:     {gateway_url}/v1/chat/completions  (also /v1/models, /healthz, /metrics)")
            self.stdout.write(f"  sim fleet:   {control_url}/nodes  (control API: slow, fail, recover, add nodes; "
                              "see docs/simfleet.md)")
            self.stdout.write(f"  scaling:     {url}/scaling/  (the controller scales pool {opts['pool']} "
                              f"{opts['nodes']}..{opts['nodes'] + 4} through the fleet's control API)")
            if load_token is not None:
                what = (f"daily curve, {opts['load_rate']:g} req/s at the 14:00 peak, one day every "
                        f"{opts['day_seconds']:g} s" if opts["load_curve"] == "daily"
                        else f"{opts['load_rate']:g} req/s")
                self.stdout.write(f"  load:        {what}, through the gateway as user {LOAD_USER!r}")
                self.stdout.write(f"  load token:  {load_token}")
            self.stdout.write(f"  API docs:    {url}/api/docs/    Prometheus: {url}/metrics/fleet")
            self.stdout.write(f"  logs:        {logs}/")
            self.stdout.write("  Ctrl-C stops everything.\n")
            self.stdout.flush()
            self.watch(procs, opts["duration"])
        except KeyboardInterrupt:
            pass
        finally:
            self.stop(procs)

    def check_options(self, opts: dict[str, Any]) -> None:
        if not 1 <= opts["nodes"] <= 200:
            raise CommandError("--nodes must be between 1 and 200 on one machine")
        ports = {"--port": opts["port"], "--gateway-port": opts["gateway_port"], "--control-port": opts["control_port"]}
        for flag, port in ports.items():
            if not 0 < port < 65536:
                raise CommandError(f"{flag} {port} is not a TCP port (1-65535)")
        if len(set(ports.values())) != len(ports):
            raise CommandError("--port, --gateway-port and --control-port must differ")
        if not opts["no_load"]:
            if not 0 < opts["load_rate"] <= 10_000:
                raise CommandError("--load-rate must be above 0 and at most 10000 req/s")
            if not 10 <= opts["day_seconds"] <= WEEK_S:
                raise CommandError(f"--day-seconds must be between 10 and {WEEK_S}")
        if opts["duration"] < 0:
            raise CommandError("--duration must be 0 (run until Ctrl-C) or more seconds")

    def load_args(self, opts: dict[str, Any], gateway_url: str, token: str) -> list[str]:
        # loadgen needs an end; a week stands for "until Ctrl-C". With --duration it gets a minute more, so that it
        # never ends before the demo does (the watch loop takes any child that exits for a failure).
        duration = min(WEEK_S, opts["duration"] + 60) if opts["duration"] else WEEK_S
        if opts["load_curve"] == "daily":
            curve = ["--curve", "daily", "--rate", f"{opts['load_rate'] / 8:g}", "--peak-rate",
                     f"{opts['load_rate']:g}", "--day-seconds", f"{opts['day_seconds']:g}"]
        else:
            curve = ["--curve", "constant", "--rate", f"{opts['load_rate']:g}"]
        return ["--url", gateway_url, "--token", token, *curve, "--duration", f"{duration:g}", "--no-progress"]

    def stop(self, procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        self.stdout.write("Stopping ...")
        self.stdout.flush()  # so that a stop that is killed half-way still says it began (stdout is a pipe in tests)
        # The load and the gateway first and on their own: requests still in flight when the fleet goes down
        # would be retried, quarantine every node and fill the gateway's log with what reads like a fault.
        # Then the rest at once.
        first = [(name, proc) for name, proc in procs if name in ("loadgen", "gateway")]
        for group in (first, [p for p in procs if p not in first]):
            for _, proc in group:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            if group is first:
                for _, proc in group:
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        pass  # killed below with everything else
        for name, proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in 15 s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.stdout.write("Stopped.")

    def seed_admin(self) -> str:
        user, _ = get_user_model().objects.get_or_create(username="admin")
        password = secrets.token_urlsafe(9)
        user.set_password(password)  # a fresh one each run: the old one was printed to a terminal
        user.save()
        set_role(user, "admin")
        return password

    def seed_scaling(self, pool: str, nodes: int, control_url: str) -> None:
        """The demo pool is scaled by the controller through the fleet's control API (the local provider), between
        the demo's own nodes and four more; an entry an operator already made for the pool is kept."""
        origin = Origin.command("demo")
        Pool.objects.get_or_create(name=pool)
        bindings.set_provider(pool, "local", {"url": control_url, "boot_delay_s": 20, "profile": "h100"}, True,
                              "manage.py demo: the simulated fleet scales the demo pool", origin)
        active = policies.active("scaling")
        if pool in active.document.get("pools", {}):
            return
        doc = dict(active.document)
        # Thresholds for a compressed day (one every 300 s by default): the 14:00 peak takes the fleet to about
        # 50 % GPU, so scale out above 40 % within a minute, and back in a minute after the evening quiet.
        doc["pools"] = {**doc.get("pools", {}), pool: {
            **doc["default"], "min_nodes": nodes, "max_nodes": nodes + 4,
            "rules": [{"metric": "gpu_util_pct", "threshold": 40.0, "step": 1, "cooldown_s": 60, "window_s": 30},
                      {"metric": "queue_length", "threshold": 50.0, "step": 1, "cooldown_s": 60, "window_s": 30}],
            "scale_down": {"stabilization_window_s": 60, "step": 1, "gpu_util_below_pct": 25.0,
                           "drain_timeout_s": 60},
        }}
        policies.create_revision("scaling", doc, f"manage.py demo: pool {pool} scales {nodes}..{nodes + 4}",
                                 active.pk, origin)

    def seed_load_user(self) -> str:
        """An API-only viewer whose fresh token the load generator uses: the gateway authenticates it like any
        client's. Its earlier tokens were printed to a terminal, so they are revoked."""
        for token in UserToken.objects.filter(user__username=LOAD_USER, revoked__isnull=True):
            revoke(token, Origin.command("demo"), "manage.py demo: a new load token replaces it")
        out = StringIO()
        call_command("createuser", LOAD_USER, "--role", "viewer", "--class", "standard",
                     "--reason", "manage.py demo: load generator", stdout=out)
        return out.getvalue().strip().splitlines()[-1]

    def wait_for_port(self, host: str, port: int, name: str, procs: list[tuple[str, subprocess.Popen[bytes]]],
                      timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive(procs)
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise CommandError(f"{name} did not start on {host}:{port}; see {self.logs}/{name}.log")

    def wait_for_eligible(self, gateway_url: str, procs: list[tuple[str, subprocess.Popen[bytes]]],
                          timeout: float) -> None:
        """Hold the load until the gateway can route (the first agent pushes have told it the nodes' endpoints):
        load sent earlier would only collect 503s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive(procs)
            try:
                if read_status(gateway_url, internal_token()).eligible > 0:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        self.stderr.write(f"no node became eligible at the gateway within {timeout:g} s; starting the load anyway "
                          f"(see {self.logs}/simfleet.log and gateway.log)")

    def check_alive(self, procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        for name, proc in procs:
            if proc.poll() is not None:
                raise CommandError(f"{name} exited with {proc.returncode}; see {self.logs}/{name}.log")

    def watch(self, procs: list[tuple[str, subprocess.Popen[bytes]]], duration: float) -> None:
        started = time.monotonic()
        while not duration or time.monotonic() - started < duration:
            left = duration - (time.monotonic() - started) if duration else 10.0
            time.sleep(max(0.0, min(10.0, left)))
            self.check_alive(procs)
            with connection.cursor() as cur:
                cur.execute("SELECT count(*), max(ts) FROM gpu_sample WHERE ts > now() - interval '1 minute'")
                rows, newest = cur.fetchone()
            line = (f"[{time.monotonic() - started:5.0f} s] GPU rows in the last minute: {rows}"
                    f" (newest {newest:%H:%M:%S})" if newest else "  waiting for the first samples ...")
            self.stdout.write(line + self.routing_line())
            self.stdout.flush()

    def routing_line(self) -> str:
        """What the gateway routed in the last minute, from its request log (the routing page's source)."""
        try:
            s = summary.summary(60)
        except Exception as exc:  # noqa: BLE001 - a status line must never end the demo
            return f"; routing: unavailable ({type(exc).__name__})"
        nodes = sorted(((n["node"], n.get("requests") or 0) for n in s["nodes"] if n.get("requests")),
                       key=lambda x: x[0])
        if not nodes:
            return "; gateway: no requests routed yet"
        spread = " ".join(f"{name}:{count}" for name, count in nodes)
        return (f"; gateway, last minute: {s['totals']['requests']} requests ({s['totals']['status_429']} shed "
                f"with 429) — {spread}")
