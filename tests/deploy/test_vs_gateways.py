"""bench/vs_gateways.py's promises that a test can keep: it installs nothing unless asked, says how to get what is
missing, and configures nginx and LiteLLM as the comparison claims (least_conn, least-busy, no database)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import vs_gateways


def test_without_nginx_and_litellm_it_says_how_to_get_them_and_installs_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    venv = tmp_path / "litellm-venv"
    monkeypatch.setattr(vs_gateways, "find_nginx", lambda: None)
    monkeypatch.setattr(vs_gateways, "LITELLM_VENV", venv)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the bench ran a command without --install: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(vs_gateways, "use_bench_database", refuse)
    monkeypatch.setattr(sys, "argv", ["bench/vs_gateways.py"])
    with pytest.raises(SystemExit) as exit_:
        vs_gateways.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "apt-get install -y nginx" in err
    assert f"pip install 'litellm[proxy]=={vs_gateways.LITELLM_VERSION}'" in err
    assert "--install" in err
    assert not venv.exists()


def test_only_the_tools_of_the_chosen_proxies_are_required(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(vs_gateways, "find_nginx", lambda: None)
    monkeypatch.setattr(vs_gateways, "LITELLM_VENV", tmp_path / "none")
    monkeypatch.setattr(sys, "argv", ["bench/vs_gateways.py", "--proxies", "litellm"])

    def stop_here(*args: Any, **kwargs: Any) -> None:
        raise SystemExit(3)

    monkeypatch.setattr(vs_gateways, "use_bench_database", stop_here)
    with pytest.raises(SystemExit) as exit_:
        vs_gateways.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "LiteLLM" in err and "nginx" not in err


def test_nginx_balances_by_least_connections_over_every_backend_without_buffering(tmp_path: Path) -> None:
    backends = ["http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003"]
    conf = vs_gateways.nginx_conf(tmp_path, 8123, backends)
    upstream = conf[conf.index("upstream backends"):conf.index("server {")]
    assert "least_conn;" in upstream
    assert [ln.split()[1] for ln in upstream.splitlines() if ln.strip().startswith("server ")] == \
        ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
    assert "proxy_buffering off;" in conf and "access_log off;" in conf and "worker_processes 1;" in conf
    assert "listen 127.0.0.1:8123" in conf


def test_litellm_routes_least_busy_over_every_backend_with_no_database_and_no_retries() -> None:
    cfg = vs_gateways.litellm_config(["http://127.0.0.1:9001", "http://127.0.0.1:9002"], "sim-llm")
    assert cfg["router_settings"]["routing_strategy"] == "least-busy"
    assert cfg["router_settings"]["num_retries"] == 0
    assert [m["litellm_params"]["api_base"] for m in cfg["model_list"]] == \
        ["http://127.0.0.1:9001/v1", "http://127.0.0.1:9002/v1"]
    assert {m["model_name"] for m in cfg["model_list"]} == {"sim-llm"}
    assert "general_settings" not in cfg  # no database_url, no master key: the proxy alone
