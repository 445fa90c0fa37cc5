"""The agents of a sim fleet run the real push loop: own token per node, endpoint and models, replay after an
outage in order, and what the server's `desired` asks (drain state, power limits) applied and reported back.

The receiving end is a small HTTP server of the test's own, because the real ingest does not send power limits
yet (the power-capping controller will); the end-to-end test against `manage.py serve` is in test_command.py.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agents.sim.background import BackgroundFleet
from tests.sim.conftest import MODEL


class Ingest(ThreadingHTTPServer):
    """Answers 503 to the first `down` pushes, then 200 with `desired`; keeps every push it accepted."""

    def __init__(self, down: int, desired: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), IngestHandler)
        self.down = down
        self.desired = desired
        self.pushes: list[tuple[str, dict[str, Any]]] = []
        self.refused = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class IngestHandler(BaseHTTPRequestHandler):
    server: Ingest

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            if self.server.refused < self.server.down:
                self.server.refused += 1
                self._answer(503, {"error": "down for maintenance"})
                return
            doc = json.loads(gzip.decompress(body))
            self.server.pushes.append((self.headers["Authorization"], doc))
        self._answer(200, {"accepted": len(doc["samples"]), "duplicates": 0, "desired": self.server.desired})

    def _answer(self, status: int, doc: dict[str, Any]) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    server = Ingest(down=2, desired={"interval_s": None, "state": "draining", "power_limit_w": {"0": 250}})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_agents_push_replay_in_order_and_apply_desired(ingest: Ingest) -> None:
    tokens: list[tuple[str, str]] = []

    def register(name: str, pool: str) -> str:
        tokens.append((name, pool))
        return f"token-of-{name}"

    with BackgroundFleet(pool="ag", model=MODEL, gpus=2, server_url=ingest.url, register=register, interval_s=1,
                         time_scale=10.0) as fleet:
        a = fleet.add_node(profile="h100")
        b = fleet.add_node(profile="l40s")
        assert tokens == [("ag-01", "ag"), ("ag-02", "ag")]
        deadline = time.monotonic() + 30
        while True:
            with ingest.lock:
                seen = {doc["node"] for _, doc in ingest.pushes if doc["samples"][-1]["seq"] >= 4}
            if seen == {a.name, b.name}:
                break
            assert time.monotonic() < deadline, "the agents did not get four samples each through"
            time.sleep(0.2)
        limits = {n.name: fleet.call(lambda f, n=n: [g.power_limit_w for g in f.node(n.name).gpu.gpus])
                  for n in (a, b)}
        states = {n.name: fleet.call(lambda f, n=n: f.node(n.name).admin_state) for n in (a, b)}

    by_node: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for auth, doc in ingest.pushes:
        by_node.setdefault(doc["node"], []).append((auth, doc))
    for node in (a, b):
        pushes = by_node[node.name]
        assert {auth for auth, _ in pushes} == {f"Bearer token-of-{node.name}"}
        seqs = [s["seq"] for _, doc in pushes for s in doc["samples"]]
        assert seqs == list(range(1, len(seqs) + 1))  # nothing lost while the server was down, nothing reordered
        first = pushes[0][1]
        assert first["endpoint"] == node.url and first["models"] == [MODEL]
        assert len(first["samples"][0]["gpus"]) == 2
        # After the first 200, GPU 0 is capped at 250 W: applied, reported back, and visible in the samples.
        last = pushes[-1][1]
        assert last["applied"]["power_limit_w"] == {"0": 250.0}
        assert last["samples"][-1]["gpus"][0]["power_limit_w"] == 250.0
    assert limits[a.name] == [250.0, 700.0] and limits[b.name] == [250.0, 350.0]
    assert states == {a.name: "draining", b.name: "draining"}
    assert ingest.refused == 2
