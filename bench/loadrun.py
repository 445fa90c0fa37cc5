"""What the fleet benches share (routing.py, prefix.py, vs_gateways.py): the mixed simulated fleet behind a
`manage.py serve` (and optionally a gateway), the fleet's computed saturation, and one seeded open-loop load run
from an idle fleet with progress every 10 s."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.benchlib import ROOT, free_port, start_server, stop, wait_port

POOL = "routing"
MODEL = "sim-llm"


def get_json(url: str) -> Any:
    import httpx

    return httpx.get(url, timeout=5).json()


def wait_for(what: str, check: Any, timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - not up yet
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise SystemExit(f"timed out waiting for {what}")


def wait_idle(control: str, interval_s: float) -> None:
    """Same start for every run: nothing running or queued on any node, then a sample taken after that."""
    wait_for("the fleet to go idle", lambda: all(n["running"] == 0 and n["waiting"] == 0
                                                 for n in get_json(f"{control}/nodes")["nodes"]), 180, 1.0)
    time.sleep(interval_s + 1.5)


def load_spec(url: str, args: Any, rate: float, duration_s: float, workload: Any = None, tag: str = "") -> Any:
    """The seeded sequence every bench sends: constant rate, one class, answers exactly max_tokens long
    (`ignore_eos`) so that runs differ only in where requests went. `args` carries prompt_tokens, max_tokens,
    stream_fraction, timeout and seed; `workload` (control.loadgen.workloads) replaces the prompt mixes; `tag`
    starts every independent prompt (a workload has its own tag). `args.more_gateways`, when set, are further
    gateway URLs the requests are spread over in turn with `url` (bench/prefix.py --gateways)."""
    from control.loadgen import curves, runner
    from control.loadgen.mix import parse_mix

    more = tuple(getattr(args, "more_gateways", ()))
    return runner.LoadSpec(
        url=url, model=MODEL, curve=curves.build(curves.CurveSpec(kind="constant", rate=rate)),
        duration_s=duration_s, prompt_tokens=parse_mix(args.prompt_tokens, int, "--prompt-tokens", 1, 8000),
        max_tokens=parse_mix(args.max_tokens, int, "--max-tokens", 1, 4096), classes=parse_mix("standard", str, "x"),
        stream_fraction=args.stream_fraction, temperature=0.7, timeout_s=args.timeout, seed=args.seed,
        extra_body={"ignore_eos": True}, workload=workload, prompt_tag=tag, more_urls=more)


def send(label: str, spec: Any, log: Callable[[str], None]) -> tuple[list[Any], float]:
    """Run the load; a progress line every 10 s. Returns (outcomes, wall seconds)."""
    from control.loadgen import runner

    marks = {"next": 10.0}

    def progress(elapsed: float, sent: int) -> None:
        if elapsed >= marks["next"]:
            marks["next"] += 10.0
            log(f"  {label:<16} {elapsed:>4.0f} s  {sent:>6} sent")

    t0 = time.perf_counter()
    outs = asyncio.run(runner.run(spec, progress))
    return outs, time.perf_counter() - t0


@dataclass
class Fleet:
    control: str
    profiles: dict[str, str]  # node name -> profile
    urls: list[str]
    url_profile: dict[str, str]
    gateway: str = ""
    gateways: list[str] = field(default_factory=list)  # every gateway started (the first is `gateway`)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # How each gateway is started (its command line and log), so that restart_gateways() can start it again.
    gateway_starts: list[tuple[list[str], Path]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def restart_gateways(self) -> None:
        """Fresh gateway processes on the same ports: what a gateway learned in one run (each node's measured
        seconds per slot and TTFT, its prefix index) must not carry into the next, or a policy's result depends on
        the one that ran before it. Waits until each sees every node again."""
        from control.scheduler.status import read_status

        nodes = len(self.urls)
        first = len(self.procs) - len(self.gateway_starts)  # the gateways are the processes started last
        for i, ((cmd, log_path), url) in enumerate(zip(self.gateway_starts, self.gateways, strict=True)):
            stop([self.procs[first + i]])
            with open(log_path, "ab") as log_file:
                self.procs[first + i] = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log_file,
                                                         stderr=subprocess.STDOUT)
            wait_port(int(url.rsplit(":", 1)[1]), self.procs[first + i], f"the gateway (log: {log_path})", 60)
            wait_for(f"every node eligible at the gateway {url}", lambda url=url: read_status(url).eligible == nodes,
                     60)


@contextlib.contextmanager
def sim_fleet(nodes: int, seed: int, interval: int, db_url: str, redis_url: str, logs: Path,
              gateway_id: str = "", gateways: int = 1) -> Iterator[Fleet]:
    """`manage.py serve` + `simfleet --profile mixed` (agents pushing every `interval` s) and, with `gateway_id`,
    `gateways` x `manage.py gateway --auth off` (ids gateway_id, gateway_id-2, ...); everything stopped on exit."""
    from dashboard.metrics.latest import LATEST_KEY, redis_client

    redis_client().hdel(LATEST_KEY, *[f"{POOL}-{i:02d}" for i in range(1, nodes + 1)])  # an earlier run's samples
    env = dict(os.environ, SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_REDIS_URL=redis_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port, control_port = free_port(), free_port()
        procs.append(start_server(port, 1, db_url, redis_url))
        fleet_log = open(logs / "simfleet.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen(
            [sys.executable, "manage.py", "simfleet", "--nodes", str(nodes), "--profile", "mixed", "--gpus", "2",
             "--pool", POOL, "--model", MODEL, "--server", f"http://127.0.0.1:{port}", "--interval",
             str(interval), "--control-port", str(control_port), "--seed", str(seed)],
            cwd=ROOT, env=env, stdout=fleet_log, stderr=subprocess.STDOUT))
        wait_port(control_port, procs[-1], f"simfleet (log: {logs / 'simfleet.log'})", 60)
        gws: list[str] = []
        starts: list[tuple[list[str], Path]] = []
        for i in range(gateways if gateway_id else 0):
            gw_port = free_port()
            suffix = f"-{i + 1}" if i else ""
            cmd = [sys.executable, "manage.py", "gateway", "--port", str(gw_port), "--auth", "off", "--id",
                   gateway_id + suffix]
            starts.append((cmd, logs / f"gateway{suffix}.log"))
            gw_log = open(logs / f"gateway{suffix}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=gw_log, stderr=subprocess.STDOUT))
            wait_port(gw_port, procs[-1], f"the gateway (log: {logs / f'gateway{suffix}.log'})", 60)
            gws.append(f"http://127.0.0.1:{gw_port}")
        gw = gws[0] if gws else ""
        control = f"http://127.0.0.1:{control_port}"
        found = wait_for("the fleet", lambda: (d := get_json(f"{control}/nodes")["nodes"]) and len(d) == nodes
                         and d, 60)
        fleet = Fleet(control=control, profiles={n["name"]: n["profile"] for n in found},
                      urls=[n["url"] for n in found], url_profile={n["url"]: n["profile"] for n in found},
                      gateway=gw, gateways=gws, procs=procs, gateway_starts=starts, env=env)
        if gws:
            from control.scheduler.status import read_status

            for url in gws:
                wait_for(f"every node eligible at the gateway {url}", lambda url=url: read_status(url).eligible == nodes,
                         60)
        yield fleet
    finally:
        stop(procs)


# --- where the machine's CPU went during a run -------------------------------------------------------------------
def _cpu_s(proc: Any) -> float:
    """CPU seconds (user + system) of a process and of every child it has now (`manage.py serve` forks workers)."""
    import psutil

    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class CpuMeter:
    """CPU seconds each of the bench's processes used over a run, and the machine's idle share.

    The bench's own process is the load generator (it also polls a little between runs); `simfleet` is every
    simulated node and its agent in one asyncio process, so it can use at most one core however many nodes it holds:
    near 100 % of a core, its event loop is late with every answer and token, whichever node they come from."""

    def __init__(self, fleet: Fleet) -> None:
        import psutil

        self.psutil = psutil
        self.fleet = fleet
        self.before: dict[str, float] = {}
        self.machine0: Any = None
        self.t0 = 0.0

    def _processes(self) -> dict[str, Any]:
        ps = self.psutil
        first_gw = len(self.fleet.procs) - len(self.fleet.gateway_starts)
        out = {"loadgen": ps.Process(os.getpid())}
        for i, p in enumerate(self.fleet.procs):
            name = "server" if i == 0 else "simfleet" if i == 1 else f"gateway{i - first_gw or ''}"
            with contextlib.suppress(ps.Error):
                out[name] = ps.Process(p.pid)
        return out

    def _snapshot(self) -> dict[str, float]:
        out = {}
        for name, proc in self._processes().items():
            with contextlib.suppress(self.psutil.Error):
                # the bench's own process: not its children, which are the fleet (counted on their own)
                out[name] = (_cpu_s(proc) if name != "loadgen" else sum(proc.cpu_times()[:2]))
        return out

    def start(self) -> None:
        self.before = self._snapshot()
        self.machine0 = self.psutil.cpu_times()
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = max(1e-9, time.perf_counter() - self.t0)
        after = self._snapshot()
        m0, m1 = self.machine0, self.psutil.cpu_times()
        busy = sum(m1) - sum(m0)
        idle = (m1.idle - m0.idle) + (getattr(m1, "iowait", 0.0) - getattr(m0, "iowait", 0.0))
        used = {k: round(after[k] - self.before.get(k, 0.0), 2) for k in after}
        ours = sum(used.values())
        cores = self.psutil.cpu_count() or 1
        return {"wall_s": round(wall, 2), "cpu_s": used, "core_share": {k: round(v / wall, 3) for k, v in used.items()},
                "machine_idle_pct": round(100.0 * idle / max(1e-9, busy), 1),
                "others_cpu_s": round(max(0.0, (busy - idle) - ours), 2), "cores": cores,
                "load_avg": os.getloadavg()}


def cpu_line(cpu: dict[str, Any]) -> str:
    parts = ", ".join(f"{k} {v:.1f} s ({cpu['core_share'][k]:.0%} of a core)" for k, v in sorted(cpu["cpu_s"].items()))
    la = " ".join(f"{x:.2f}" for x in cpu["load_avg"])
    return (f"CPU over {cpu['wall_s']:.0f} s: {parts}; other processes {cpu['others_cpu_s']:.1f} s; machine idle "
            f"{cpu['machine_idle_pct']:.0f} % of {cpu['cores']} cores; load average {la}")
