"""Switchyard's gateway beside the proxies people would otherwise put in front of their inference servers, in one run
on one machine: nginx (`least_conn`) and LiteLLM's proxy (`least-busy` routing, no database).

Part 1, the proxy's own cost: one trivial upstream (bench/gateway.py's, it answers at once) behind each proxy, one
proxy at a time:
  - highest rate held by `--concurrency` closed-loop clients (and the upstream alone, the ceiling);
  - latency added at a fixed open-loop rate that every proxy holds (half the lowest highest rate, or `--rate`):
    the proxy's percentile minus the upstream's, measured just before;
  - CPU-seconds per 1,000 requests of the proxy's processes (nginx master + worker, LiteLLM's uvicorn, the gateway),
    at the fixed rate and at the highest rate.
Part 2, routing: bench/routing.py's heterogeneous simulated fleet (h100/a100/l40s, agents pushing through
`manage.py serve`) at its calibrated peak (the highest rate least-in-flight holds, probed as routing.py does), then
the same seeded Poisson sequence through nginx, LiteLLM and Switchyard's default policy: latency and TTFT
p50/p95/p99, throughput, goodput (answers within the SLO) and where the requests went.

Each proxy runs as one process (nginx: one worker; LiteLLM: one uvicorn worker; one gateway), and none caches.
nginx and LiteLLM are not installed by this script unless `--install` is given:

    apt-get install -y nginx                                              # Debian's package
    python3 -m venv .var/bench/litellm-venv && .var/bench/litellm-venv/bin/pip install 'litellm[proxy]==1.99.4'

    .venv/bin/python bench/vs_gateways.py [--install] [--rate R] [--seconds 8] [--fleet-duration 40]
                                          [--fleet-rate R] [--skip-proxy-cost] [--skip-fleet] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gateway as gwbench  # noqa: E402  (the trivial upstream and the raw HTTP client)
from bench import loadrun, routing  # noqa: E402  (the heterogeneous fleet, its calibration and the policies)
from bench.benchlib import ROOT, free_port, percentile, use_bench_database, wait_port  # noqa: E402

LITELLM_VERSION = "1.99.4"  # the newest release whose [proxy] extra installs from PyPI alone (later ones need a
#                             litellm-proxy package that is not published there)
LITELLM_VENV = ROOT / ".var" / "bench" / "litellm-venv"
NGINX_INSTALL = "apt-get install -y nginx"
PROXIES = ("nginx", "litellm", "switchyard")


def log(msg: str) -> None:
    print(msg, flush=True)


# --- the tools --------------------------------------------------------------------------------------------------
def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def litellm_bin() -> Path:
    return LITELLM_VENV / "bin" / "litellm"


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def litellm_install() -> str:
    return f"python3 -m venv {shown(LITELLM_VENV)} && {shown(LITELLM_VENV)}/bin/pip install " \
           f"'litellm[proxy]=={LITELLM_VERSION}'"


def missing_tools() -> list[str]:
    """What is not installed, each with how to install it."""
    missing = []
    if find_nginx() is None:
        missing.append(f"nginx: not found; install Debian's package: `{NGINX_INSTALL}`")
    if not litellm_bin().exists():
        missing.append(f"LiteLLM: no proxy in {shown(LITELLM_VENV)}/; create its throw-away venv: "
                       f"`{litellm_install()}`")
    return missing


def install_tools() -> None:
    """--install: nginx from Debian's packages, LiteLLM in its own venv (never in Switchyard's)."""
    if find_nginx() is None:
        log(f"installing nginx: {NGINX_INSTALL}")
        subprocess.run(["apt-get", "install", "-y", "nginx"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not litellm_bin().exists():
        log(f"installing LiteLLM {LITELLM_VERSION} into {LITELLM_VENV}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet",
                        f"litellm[proxy]=={LITELLM_VERSION}"], check=True)


# --- the proxies ------------------------------------------------------------------------------------------------
@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    logs: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU of the proxy's process and all its children (nginx's worker, uvicorn's)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return float("nan")
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for fh in self.logs:
            fh.close()


def nginx_conf(workdir: Path, port: int, backends: list[str]) -> str:
    """least_conn over the backends; keep-alive both ways; no buffering (SSE streams as it comes); no access log."""
    servers = "\n".join(f"        server {b.removeprefix('http://')} max_fails=0;" for b in backends)
    return f"""worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    upstream backends {{
        least_conn;
{servers}
        keepalive 128;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def start_nginx(backends: list[str], workdir: Path) -> Proxy:
    nginx = find_nginx()
    assert nginx is not None
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, backends))
    log_fh = open(workdir / "nginx.out", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
                            stdout=log_fh, stderr=subprocess.STDOUT)
    wait_port(port, proc, f"nginx (log: {workdir / 'error.log'})", 30)
    return Proxy("nginx", port, proc, workdir, [log_fh])


