"""--batch-interval: samples taken every --interval, pushed together every --batch-interval (spool unchanged)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.cli import ConfigError, build_parser, resolve
from agents.collectors.sim import SimBackend
from agents.push import PushConfig, Pusher
from tests.agent.test_cli import agent
from tests.agent.test_push import TOKEN, FakeTime, IngestServer, Reply


def settings_for(argv: list[str]) -> object:
    return resolve(build_parser().parse_args(["--server", "http://a", "--token", "t", *argv]), {})


def test_help_describes_batch_interval() -> None:
    r = agent("--help")
    assert r.returncode == 0
    assert "--batch-interval S" in r.stdout and "(default: push every sample)" in r.stdout


def test_batch_interval_from_flag_and_config_file(tmp_path: Path) -> None:
    assert settings_for([]).batch_interval is None  # type: ignore[attr-defined]
    assert settings_for(["--batch-interval", "60"]).batch_interval == 60  # type: ignore[attr-defined]
    conf = tmp_path / "agent.json"
    conf.write_text(json.dumps({"batch_interval": 30}))
    assert settings_for(["--config", str(conf)]).batch_interval == 30  # type: ignore[attr-defined]


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-interval", "0"], "batch_interval must be 1-3600 seconds, got 0"),
    (["--batch-interval", "3601"], "batch_interval must be 1-3600 seconds, got 3601"),
    (["--interval", "10", "--batch-interval", "5"], r"batch_interval must be at least interval \(10 s\), got 5"),
])
def test_bad_batch_interval_names_the_problem(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_for(argv)


def test_bad_batch_interval_is_a_usage_error_on_the_command_line(tmp_path: Path) -> None:
    r = agent("--server", "http://a", "--token", "t", "--batch-interval", "2", "--interval", "5", "--once",
              "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "batch_interval must be at least interval (5 s), got 2" in r.stderr
    r = agent("--server", "http://a", "--token", "t", "--batch-interval", "soon", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "--batch-interval" in r.stderr and "invalid int value" in r.stderr


@pytest.fixture
def server() -> Iterator[IngestServer]:
    s = IngestServer()
    yield s
    s.stop()


def pusher_for(url: str, tmp_path: Path, ft: FakeTime, **config: object) -> Pusher:
    cfg = PushConfig(server=url, token=TOKEN, node="gpu-a-1", state_dir=tmp_path / "state", timeout_s=2.0,
                     **config)  # type: ignore[arg-type]
    return Pusher(cfg, SimBackend(gpus=2, seed=0), clock=ft.clock, sleep=ft.sleep, rng=random.Random(7))


def test_samples_every_interval_pushed_every_batch_interval(server: IngestServer, tmp_path: Path) -> None:
    ft = FakeTime()
    pusher = pusher_for(server.url, tmp_path, ft, interval_s=5, batch_interval_s=20)
    try:
        pusher.run(max_iterations=12)  # 12 samples, 55 s
        # The first sample at once (the token is checked at start), then the four taken in each 20 s.
        assert server.batches() == [[1], [2, 3, 4, 5], [6, 7, 8, 9]]
        assert len(pusher.spool) == 3  # 10-12 wait in the spool for the next push
        pusher.run(max_iterations=1)
        assert server.batches()[-1] == [10, 11, 12, 13] and len(pusher.spool) == 0
        stamps = [s["ts"] for r in server.requests for s in r["doc"]["samples"]]
        assert stamps == sorted(stamps)
    finally:
        pusher.close()


def test_a_failed_batched_push_keeps_its_samples_and_sends_them_later(server: IngestServer,
                                                                     tmp_path: Path) -> None:
    ft = FakeTime()
    pusher = pusher_for(server.url, tmp_path, ft, interval_s=5, batch_interval_s=10)
    try:
        server.script = [None, Reply(503, {"error": "the database is unavailable; the agent will retry"},
                                     {"Retry-After": "1"})]
        pusher.run(max_iterations=8)
        assert server.seqs == list(range(1, 8))  # the refused push's samples came with the next one
        assert [len(b) for b in server.batches()][:3] == [1, 2, 4]
    finally:
        pusher.close()


def test_the_server_s_longer_interval_is_never_outrun(server: IngestServer, tmp_path: Path) -> None:
    ft = FakeTime()
    pusher = pusher_for(server.url, tmp_path, ft, interval_s=5, batch_interval_s=10)
    server.desired = {"interval_s": 30, "state": "active", "power_limit_w": {}}
    try:
        pusher.run(max_iterations=4)
        # After the first reply, one sample every 30 s: each push carries the one sample taken since the last.
        assert server.batches() == [[1], [2], [3]] and len(pusher.spool) == 1
    finally:
        pusher.close()
