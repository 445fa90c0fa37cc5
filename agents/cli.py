"""Command line of the node agent: `python -m agents --server URL --token T [--sim] [--once] ...`.

Settings come from, lowest to highest precedence: built-in defaults, a `--config` file (JSON or TOML, the long
option names with underscores as keys), the SWITCHYARD_AGENT_SERVER / SWITCHYARD_AGENT_TOKEN environment
variables, then the command line. The token is never printed or logged; prefer the environment or the config
file to `--token`, which other users of the host can read in the process list.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from agents import __version__
from agents.collectors.base import Backend, CompositeBackend
from agents.collectors.host import HostCollector
from agents.collectors.inference import InferenceScraper
from agents.collectors.nvml import NvmlCollector
from agents.collectors.sim import SimBackend
from agents.push import INTERVAL_RANGE, PushConfig, Pusher, StateDirBusy

log = logging.getLogger("agents")

ENV_SERVER = "SWITCHYARD_AGENT_SERVER"
ENV_TOKEN = "SWITCHYARD_AGENT_TOKEN"

# Every setting, its type and default; the config file accepts exactly these keys.
OPTIONS: dict[str, tuple[type, Any]] = {
    "server": (str, None),
    "token": (str, None),
    "node": (str, None),  # None: the host name
    "endpoint": (str, None),  # None: the inference URL
    "inference_url": (str, None),
    "state_dir": (str, None),  # None: default_state_dir()
    "interval": (int, 5),
    "batch_interval": (int, None),  # None: push after every sample
    "buffer_max_mb": (float, 64.0),
    "timeout": (float, 10.0),
    "sim": (bool, False),
    "sim_gpus": (int, 8),
    "once": (bool, False),
    "verbose": (bool, False),
}


BATCH_INTERVAL_RANGE = (1, 3600)  # an hour of 5-s samples is 720: pushed 100 (push.MAX_BATCH) at a time


class ConfigError(ValueError):
    pass


@dataclass
class Settings:
    server: str
    token: str = field(repr=False)
    node: str
    state_dir: Path
    interval: int
    batch_interval: int | None
    buffer_max_mb: float
    timeout: float
    sim: bool
    sim_gpus: int
    once: bool
    verbose: bool
    endpoint: str | None
    inference_url: str | None


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "switchyard-agent"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agents",
        description="Switchyard node agent: collects GPU (NVML), host and inference-server metrics every interval, "
                    "buffers them on disk and pushes them to the Switchyard server.",
        epilog=f"Precedence: command line > ${ENV_SERVER} / ${ENV_TOKEN} > --config file > defaults. Config file "
               "keys are the long option names with underscores (server, token, interval, state_dir, ...).",
    )
    # Defaults stay None here so that a flag given on the command line can be told apart from one left out.
    p.add_argument("--server", metavar="URL", help=f"Switchyard server base URL, e.g. http://switchyard:8000 "
                                                   f"(or ${ENV_SERVER}; required)")
    p.add_argument("--token", metavar="T", help=f"this node's token from `manage.py createnode` (or ${ENV_TOKEN}; "
                                                "required; never logged)")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file with the same settings (default: none)")
    p.add_argument("--node", metavar="NAME", help=f"node name the token was issued for (default: the host name, "
                                                  f"{socket.gethostname()!r})")
    p.add_argument("--sim", action="store_true", default=None,
                   help="simulate GPUs, host and inference server instead of reading NVML (default: off)")
    p.add_argument("--sim-gpus", type=int, metavar="N", help="number of simulated GPUs with --sim (default: 8)")
    p.add_argument("--once", action="store_true", default=None,
                   help="collect one sample, push it with whatever is buffered, exit 0 when all of it was "
                        "accepted and 1 otherwise (default: run until stopped)")
    p.add_argument("--interval", type=int, metavar="S",
                   help=f"seconds between samples, {INTERVAL_RANGE[0]}-{INTERVAL_RANGE[1]}; the server may change "
                        "it (default: 5)")
    p.add_argument("--batch-interval", type=int, metavar="S",
                   help=f"seconds between pushes, {BATCH_INTERVAL_RANGE[0]}-{BATCH_INTERVAL_RANGE[1]} and at least "
                        "--interval: samples are still taken every --interval and buffered, and each push carries "
                        "those taken since the last one (fewer, larger pushes cost the server less per value; the "
                        "dashboard sees a node's samples up to this much later) (default: push every sample)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where the buffer, sequence number and dead letters live (default: "
                        "$XDG_STATE_HOME/switchyard-agent, else ~/.local/state/switchyard-agent)")
    p.add_argument("--inference-url", metavar="URL",
                   help="base URL of the node's vLLM or SGLang server, scraped at URL/metrics and URL/v1/models "
                        "(default: none; inference metrics are then null, or simulated with --sim)")
    p.add_argument("--endpoint", metavar="URL",
                   help="inference URL the Switchyard gateway should use for this node (default: --inference-url)")
    p.add_argument("--buffer-max-mb", type=float, metavar="MB",
                   help="bound of the on-disk buffer; the oldest samples are dropped beyond it (default: 64)")
    p.add_argument("--timeout", type=float, metavar="S", help="HTTP timeout in seconds (default: 10)")
    p.add_argument("-v", "--verbose", action="store_true", default=None, help="debug logging (default: off)")
    p.add_argument("--version", action="version", version=f"switchyard-agent {__version__}")
    return p


def _typed(key: str, value: Any, source: str) -> Any:
    kind, _ = OPTIONS[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        shown = "a value" if key == "token" else repr(value)  # not even a mistyped token goes to a terminal
        raise ConfigError(f"{source}: {key} must be {kind.__name__}, got {shown}")
    return value


def load_config_file(path: str) -> dict[str, Any]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must hold an object of settings")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        norm = str(key).replace("-", "_")
        if norm not in OPTIONS:
            raise ConfigError(f"config file {path}: unknown setting {key!r} (known: {', '.join(OPTIONS)})")
        out[norm] = _typed(norm, value, f"config file {path}")
    return out


def _url(value: str, what: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) > 300:
        raise ConfigError(f"{what} must be an http:// or https:// URL (at most 300 characters), got {value!r}")
    return value.rstrip("/")


def resolve(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str]) -> Settings:
    """Merge defaults, config file, environment and command line into checked settings."""
    merged: dict[str, Any] = {key: default for key, (_, default) in OPTIONS.items()}
    if args.config:
        merged.update(load_config_file(args.config))
    if environ.get(ENV_SERVER):
        merged["server"] = environ[ENV_SERVER]
    if environ.get(ENV_TOKEN):
        merged["token"] = environ[ENV_TOKEN]
    merged.update({key: value for key, value in vars(args).items() if key in OPTIONS and value is not None})

    if not merged["server"]:
        raise ConfigError(f"no server: pass --server URL, set ${ENV_SERVER} or put server in --config")
    if not merged["token"]:
        raise ConfigError(f"no token: set ${ENV_TOKEN}, put token in --config or pass --token")
    lo, hi = INTERVAL_RANGE
    if not lo <= merged["interval"] <= hi:
        raise ConfigError(f"interval must be {lo}-{hi} seconds, got {merged['interval']}")
    batch = merged["batch_interval"]
    if batch is not None:
        blo, bhi = BATCH_INTERVAL_RANGE
        if not blo <= batch <= bhi:
            raise ConfigError(f"batch_interval must be {blo}-{bhi} seconds, got {batch}")
        if batch < merged["interval"]:
            raise ConfigError(f"batch_interval must be at least interval ({merged['interval']} s), got {batch}: "
                              "a push cannot carry less than one sample")
    for key in ("buffer_max_mb", "timeout"):
        if not merged[key] > 0:
            raise ConfigError(f"{key} must be above 0, got {merged[key]}")
    if not 1 <= merged["sim_gpus"] <= 64:
        raise ConfigError(f"sim_gpus must be 1-64, got {merged['sim_gpus']}")
    node = merged["node"] or socket.gethostname()
    if not 0 < len(node) <= 63:
        raise ConfigError(f"node name must be 1-63 characters, got {node!r}; pass --node")
    inference_url = _url(merged["inference_url"], "inference_url") if merged["inference_url"] else None
    endpoint = _url(merged["endpoint"], "endpoint") if merged["endpoint"] else inference_url
    return Settings(
        server=_url(merged["server"], "server"),
        token=merged["token"],
        node=node,
        state_dir=Path(merged["state_dir"]).expanduser() if merged["state_dir"] else default_state_dir(),
        interval=merged["interval"],
        batch_interval=merged["batch_interval"],
        buffer_max_mb=merged["buffer_max_mb"],
        timeout=merged["timeout"],
        sim=merged["sim"],
        sim_gpus=merged["sim_gpus"],
        once=merged["once"],
        verbose=merged["verbose"],
        endpoint=endpoint,
        inference_url=inference_url,
    )


class AgentError(RuntimeError):
    pass


def _scraper(settings: Settings) -> InferenceScraper | None:
    return InferenceScraper(settings.inference_url, timeout=settings.timeout) if settings.inference_url else None


def _nvml_collector() -> NvmlCollector:
    try:
        import pynvml
    except ImportError as exc:
        raise AgentError(f"nvidia-ml-py is not installed ({exc}); pip install '.[agent]', or --sim to run the "
                         "agent without a GPU") from exc
    try:
        return NvmlCollector(pynvml)
    except pynvml.NVMLError as exc:
        raise AgentError(f"cannot read the GPUs through NVML ({exc}); is the NVIDIA driver installed and a GPU "
                         "visible? --sim runs the agent without a GPU") from exc


def build_backend(settings: Settings) -> Backend:
    if settings.sim:
        return SimBackend(gpus=settings.sim_gpus, inference=_scraper(settings))
    return CompositeBackend(_nvml_collector(), HostCollector(), _scraper(settings))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve(args, os.environ)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.DEBUG if settings.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the agent's own
    try:
        backend = build_backend(settings)
    except AgentError as exc:
        print(f"switchyard-agent: {exc}", file=sys.stderr)
        return 1
    config = PushConfig(server=settings.server, token=settings.token, node=settings.node,
                        state_dir=settings.state_dir, interval_s=settings.interval, endpoint=settings.endpoint,
                        batch_interval_s=settings.batch_interval,
                        buffer_max_mb=settings.buffer_max_mb, timeout_s=settings.timeout)
    try:
        pusher = Pusher(config, backend)
    except (StateDirBusy, OSError) as exc:
        backend.close()
        print(f"switchyard-agent: {exc}", file=sys.stderr)
        return 1
    try:
        if settings.once:
            return _once(pusher, settings)
        log.info("switchyard-agent %s: node %s, pushing to %s every %d s (state in %s)", __version__,
                 settings.node, settings.server, max(pusher.interval, settings.batch_interval or 0),
                 settings.state_dir)

        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            pusher.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        pusher.run()
        return 0
    finally:
        pusher.close()
        backend.close()


def _once(pusher: Pusher, settings: Settings) -> int:
    if pusher.once():
        print(f"switchyard-agent: pushed to {settings.server} as node {settings.node} (last seq {pusher.seq})")
        return 0
    print(f"switchyard-agent: push to {settings.server} failed: {pusher.last_error}; "
          f"{len(pusher.spool)} sample(s) kept in {settings.state_dir} for the next run", file=sys.stderr)
    return 1