def litellm_config(backends: list[str], model: str) -> dict[str, Any]:
    # `hosted_vllm/`: LiteLLM's provider for vLLM's OpenAI server, which forwards vLLM's own parameters
    # (ignore_eos) as the simulated nodes, like vLLM, expect them.
    return {
        "model_list": [{"model_name": model, "litellm_params": {"model": f"hosted_vllm/{model}",
                                                                "api_base": f"{b}/v1", "api_key": "none"}}
                       for b in backends],
        "router_settings": {"routing_strategy": "least-busy", "num_retries": 0},
        "litellm_settings": {"telemetry": False, "request_timeout": 300},
    }


def start_litellm(backends: list[str], model: str, workdir: Path) -> Proxy:
    import yaml

    port = free_port()
    cfg = workdir / "litellm.yaml"
    cfg.write_text(yaml.safe_dump(litellm_config(backends, model)))
    # uvicorn's access log off, as nginx's and the gateway's are: one line per request is a cost none of them pays.
    logcfg = workdir / "litellm-logging.json"
    logcfg.write_text(json.dumps({"version": 1, "disable_existing_loggers": False,
                                  "loggers": {"uvicorn.access": {"level": "WARNING"}}}))
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "NO_PROXY": "127.0.0.1,localhost"}
    for var in ("DATABASE_URL", "REDIS_URL", "REDIS_HOST"):  # no database, no shared cache: the proxy alone
        env.pop(var, None)
    log_fh = open(workdir / "litellm.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(litellm_bin()), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1", "--log_config", str(logcfg)],
                            cwd=workdir, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    wait_port(port, proc, f"LiteLLM (log: {workdir / 'litellm.log'})", 180)
    return Proxy("litellm", port, proc, workdir, [log_fh])


def start_switchyard(env: dict[str, str], workdir: Path) -> Proxy:
    port = free_port()
    log_fh = open(workdir / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "manage.py", "gateway", "--port", str(port), "--auth", "off", "--id",
                             "vs-gateways"], cwd=ROOT, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    wait_port(port, proc, f"the gateway (log: {workdir / 'gateway.log'})", 60)
    return Proxy("switchyard", port, proc, workdir, [log_fh])


