"""The command line: help, settings precedence, --once against a live and a dead server, stopping on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pynvml
import pytest

from agents.cli import ConfigError, Settings, build_parser, default_state_dir, resolve
from tests.agent.test_inference import free_port
from tests.agent.test_push import TOKEN, IngestServer, Reply

REPO = Path(__file__).resolve().parents[2]


def agent(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_AGENT_")} | (env or {})
    return subprocess.run([sys.executable, "-m", "agents", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=timeout)



def settings_for(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return resolve(build_parser().parse_args(argv), environ or {})


def test_help_lists_every_option_with_its_default() -> None:
    r = agent("--help")
    assert r.returncode == 0
    for option in ("--server", "--token", "--sim", "--once", "--interval", "--state-dir", "--config",
                   "--inference-url", "--endpoint", "--node", "--buffer-max-mb", "--timeout", "--sim-gpus", "-v"):
        assert option in r.stdout
    assert "(default: 5)" in r.stdout and "(default: 64)" in r.stdout and "(default: 10)" in r.stdout
    assert "SWITCHYARD_AGENT_TOKEN" in r.stdout


def test_once_sim_against_the_server_exits_0(server: IngestServer, tmp_path: Path) -> None:
    r = agent("--server", server.url, "--sim", "--once", "--state-dir", str(tmp_path), "--node", "gpu-a-17",
              env={"SWITCHYARD_AGENT_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    assert "pushed" in r.stdout
    doc = server.requests[0]["doc"]
    assert doc["node"] == "gpu-a-17" and len(doc["samples"][0]["gpus"]) == 8
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in r.stdout + r.stderr
    assert (tmp_path / "seq").read_text() == "1"


def test_once_against_a_dead_port_exits_nonzero_with_a_message(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = agent("--server", url, "--token", TOKEN, "--sim", "--once", "--state-dir", str(tmp_path))
    assert r.returncode == 1
    assert f"push to {url} failed" in r.stderr and "1 sample(s) kept" in r.stderr
    assert TOKEN not in r.stdout + r.stderr


def test_once_keeps_a_refused_token_clear(server: IngestServer, tmp_path: Path) -> None:
    server.respond = lambda doc: Reply(401, {"error": "unknown or revoked node token"})
    r = agent("--server", server.url, "--token", TOKEN, "--sim", "--once", "--state-dir", str(tmp_path))
    assert r.returncode == 1 and "token is wrong" in r.stderr and TOKEN not in r.stderr


def test_missing_server_is_a_usage_error(tmp_path: Path) -> None:
    r = agent("--token", TOKEN, "--sim", "--once", "--state-dir", str(tmp_path))
    assert r.returncode == 2 and "no server" in r.stderr


def test_without_a_gpu_the_agent_says_so(tmp_path: Path, server: IngestServer) -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVML")
    r = agent("--server", server.url, "--token", TOKEN, "--once", "--state-dir", str(tmp_path))
    assert r.returncode == 1 and "NVML" in r.stderr and "--sim" in r.stderr


def test_runs_until_sigterm(server: IngestServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_AGENT_")}
    env |= {"SWITCHYARD_AGENT_SERVER": server.url, "SWITCHYARD_AGENT_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "agents", "--sim", "--sim-gpus", "2", "--interval", "1",
                             "--state-dir", str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(server.seqs) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(server.seqs) >= 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopping" in err and TOKEN not in err


# -- settings -------------------------------------------------------------------------------------------------

def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/var/lib/xdg")
    s = settings_for(["--server", "http://sy:8000/", "--token", "t"])
    assert s.server == "http://sy:8000" and s.interval == 5 and s.buffer_max_mb == 64.0 and s.timeout == 10.0
    assert s.state_dir == Path("/var/lib/xdg/switchyard-agent") == default_state_dir()
    assert not s.sim and not s.once and s.sim_gpus == 8 and s.endpoint is None and s.node
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == Path.home() / ".local" / "state" / "switchyard-agent"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('server = "http://from-file:8000"\ntoken = "file-token"\ninterval = 7\nnode = "file-node"\n'
                   'inference_url = "http://127.0.0.1:8000"\nbuffer-max-mb = 8\nsim = true\n')
    s = settings_for(["--config", str(cfg)])
    assert (s.server, s.token, s.interval, s.node, s.buffer_max_mb, s.sim) == (
        "http://from-file:8000", "file-token", 7, "file-node", 8.0, True)
    assert s.endpoint == "http://127.0.0.1:8000"  # defaults to the inference URL
    s = settings_for(["--config", str(cfg)], {"SWITCHYARD_AGENT_SERVER": "http://from-env:1",
                                              "SWITCHYARD_AGENT_TOKEN": "env-token"})
    assert (s.server, s.token) == ("http://from-env:1", "env-token")
    s = settings_for(["--config", str(cfg), "--server", "http://flag:2", "--interval", "3", "--endpoint",
                      "http://10.0.0.5:8000"], {"SWITCHYARD_AGENT_SERVER": "http://from-env:1"})
    assert (s.server, s.interval, s.token, s.endpoint) == ("http://flag:2", 3, "file-token", "http://10.0.0.5:8000")
    assert "file-token" not in repr(s)


def test_json_config(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"server": "https://sy.example", "token": "j", "timeout": 3, "once": True}))
    s = settings_for(["--config", str(cfg)])
    assert (s.server, s.timeout, s.once) == ("https://sy.example", 3.0, True)


@pytest.mark.parametrize("content, suffix, message", [
    ('{"server": "http://a", "token": "t", "colour": "blue"}', ".json", "unknown setting 'colour'"),
    ('{"server": "http://a", "token": "t", "interval": "5"}', ".json", "interval must be int"),
    ('{"server": "http://a", "token": 12345}', ".json", "token must be str, got a value"),
    ('server = "http://a"\ntoken = ', ".toml", "not valid TOML"),
    ("[1, 2]", ".json", "must hold an object"),
])
def test_bad_config_files_name_the_problem(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    cfg = tmp_path / f"agent{suffix}"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=message):
        settings_for(["--config", str(cfg)])


@pytest.mark.parametrize("argv, message", [
    (["--token", "t"], "no server"),
    (["--server", "http://a"], "no token"),
    (["--server", "ftp://a", "--token", "t"], "server must be an http"),
    (["--server", "http://a", "--token", "t", "--interval", "0"], "interval must be 1-300"),
    (["--server", "http://a", "--token", "t", "--buffer-max-mb", "0"], "buffer_max_mb must be above 0"),
    (["--server", "http://a", "--token", "t", "--node", "n" * 64], "node name must be 1-63"),
    (["--server", "http://a", "--token", "t", "--endpoint", "10.0.0.1:8000"], "endpoint must be an http"),
    (["--server", "http://a", "--token", "t", "--config", "/nonexistent/agent.toml"], "cannot read config file"),
])
def test_bad_settings_name_the_problem(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_for(argv)
