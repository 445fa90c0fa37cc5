"""Fixtures for the gateway tests: real upstream nodes (processes), real ingest, a real gateway on a real port."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from tests.conftest import asgi_request, free_port, full_sample, make_node, make_user, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "test-model"


@dataclass
class UpstreamProc:
    name: str
    port: int
    delay: float
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.scheduler.upstream", "--port", str(self.port), "--name", self.name,
             "--delay", str(self.delay)], cwd=ROOT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def control(self, **values: Any) -> None:
        httpx.post(f"{self.url}/_control", json=values, timeout=5).raise_for_status()

    def requests(self) -> int:
        return int(httpx.get(f"{self.url}/_stats", timeout=5).json()["requests"])


@pytest.fixture
def upstreams() -> Iterator[Callable[..., list[UpstreamProc]]]:
    """upstreams(n, delay=0.0, prefix="node") -> n running upstream nodes."""
    started: list[UpstreamProc] = []

    def start(n: int, delay: float = 0.0, prefix: str = "node") -> list[UpstreamProc]:
        procs = [UpstreamProc(f"{prefix}-{i}", free_port(), delay) for i in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            wait_for_port(p.port)
        started.extend(procs)
        return procs

    yield start
    for p in started:
        p.kill()


@dataclass
class Fleet:
    """Registers nodes through `createnode` and feeds their samples through the real ingest endpoint."""

    tokens: dict[str, str] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, endpoint: str, pool: str = "pool-a", models: tuple[str, ...] = (MODEL,),
            **metrics: Any) -> None:
        self.tokens[name] = make_node(name, pool)
        self.seq[name] = 0
        self.sample(name, endpoint=endpoint, models=models, **metrics)

    def sample(self, name: str, *, endpoint: str | None = None, models: tuple[str, ...] | None = None,
               ts: datetime | None = None, gpu: float = 50.0, cpu: float = 30.0, rtt: float | None = 1.0,
               running: int | None = 0, waiting: int | None = 0, kv: float | None = 10.0,
               serving: dict[str, Any] | None = None) -> None:
        self.seq[name] += 1
        s = full_sample(self.seq[name], ts or datetime.now(UTC), gpus=2)
        for g in s["gpus"]:
            g["gpu_util_pct"] = gpu
        s["host"]["cpu_util_pct"] = cpu
        s["host"]["net_rtt_ms"] = rtt
        s["inference"].update(requests_running=running, requests_waiting=waiting, kv_cache_usage_pct=kv)
        body: dict[str, Any] = {"node": name, "samples": [s]}
        if endpoint is not None:
            body["endpoint"] = endpoint
        if models is not None:
            body["models"] = list(models)
        if serving is not None:
            body["serving"] = serving
        data = json.dumps(body).encode()
        resp = asgi_request("POST", "/api/v1/ingest", {"Content-Type": "application/json",
                                                       "Content-Length": str(len(data)),
                                                       "Authorization": f"Bearer {self.tokens[name]}"}, data)
        assert resp.status_code == 200, resp.content


@pytest.fixture
def fleet(clean_samples: None) -> Fleet:
    return Fleet()


@dataclass
class RunningGateway:
    app: Any
    port: int
    server: Any
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refresh_now(self) -> None:
        """Ask the gateway to reload at once (as a sy:policy message would), from this thread."""
        assert self.loop is not None and self.app.wake is not None
        self.loop.call_soon_threadsafe(self.app.wake.set)

    def wait(self, condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"gateway: {what} not reached in {timeout} s")

    def eligible(self) -> set[str]:
        now = time.time()
        return {n.name for n in list(self.app.sched.nodes.values()) if self.app.sched.filter_reason(n, now) == ""}


@pytest.fixture
def gateway(fleet: Fleet) -> Iterator[Callable[..., RunningGateway]]:
    """gateway(auth_required=True, max_body_bytes=...) -> a Gateway served by uvicorn on a thread of this process."""
    import uvicorn

    from control.scheduler.gateway import Gateway

    running: list[RunningGateway] = []

    def start(**kwargs: Any) -> RunningGateway:
        port = free_port()
        app = Gateway(f"test-gw-{port}", redis_url=settings.REDIS_URL, **kwargs)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                                               timeout_keep_alive=75))
        gw = RunningGateway(app, port, server, threading.Thread(target=server.run, daemon=True))

        original = app.startup

        async def startup() -> None:
            gw.loop = asyncio.get_running_loop()
            await original()

        app.startup = startup  # type: ignore[method-assign]
        gw.thread.start()
        wait_for_port(port)
        gw.wait(lambda: app.ready, what="first refresh")
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.server.should_exit = True
        gw.thread.join(15)


@pytest.fixture
def user_token(fleet: Fleet) -> str:
    return make_user("caller", "viewer")


@pytest.fixture
def realtime_token(fleet: Fleet) -> str:
    """A token whose class is realtime (issued through createuser, as an admin would): it may ask for any class."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("createuser", "urgent", "--role", "viewer", "--class", "realtime", stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def old(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)