def wait_answering(proxy: Proxy, body: dict[str, Any], timeout_s: float = 120.0) -> None:
    """Until the proxy answers one request with 200 (LiteLLM's first request loads its router)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proxy.proc.poll() is not None:
            raise SystemExit(f"{proxy.name} exited with {proxy.proc.returncode} (logs in {proxy.workdir})")
        try:
            r = httpx.post(f"{proxy.url}/v1/chat/completions", json=body, timeout=30)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise SystemExit(f"{proxy.name} did not answer within {timeout_s:.0f} s: {last} (logs in {proxy.workdir})")


# --- part 1: the proxy's own cost ---------------------------------------------------------------------------------
def proxy_cost(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """All proxies up at once in front of one trivial upstream (an idle one costs nothing measurable), measured one
    at a time: first the highest rate of each, then the fixed rate, which every proxy must hold for its added
    latency to be latency rather than queueing: `--rate`, or by default half the lowest highest rate."""
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gateway.py"), "--upstream", str(up_port)],
                                cwd=ROOT, env=env)
    results: dict[str, Any] = {"seconds": args.seconds, "concurrency": args.concurrency}
    proxies: dict[str, Proxy] = {}
    up_url = f"http://127.0.0.1:{up_port}"

    # The gateway routes only to a node whose sample is fresh (about 10 s): the trivial upstream has no agent, so
    # its sample is renewed every 2 s for as long as part 1 runs.
    stop = threading.Event()

    def keep_fresh() -> None:
        while not stop.wait(2.0):
            gwbench.register(up_url)

    fresh = threading.Thread(target=keep_fresh, name="keep-fresh", daemon=True)
    try:
        wait_port(up_port, upstream, "the trivial upstream")
        gwbench.register(up_url)
        fresh.start()
        for name in args.proxies:
            sub = workdir / f"cost-{name}"
            sub.mkdir()
            proxies[name] = (start_switchyard(env, sub) if name == "switchyard" else start_nginx([up_url], sub)
                             if name == "nginx" else start_litellm([up_url], "bench-model", sub))
        body = json.loads(gwbench.BODY)
        for proxy in proxies.values():
            wait_answering(proxy, body)
        asyncio.run(gwbench.open_loop(up_port, 50, 1.0))  # warm-up
        done, _ = asyncio.run(gwbench.closed_loop(up_port, args.concurrency, args.seconds))
        results["direct_max"] = done / args.seconds
        log(f"upstream alone: {results['direct_max']:.0f} req/s with {args.concurrency} clients (the ceiling)")
        for name, proxy in proxies.items():
            asyncio.run(gwbench.open_loop(proxy.port, 20, 1.0))  # warm-up
            cpu0 = proxy.cpu_seconds()
            done, errors = asyncio.run(gwbench.closed_loop(proxy.port, args.concurrency, args.seconds))
            results[name] = {"max_rate": done / args.seconds, "errors_max": errors,
                             "cpu_s_per_1000_max": (proxy.cpu_seconds() - cpu0) / max(1, done) * 1000}
            log(f"  {name:<10} highest rate {done / args.seconds:>6.0f} req/s ({errors} errors), CPU-s per 1,000 "
                f"requests {results[name]['cpu_s_per_1000_max']:.3f}")
        rate = args.rate or max(1.0, round(min(results[n]["max_rate"] for n in proxies) / 2))
        results["rate"] = rate
        log(f"fixed rate {rate:g} req/s ({'--rate' if args.rate else 'half the lowest highest rate'})")
        for name, proxy in proxies.items():
            direct, _ = asyncio.run(gwbench.open_loop(up_port, rate, args.seconds))
            cpu0 = proxy.cpu_seconds()
            lat, errors = asyncio.run(gwbench.open_loop(proxy.port, rate, args.seconds))
            row = results[name]
            row.update({"cpu_s_per_1000_fixed": (proxy.cpu_seconds() - cpu0) / max(1, len(lat)) * 1000,
                        "errors_fixed": errors, "held_fixed_rate": len(lat) / args.seconds,
                        "direct_p50_ms": percentile(direct, 0.5), "direct_p99_ms": percentile(direct, 0.99),
                        "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99)})
            row["added_p50_ms"] = row["p50_ms"] - row["direct_p50_ms"]
            row["added_p99_ms"] = row["p99_ms"] - row["direct_p99_ms"]
            log(f"  {name:<10} at {rate:g} req/s: p50 {row['p50_ms']:.2f} ms (upstream alone {row['direct_p50_ms']:.2f}),"
                f" p99 {row['p99_ms']:.2f} ms (alone {row['direct_p99_ms']:.2f}), {errors} errors; CPU-s per 1,000 "
                f"requests {row['cpu_s_per_1000_fixed']:.3f}")
    finally:
        stop.set()
        if fresh.is_alive():
            fresh.join(5)
        for proxy in proxies.values():
            proxy.stop()
        upstream.terminate()
        upstream.wait(10)
    return results


# --- part 2: routing on the heterogeneous fleet --------------------------------------------------------------------
def success_counts(urls: list[str]) -> dict[str, float]:
    """Finished requests per node, from each simulated engine's vLLM counter."""
    import httpx

    from agents.collectors.inference import parse_prometheus

    out = {}
    for url in urls:
        fams = parse_prometheus(httpx.get(f"{url}/metrics", timeout=5).text)
        out[url] = sum(v for _, v in fams.get("vllm:request_success_total", []))
    return out


