"""Shared fixtures: real PostgreSQL and Redis (embedded or the machine's, by the same rule as the app)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS
from dashboard.celery import app as celery_app
from dashboard.metrics import latest as latest_mod
from dashboard.metrics import partitions, schema

# Tests use their own Redis database so that they never clear a running demo's state on the same server.
# TEST_REDIS_DB lets two suites share one Redis server (parallel work trees) without flushing each other.
settings.REDIS_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/" + os.environ.get("TEST_REDIS_DB", "15")
settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [settings.REDIS_URL]
settings.CELERY_BROKER_URL = settings.CELERY_RESULT_BACKEND = settings.REDIS_URL
celery_app.conf.update(broker_url=settings.REDIS_URL, result_backend=settings.REDIS_URL)
latest_mod.redis_client.cache_clear()


# --- browser tests without a browser -------------------------------------------------------------------------------
# In CI (CI=true, which .ci/run sets) a missing Chromium fails every browser test: a green run must never hide that
# they did not run. Elsewhere they are skipped, and the end of the run says so in one line that cannot be missed.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
INSTALL_CHROMIUM = "apt-get install -y chromium (Debian's package; Playwright drives /usr/bin/chromium)"
_browser_missing = pytest.StashKey[list[str]]()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/browser/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.browser)
    if os.path.exists(CHROMIUM):
        return
    browser = [item for item in items if item.get_closest_marker("browser")]
    config.stash[_browser_missing] = [item.nodeid for item in browser]
    if not in_ci():
        skip = pytest.mark.skip(reason=f"{CHROMIUM} not found: {INSTALL_CHROMIUM}")
        for item in browser:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if in_ci() and item.nodeid in item.config.stash.get(_browser_missing, []):
        pytest.fail(f"{CHROMIUM} not found and CI=true: browser tests must run in CI; {INSTALL_CHROMIUM}",
                    pytrace=False)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    missing = config.stash.get(_browser_missing, [])
    if missing:
        verdict = "FAILED (CI=true)" if in_ci() else "were SKIPPED"
        terminalreporter.write_line(
            f"!! {len(missing)} browser tests {verdict}: {CHROMIUM} is missing. Install it: {INSTALL_CHROMIUM}",
            red=True, bold=True)


@pytest.fixture
def redis_db() -> Iterator[Any]:
    client = latest_mod.redis_client()
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def clean_samples(transactional_db: None, redis_db: Any, _close_worker_connections: None) -> Iterator[None]:
    """Sample tables are raw SQL tables that Django's flush does not know: empty them around each test."""
    names = ", ".join(t.name for t in schema.ALL_TABLES)

    def truncate() -> None:
        with connection.cursor() as cur:
            cur.execute(f"TRUNCATE {names}, metrics_rollup_state, metrics_fleet_1m")

    truncate()
    partitions._known_days.clear()
    yield
    truncate()


def make_node(name: str = "gpu-a-1", pool: str = "pool-a") -> str:
    """Register a node through the real command and return its token (the command's last stdout line)."""
    from io import StringIO

    out = StringIO()
    call_command("createnode", name, "--pool", pool, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def full_sample(seq: int, ts: datetime | None = None, gpus: int = 2, base: float = 10.0) -> dict[str, Any]:
    """A sample with every catalogue metric set to an in-range value derived from `base`."""
    ts = ts or datetime.now(UTC)

    def value(m: Any, offset: float) -> float | int:
        v = min(m.hi, max(m.lo, base + offset))
        return int(v) if m.integer else float(v)

    return {
        "ts": iso(ts),
        "seq": seq,
        "host": {m.name: value(m, i) for i, m in enumerate(HOST_METRICS)},
        "inference": {m.name: value(m, i) for i, m in enumerate(INFERENCE_METRICS)},
        "gpus": [
            {"index": g, "uuid": f"GPU-{g:04d}", "name": "NVIDIA H100 80GB HBM3",
             **{m.name: value(m, g + i * 0.5) for i, m in enumerate(GPU_METRICS)}}
            for g in range(gpus)
        ],
    }


@dataclass
class AsgiResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]


def asgi_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> AsgiResponse:
    """Drive the real ASGI application (the same router uvicorn serves) with one HTTP request."""
    from dashboard.asgi import application

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(application(scope, receive, send))
    start = messages[0]
    return AsgiResponse(
        start["status"],
        {k.decode().lower(): v.decode() for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in messages[1:]),
    )


@pytest.fixture
def push() -> Callable[..., AsgiResponse]:
    """POST to /api/v1/ingest through the ASGI app, as an agent would."""

    def _push(token: str | None, body: Any, raw: bytes | None = None, method: str = "POST",
              **headers: str) -> AsgiResponse:
        data = raw if raw is not None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return asgi_request(method, "/api/v1/ingest", hdrs, data)

    return _push


def count(table: str) -> int:
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return int(cur.fetchone()[0])


@pytest.fixture(scope="session")
def _close_worker_connections(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Ingest runs on pool threads with their own connections; end them so the test database can be dropped."""
    yield
    with django_db_blocker.unblock(), connection.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")


def make_user(name: str, role: str) -> str:
    """Create a user through the real command; returns its API token."""
    from io import StringIO

    out = StringIO()
    call_command("createuser", name, "--role", role, "--password", "correct-horse-battery", stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def database_url_for_subprocess() -> str:
    """A URL to the test database pytest-django created, for subprocesses (workers, the demo) to use."""
    from urllib.parse import quote

    db = connection.settings_dict
    auth = quote(db["USER"] or "") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    host = db["HOST"] or ""
    if host.startswith("/"):
        return f"postgresql://{auth}@/{db['NAME']}?host={host}"
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgresql://{auth}@{host}{port}/{db['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    import os

    return dict(os.environ, SWITCHYARD_DATABASE_URL=database_url_for_subprocess(), SWITCHYARD_REDIS_URL=settings.REDIS_URL,
                **extra)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:  # a loaded 2-core CI box can take 20 s+
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def at_once(fn: Callable[[], Any], n: int = 2, timeout: float = 60.0) -> list[Any]:
    """Run `fn` in `n` threads released together (each with its own database connection, closed after); returns
    their results, and re-raises the first error any of them hit."""
    import threading

    start = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=10)
            results.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]
    return results
