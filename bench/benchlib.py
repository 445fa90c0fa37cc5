"""What the bench scripts share: a throw-away database and Redis db, a `manage.py serve` to measure, percentiles."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")


def use_bench_database(db_name: str, redis_db: int | None = None) -> tuple[str, str]:
    """Point Django at `db_name` (created if missing) and optionally Redis db `redis_db`, migrate, and empty the
    fleet and sample tables. Must run before anything opens a connection. Returns (database URL, Redis URL)."""
    import django
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = db_name
    if redis_db is not None:
        settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + f"/{redis_db}"
        settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [settings.REDIS_URL]
    from core import embedded

    url = urlparse(settings.DATABASE_URL)
    embedded._create_database(url._replace(path="/postgres").geturl(), db_name)
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from dashboard.metrics import schema

    call_command("migrate", verbosity=0)
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(t.name for t in schema.ALL_TABLES)}, fleet_gpu, fleet_nodetoken, "
                    "fleet_node, fleet_pool CASCADE")
    return url._replace(path=f"/{db_name}").geturl(), settings.REDIS_URL


def start_server(port: int, workers: int, db_url: str, redis_url: str, **env: str) -> subprocess.Popen[bytes]:
    """`manage.py serve` on the bench database; returns once it accepts connections."""
    environ = dict(os.environ, SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_REDIS_URL=redis_url, **env)
    proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port), "--workers", str(workers)],
                            cwd=ROOT, env=environ)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start; run `python manage.py serve` by hand to see why")


_HANDED_OUT: set[int] = set()  # every port free_port() returned in this process


def free_port() -> int:
    """A port nobody listens on now and that this process has not been given before: the socket is closed before
    the caller's server binds the port, so two calls in a row could get the same number (seen: the web server and
    simfleet's control API on one port, the bench then asking Django for the fleet's /nodes until it timed out)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30.0) -> None:
    """Return once `port` accepts connections; SystemExit if `proc` exits first or it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by rank (no interpolation: the figure is a value that was measured); NaN when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate the processes a bench started, newest first; kill any that is still up after 15 s."""
    for p in reversed(procs):
        p.terminate()
    for p in reversed(procs):
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