def gateway_status(gw: str, name: str) -> Any:
    """One field of the gateway's status (`policy`, `eligible`): through control.scheduler.status where the project
    has it (the gateway's /healthz says only whether it is up), else from /healthz."""
    try:
        from control.scheduler.status import read_status  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return routing.get_json(f"{gw}/healthz")[name]
    return getattr(read_status(gw), name)


def run_load(label: str, proxy: Proxy, args: argparse.Namespace, control: str, urls: list[str],
             url_profile: dict[str, str], slo_s: float) -> dict[str, Any]:
    """The seeded sequence through one proxy, from an idle fleet, as bench/routing.py measures a policy."""
    from control.loadgen import report

    loadrun.wait_idle(control, args.interval)  # and a sample taken after that, for the gateway's scorers
    before, lag0, cpu0 = success_counts(urls), routing.engine_lag(urls), proxy.cpu_seconds()
    outs, _ = loadrun.send(label, loadrun.load_spec(proxy.url, args, args.fleet_rate, args.fleet_duration), log)
    row = report.row(label, outs, args.fleet_duration, slo_s)
    after = success_counts(urls)
    by_profile: dict[str, float] = {}
    for u in urls:
        by_profile[url_profile[u]] = by_profile.get(url_profile[u], 0.0) + after[u] - before[u]
    total = max(1.0, sum(by_profile.values()))
    share = {p: by_profile.get(p, 0.0) / total for p in ("h100", "a100", "l40s")}
    # The proxy's CPU comes out of the same cores as the simulated engines': what it uses, and how far the engines
    # fell behind their model meanwhile, say how much of the difference between proxies is the machine's.
    result = {**row.as_dict(), "share": share, "timeouts": sum(1 for o in outs if o.error == "timeout"),
              "engine_lag_s": routing.engine_lag(urls) - lag0, "proxy_cpu_s": proxy.cpu_seconds() - cpu0,
              "errors_seen": report.first_errors(outs)}
    lat = row.latency
    log(f"  {label:<12} {row.ok}/{row.sent} ok, p50/p95/p99 {routing.fmt(lat[0])}/{routing.fmt(lat[1])}/"
        f"{routing.fmt(lat[2])}, TTFT p95 {routing.fmt(row.ttft[1])}, goodput {row.goodput:.1f}/s, share "
        f"h100/a100/l40s {share['h100']:.0%}/{share['a100']:.0%}/{share['l40s']:.0%}; proxy CPU "
        f"{result['proxy_cpu_s']:.1f} s, engines fell behind {result['engine_lag_s']:.1f} s")
    for err in result["errors_seen"]:
        log(f"    error: {err}")
    return result


