"""demo: everything on one machine — web, Celery worker + beat, and simulated agents; Ctrl-C stops it all."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from dashboard import embedded
from dashboard.accounts.roles import set_role

ROOT = Path(__file__).resolve().parents[4]


class Command(BaseCommand):
    help = (
        "Run a local Switchyard: migrate, seed an admin and a pool of simulated nodes, then start the web app, "
        "a Celery worker with beat, and one --sim agent per node. Prints the URL and an admin login. "
        "Ctrl-C (or --duration) stops everything it started."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--nodes", type=int, default=6, help="simulated nodes (default 6)")
        parser.add_argument("--gpus", type=int, default=8, help="GPUs per simulated node (default 8)")
        parser.add_argument("--pool", default="demo", help="pool of the simulated nodes (default demo)")
        parser.add_argument("--host", default="127.0.0.1", help="web address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="web port (default 8000)")
        parser.add_argument("--interval", type=int, default=5, help="agent push interval in seconds (default 5)")
        parser.add_argument("--no-celery", action="store_true", help="do not start the Celery worker and beat")
        parser.add_argument("--duration", type=float, default=0,
                            help="stop by itself after this many seconds (default: run until Ctrl-C)")

    def handle(self, *args: Any, **opts: Any) -> None:
        if not 1 <= opts["nodes"] <= 200:
            raise CommandError("--nodes must be between 1 and 200 on one machine")
        self.stdout.write("Migrating the database ...")
        call_command("migrate", verbosity=0)
        password = self.seed_admin()
        tokens = self.seed_nodes(opts["nodes"], opts["pool"])
        env = dict(os.environ, SWITCHYARD_DATABASE_URL=settings.DATABASE_URL, SWITCHYARD_REDIS_URL=settings.REDIS_URL,
                   PYTHONUNBUFFERED="1")
        # Children get the resolved URLs, so they neither start nor stop the embedded servers: this process
        # holds them for as long as the demo runs.
        url = f"http://{opts['host']}:{opts['port']}"
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        logs = embedded.var_dir() / "demo-logs"
        logs.mkdir(exist_ok=True)

        def start(name: str, argv: list[str]) -> None:
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process at the end)
            procs.append((name, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True)))

        py = sys.executable
        try:
            start("web", [py, "manage.py", "serve", "--host", opts["host"], "--port", str(opts["port"])])
            if not opts["no_celery"]:
                start("celery", [py, "-m", "celery", "-A", "dashboard", "worker", "--beat", "--concurrency", "1",
                                 "--loglevel", "warning", "--schedule", str(embedded.var_dir() / "celerybeat")])
            self.wait_for_web(opts["host"], opts["port"])
            for name, token in tokens:
                start(f"agent-{name}", [py, "-m", "agents", "--sim", "--sim-gpus", str(opts["gpus"]),
                                        "--server", url, "--token", token, "--node", name,
                                        "--interval", str(opts["interval"]),
                                        "--state-dir", str(embedded.var_dir() / "agents" / name)])
            self.stdout.write(self.style.SUCCESS(f"\nSwitchyard is running at {url}/"))
            self.stdout.write(f"  admin login: admin / {password}")
            self.stdout.write(f"  API docs:    {url}/api/docs/    Prometheus: {url}/metrics/fleet")
            self.stdout.write(f"  logs:        {logs}/")
            self.stdout.write("  Ctrl-C stops everything.\n")
            self.watch(procs, opts["duration"])
        except KeyboardInterrupt:
            pass
        finally:
            self.stdout.write("Stopping ...")
            for _, proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for name, proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.stderr.write(f"{name} did not stop in 15 s; killing it")
                    os.killpg(proc.pid, signal.SIGKILL)
            self.stdout.write("Stopped.")

    def seed_admin(self) -> str:
        user, _ = get_user_model().objects.get_or_create(username="admin")
        password = secrets.token_urlsafe(9)
        user.set_password(password)  # a fresh one each run: the old one was printed to a terminal
        user.save()
        set_role(user, "admin")
        return password

    def seed_nodes(self, count: int, pool: str) -> list[tuple[str, str]]:
        from dashboard.fleet.models import Node

        tokens = []
        for i in range(1, count + 1):
            name = f"sim-{pool}-{i:02d}"
            out = StringIO()
            rotate = ["--rotate"] if Node.objects.filter(name=name).exists() else []
            call_command("createnode", name, "--pool", pool, *rotate, stdout=out)
            tokens.append((name, out.getvalue().strip().splitlines()[-1]))
        return tokens

    def wait_for_web(self, host: str, port: int) -> None:
        import socket

        for _ in range(300):
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise CommandError(f"the web server did not start on {host}:{port}; see .var/demo-logs/web.log")

    def watch(self, procs: list[tuple[str, subprocess.Popen[bytes]]], duration: float) -> None:
        started = time.monotonic()
        while not duration or time.monotonic() - started < duration:
            time.sleep(min(10.0, duration or 10.0))
            for name, proc in procs:
                if proc.poll() is not None:
                    raise CommandError(f"{name} exited with {proc.returncode}; see .var/demo-logs/{name}.log")
            with connection.cursor() as cur:
                cur.execute("SELECT count(*), max(ts) FROM gpu_sample WHERE ts > now() - interval '1 minute'")
                rows, newest = cur.fetchone()
            self.stdout.write(f"[{time.monotonic() - started:5.0f} s] GPU rows in the last minute: {rows}"
                              f" (newest {newest:%H:%M:%S})" if newest else "  waiting for the first samples ...")
