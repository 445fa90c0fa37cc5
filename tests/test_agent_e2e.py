"""The real agent against the real server (uvicorn + ingest + PostgreSQL), across a real outage."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from tests.conftest import free_port, make_node, subprocess_env, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("clean_samples")


class Server:
    def __init__(self, port: int, **env: str) -> None:
        self.port = port
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(self.port)], cwd=ROOT,
                                     env=subprocess_env(**self.env), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(free_port())
    srv.start()
    yield srv
    srv.stop()


def agent_once(server: Server, token: str, state: Path, node: str = "gpu-a-1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", "--sim", "--sim-gpus", "2", "--once", "--timeout", "3",
         "--server", f"http://127.0.0.1:{server.port}", "--token", token, "--node", node, "--state-dir", str(state)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)


def stored_seqs() -> list[int]:
    with connection.cursor() as cur:
        cur.execute("SELECT seq FROM node_sample ORDER BY ts")
        return [r[0] for r in cur.fetchall()]


def test_outage_buffer_and_replay_exactly_once_in_order(server: Server, tmp_path: Path) -> None:
    token = make_node()
    for _ in range(2):
        assert agent_once(server, token, tmp_path).returncode == 0
    assert stored_seqs() == [1, 2]

    server.stop()
    for _ in range(3):
        out = agent_once(server, token, tmp_path)
        assert out.returncode != 0  # nothing acknowledged: the sample stays in the spool
    assert stored_seqs() == [1, 2]

    server.start()
    done = agent_once(server, token, tmp_path)
    assert done.returncode == 0, done.stderr
    seqs = stored_seqs()
    assert seqs == [1, 2, 3, 4, 5, 6]  # every sample once, in the order taken (ts order == seq order)
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM gpu_sample")
        assert cur.fetchone()[0] == 6 * 2
    # Running again after success sends only the new sample.
    assert agent_once(server, token, tmp_path).returncode == 0
    assert stored_seqs() == [1, 2, 3, 4, 5, 6, 7]


def test_wrong_token_is_reported_and_samples_kept(server: Server, tmp_path: Path) -> None:
    make_node()
    out = agent_once(server, "sy_node_wrong", tmp_path)
    assert out.returncode != 0
    assert "token" in (out.stderr + out.stdout).lower()
    assert "sy_node_wrong" not in out.stderr + out.stdout  # the token is never logged
    assert stored_seqs() == []


def test_a_sample_the_server_rejects_goes_to_the_dead_letter_file(server: Server, tmp_path: Path) -> None:
    from agents.spool import Spool

    token = make_node()
    assert agent_once(server, token, tmp_path).returncode == 0
    # A sample that fails validation on the server (as a buggy collector could produce) sits in the spool.
    bad = {"ts": "2026-01-01T00:00:00.000Z", "seq": 2, "host": {"cpu_util_pct": 50.0}, "gpus": [],
           "inference": {}}
    Spool(tmp_path / "spool").append(bad)
    assert agent_once(server, token, tmp_path).returncode == 0
    dead = (tmp_path / "deadletter.jsonl").read_text().splitlines()
    assert len(dead) == 1 and '"seq":2' in dead[0].replace(" ", "")
    assert "samples[0].ts" in dead[0] and "older than the raw retention" in dead[0]
    # The good sample pushed in the same batch was re-sent without it and stored; the bad one was not.
    assert stored_seqs() == [1, 3]


def test_a_push_over_the_servers_sample_limit_loses_nothing(tmp_path: Path) -> None:
    """A backlog bigger than SWITCHYARD_INGEST_MAX_SAMPLES: whether the server says so with 413 or (before it
    did) with a 400 on `samples`, the agent sends it in smaller pushes and dead-letters nothing."""
    from agents.collectors.sim import SimBackend
    from agents.push import PushConfig, Pusher

    token = make_node()
    srv = Server(free_port(), SWITCHYARD_INGEST_MAX_SAMPLES="3")
    srv.start()
    pusher = Pusher(PushConfig(server=f"http://127.0.0.1:{srv.port}", token=token, node="gpu-a-1",
                               state_dir=tmp_path, timeout_s=10.0), SimBackend(gpus=2, seed=0))
    try:
        for _ in range(7):
            pusher.collect_once()
        for _ in range(5):  # a refusal or two while the agent finds a size that fits
            if pusher.flush():
                break
        assert len(pusher.spool) == 0, pusher.last_error
    finally:
        pusher.close()
        srv.stop()
    assert not (tmp_path / "deadletter.jsonl").exists()
    assert stored_seqs() == [1, 2, 3, 4, 5, 6, 7]