def fleet_routing(args: argparse.Namespace, db_url: str, redis_url: str, workdir: Path) -> dict[str, Any]:
    from agents.sim.profiles import MIXED, PROFILES
    from control.loadgen.mix import parse_mix

    prompt = routing.mean_prompt_tokens(parse_mix(args.prompt_tokens, int, "--prompt-tokens", 1, 8000))
    out_mix = parse_mix(args.max_tokens, int, "--max-tokens", 1, 4096)
    out = sum(v * w for v, w in zip(out_mix.values, out_mix.weights, strict=True)) / sum(out_mix.weights)
    kinds = [MIXED[i % len(MIXED)] for i in range(args.nodes)]
    saturation = sum(routing.node_rate(PROFILES[k], prompt, out) for k in kinds)
    unloaded_s = max(routing.unloaded_latency(PROFILES[k], prompt, out) for k in set(kinds))
    slo_s = args.slo or round(1.5 * unloaded_s, 1)
    log(f"fleet: {args.nodes} nodes ({', '.join(f'{kinds.count(k)} {k}' for k in MIXED)}), computed saturation "
        f"{saturation:.1f} req/s, SLO for goodput {slo_s:g} s, {args.fleet_duration:g} s per proxy, seed {args.seed}")
    env = dict(os.environ, SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_REDIS_URL=redis_url)
    proxies: dict[str, Proxy] = {}
    with contextlib.ExitStack() as stack:
        fleet = stack.enter_context(loadrun.sim_fleet(args.nodes, args.seed, args.interval, db_url, redis_url,
                                                      workdir))
        stack.callback(lambda: [proxy.stop() for proxy in proxies.values()])
        control, profiles, urls, url_profile = fleet.control, fleet.profiles, fleet.urls, fleet.url_profile
        for name in args.proxies:
            sub = workdir / f"fleet-{name}"
            sub.mkdir()
            if name == "switchyard":
                proxies[name] = start_switchyard(env, sub)
            elif name == "nginx":
                proxies[name] = start_nginx(urls, sub)
            else:
                proxies[name] = start_litellm(urls, routing.MODEL, sub)
        gw = proxies["switchyard"].url if "switchyard" in proxies else None
        probe_body = {"model": routing.MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
        if gw:
            routing.wait_for("every node eligible at the gateway",
                             lambda: gateway_status(gw, "eligible") == args.nodes, 60)
        for proxy in proxies.values():
            wait_answering(proxy, probe_body)
        probes: list[dict[str, Any]] = []
        if not args.fleet_rate:
            if gw is None:
                raise SystemExit("calibration runs through Switchyard's gateway: give --fleet-rate without it")
            # routing.calibrate's own settings, from this script's (same defaults as bench/routing.py).
            cal = argparse.Namespace(**{**vars(args), "duration": args.fleet_duration, "rate": 0.0})
            args.fleet_rate, probes = routing.calibrate(cal, gw, control, profiles, urls, slo_s, saturation,
                                                        unloaded_s)
        stable = [p for p in probes if p["stable"]]
        log(f"offered: {args.fleet_rate:g} req/s ({args.fleet_rate / saturation:.0%} of the computed saturation)"
            + (" = the highest stable probe of least-in-flight" if stable else
               " (no probe was stable: every proxy is measured past the fleet's capacity on this machine)"
               if probes else ""))
        if gw:
            rev = routing.activate("switchyard")  # the default policy (answer cache off: no repeated prompts anyway)
            routing.wait_for(f"the gateway to load revision {rev}",
                             lambda: gateway_status(gw, "policy").get("scheduler") == rev, 30)
        results = []
        for name in args.proxies:
            results.append(run_load(name, proxies[name], args, control, urls, url_profile, slo_s))
            # Stopped once measured: a proxy that fell behind (LiteLLM, past its ceiling) may still be working off
            # requests its clients gave up on, on the cores the next proxy's fleet needs.
            proxies[name].stop()
    return {"nodes": args.nodes, "profiles": kinds, "rate": args.fleet_rate, "saturation": saturation,
            "slo_s": slo_s, "probes": probes, "results": results}


# --- the report ---------------------------------------------------------------------------------------------------
def cost_table(r: dict[str, Any], proxies: list[str]) -> str:
    lines = [f"| proxy | highest rate, {r['concurrency']} clients | latency at {r['rate']:g} req/s, p50 / p99 "
             "(upstream alone) | added p50 / p99 | CPU-s per 1,000 requests, at the fixed rate / at the highest "
             "| errors |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| (upstream alone) | {r['direct_max']:,.0f} req/s | - | - | - | - |"]
    for name in proxies:
        x = r[name]
        lines.append(f"| {name} | {x['max_rate']:,.0f} req/s | {x['p50_ms']:.2f} / {x['p99_ms']:.2f} ms "
                     f"({x['direct_p50_ms']:.2f} / {x['direct_p99_ms']:.2f}) | {x['added_p50_ms']:.2f} / "
                     f"{x['added_p99_ms']:.2f} ms | {x['cpu_s_per_1000_fixed']:.2f} / {x['cpu_s_per_1000_max']:.2f} "
                     f"| {x['errors_max'] + x['errors_fixed']} |")
    return "\n".join(lines)


def fleet_table(f: dict[str, Any]) -> str:
    return routing.table(f["results"], f["slo_s"]).replace("| policy |", "| proxy |", 1)


def ratios(cost: dict[str, Any] | None, fleet: dict[str, Any] | None) -> list[str]:
    out = []
    if cost and "switchyard" in cost:
        sy = cost["switchyard"]
        for other in ("nginx", "litellm"):
            if other in cost:
                o = cost[other]
                out.append(f"switchyard / {other}: highest rate x{sy['max_rate'] / o['max_rate']:.2f}, CPU per request "
                           f"x{sy['cpu_s_per_1000_fixed'] / o['cpu_s_per_1000_fixed']:.2f}, added p50 "
                           f"{sy['added_p50_ms']:.2f} vs {o['added_p50_ms']:.2f} ms")
    if fleet:
        by = {r["name"]: r for r in fleet["results"]}
        if "switchyard" in by:
            sy = by["switchyard"]
            for other in ("nginx", "litellm"):
                if other in by and by[other]["latency"]["p95"] and sy["latency"]["p95"]:
                    o = by[other]
                    out.append(f"switchyard / {other} on the fleet: p95 latency x"
                               f"{sy['latency']['p95'] / o['latency']['p95']:.2f}, p99 x"
                               f"{sy['latency']['p99'] / o['latency']['p99']:.2f}, goodput x"
                               f"{sy['goodput'] / max(o['goodput'], 1e-9):.2f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--install", action="store_true",
                    help=f"install what is missing: nginx (`{NGINX_INSTALL}`, needs root) and LiteLLM "
                         f"{LITELLM_VERSION} in {shown(LITELLM_VENV)}/")
    ap.add_argument("--proxies", default=",".join(PROXIES), help="which proxies, in order (default %(default)s)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="part 1: open-loop rate for the added latency and CPU per request (default: half the "
                         "lowest highest rate of the proxies in this run, so that every one holds it)")
    ap.add_argument("--seconds", type=float, default=8.0, help="part 1: seconds per measurement (default 8)")
    ap.add_argument("--concurrency", type=int, default=32, help="part 1: clients of the max-rate run (default 32)")
    ap.add_argument("--skip-proxy-cost", action="store_true", help="skip part 1")
    ap.add_argument("--skip-fleet", action="store_true", help="skip part 2")
    ap.add_argument("--nodes", type=int, default=6, help="part 2: simulated nodes, h100/a100/l40s in turn (default 6)")
    ap.add_argument("--fleet-duration", type=float, default=40.0, help="part 2: seconds of load per proxy (default 40)")
    ap.add_argument("--fleet-rate", type=float, default=0.0,
                    help="part 2: req/s (default: calibrate as bench/routing.py does, see --probe)")
    ap.add_argument("--probe", default="0.2,0.35,0.5,0.65,0.75",
                    help="calibration: shares of the computed saturation probed with least-in-flight, rising; lower "
                         "than bench/routing.py's, so that a shared machine still finds a stable one "
                         "(default %(default)s)")
    ap.add_argument("--probe-duration", type=float, default=20.0, help="seconds per calibration probe (default 20)")
    ap.add_argument("--stable-x", type=float, default=3.0, help="as bench/routing.py (default 3)")
    ap.add_argument("--max-growth", type=float, default=1.3, help="as bench/routing.py (default 1.3)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the arrivals and the fleet (default 7)")
    ap.add_argument("--prompt-tokens", default="32:0.5,256:0.5", help="prompt length mix (default %(default)s)")
    ap.add_argument("--max-tokens", default="64:0.5,192:0.5", help="answer length mix (default %(default)s)")
    ap.add_argument("--stream-fraction", type=float, default=0.3, help="share streamed, for TTFT (default 0.3)")
    ap.add_argument("--slo", type=float, default=0.0, help="goodput SLO in s (default 1.5 x the slowest unloaded)")
    ap.add_argument("--timeout", type=float, default=30.0, help="client timeout per request (default 30 s)")
    ap.add_argument("--interval", type=int, default=5, help="agent push interval, seconds (default 5)")
    ap.add_argument("--json", dest="json_path", default="", help="also write the results as JSON here")
    ap.add_argument("--database", default="sy_bench_vs_gateways", help="throw-away database (default %(default)s)")
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("TEST_REDIS_DB", "13")),
                    help="Redis db (default $TEST_REDIS_DB or 13)")
    args = ap.parse_args()
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    if unknown := [p for p in args.proxies if p not in PROXIES]:
        raise SystemExit(f"unknown proxies {unknown}; choose from {', '.join(PROXIES)}")
    wanted = {"nginx": "nginx", "litellm": "LiteLLM"}
    missing = [m for m in missing_tools() if any(m.startswith(wanted[p]) for p in args.proxies if p in wanted)]
    if missing and args.install:
        install_tools()
        missing = [m for m in missing_tools() if any(m.startswith(wanted[p]) for p in args.proxies if p in wanted)]
    if missing:
        print("missing, so nothing was run:\n" + "\n".join(f"  - {m}" for m in missing)
              + "\nor run this script with --install to install them", file=sys.stderr)
        raise SystemExit(2)

    started = time.strftime("%Y-%m-%d %H:%M")
    nginx_version = subprocess.run([find_nginx() or "nginx", "-v"], capture_output=True, text=True).stderr.strip() \
        if "nginx" in args.proxies else ""
    log(f"{started}; {os.cpu_count()} CPUs shared by the clients, the proxies and the backends; "
        f"{nginx_version}; LiteLLM {LITELLM_VERSION}")
    db_url, redis_url = use_bench_database(args.database, args.redis_db)
    env = dict(os.environ, SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_REDIS_URL=redis_url)
    workdir = Path(tempfile.mkdtemp(prefix="sy-bench-vs-gateways-"))
    log(f"logs and configs in {workdir}")
    cost = fleet = None
    if not args.skip_proxy_cost:
        log("[1/2] the proxy's own cost: a trivial upstream behind each proxy")
        cost = proxy_cost(args, env, workdir)
    if not args.skip_fleet:
        log("[2/2] routing on the heterogeneous fleet of bench/routing.py")
        fleet = fleet_routing(args, db_url, redis_url, workdir)
    print()
    if cost:
        print(cost_table(cost, args.proxies))
        print()
    if fleet:
        print(fleet_table(fleet))
        print()
    for line in ratios(cost, fleet):
        print(line)
    if fleet:
        print("simulated engines fell behind their model (0 = the CPU kept up) / proxy CPU-seconds, during each "
              "proxy's run: " + ", ".join(f"{r['name']} {r['engine_lag_s']:.1f} s / {r['proxy_cpu_s']:.1f} s"
                                          for r in fleet["results"]))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"started": started, "nginx": nginx_version,
                                                    "litellm": LITELLM_VERSION, "cost": cost, "fleet": fleet},
                                                   indent=2, default=str))


if __name__ == "__main__":
    main()
