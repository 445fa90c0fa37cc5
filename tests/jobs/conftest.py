"""Job tests: the control-plane role fixtures, a fake gateway, a local webhook receiver and real Celery workers
(`celery_worker()` starts one against any gateway URL: the fake one here, or a real gateway in
tests/jobs/test_jobs_gateway_e2e.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from control.scheduler.auth import internal_token
from control.webhooks.models import Receiver as WebhookReceiver
from tests.browser.conftest import chromium, page, server  # noqa: F401  (fixtures)
from tests.conftest import free_port, subprocess_env
from tests.control.conftest import _fast_passwords, api, browser, tokens  # noqa: F401  (fixtures)
from tests.jobs.fake_gateway import FakeGateway, Served

ROOT = Path(__file__).resolve().parent.parent.parent
MAX_WAIT_S = 4  # the worker gives up on a shard after waiting this long in total for capacity


def wait_for(predicate: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_state(api_for: Callable[..., Any], job_id: str) -> dict[str, Any]:
    return dict(api_for("operator").get(f"/api/v1/jobs/{job_id}").json())


def wait_job(api_for: Callable[..., Any], job_id: str, worker: Any, timeout: float = 60) -> dict[str, Any]:
    """The job's detail once it is done, failed or cancelled (the worker's log in the error if it never is)."""
    try:
        return wait_for(lambda: (s := job_state(api_for, job_id))["status"] in ("done", "failed", "cancelled") and s,
                        timeout, f"job {job_id} to finish")
    except AssertionError:
        raise AssertionError(f"{job_state(api_for, job_id)}\n--- worker log ---\n"
                             f"{worker.log.read_text()[-4000:]}") from None


HOOK_SECRET = "s3cret-s3cret"


def hook(receiver_url: str) -> WebhookReceiver:
    # An admin-marked internal receiver may be on loopback; ad-hoc callback URLs never may (SSRF rule).
    return WebhookReceiver.objects.create(name="jobs-hook", url=f"{receiver_url}/hook", secret=HOOK_SECRET,
                                          events=["job"], internal=True, format="alertmanager")


def job_posts(receiver: Any, job_id: str) -> list[dict[str, Any]]:
    """The `job` webhook events the receiver got for this job."""
    return [p for p in receiver.posts if p["headers"].get("x-switchyard-event") == "job"
            and p["json"]["switchyard"]["payload"]["id"] == job_id]


@pytest.fixture(scope="module")
def fake_gateway() -> Iterator[tuple[FakeGateway, str]]:
    fake = FakeGateway(token=internal_token())
    port = free_port()
    with Served(fake, port):
        yield fake, f"http://127.0.0.1:{port}"


class Receiver:
    """A real HTTP server that records every POST (path, headers, raw and JSON body)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                owner.posts.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "raw": raw, "json": json.loads(raw or b"null")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@contextmanager
def celery_worker(gateway_url: str, log: Path, max_wait_s: int = MAX_WAIT_S) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker (threads pool, 4 at once so shards run in parallel) sending shards to `gateway_url`."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "dashboard", "worker", "--pool", "threads", "--concurrency", "4",
             "--loglevel", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=subprocess_env(SWITCHYARD_GATEWAY_URL=gateway_url,
                                         SWITCHYARD_JOBS_MAX_WAIT_S=str(max_wait_s)),
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "ready" in log.read_text() or proc.poll() is not None, 60, "the Celery worker")
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.log = log  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def worker(django_db_setup: None, fake_gateway: tuple[FakeGateway, str], tmp_path_factory: Any) -> Iterator[Any]:
    """A real Celery worker against the fake gateway."""
    with celery_worker(fake_gateway[1], tmp_path_factory.mktemp("worker") / "worker.log") as proc:
        yield proc
