"""CPU cost of the simulated fleet: one process, N nodes, their agents pushing every 5 s, optional request load.

    .venv/bin/python bench/simfleet.py                          # 50 idle nodes, then 20 nodes under ~100 req/s
    .venv/bin/python bench/simfleet.py --idle-nodes 100 --seconds 30
    .venv/bin/python bench/simfleet.py --load-nodes 20 --rps 200 --stream 0.5

The fleet runs in a child process (so the load generator's CPU is not counted); its agents push to a minimal
ingest endpoint in this process (so no database is needed and the server's cost is not counted). Printed: the
fleet process's CPU use in cores (user + system CPU seconds per wall second), and for the load phase the request
rate achieved and the latency the clients saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _Ingest(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"accepted": 1, "duplicates": 0, "desired": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def child(args: argparse.Namespace) -> None:
    from agents.sim.fleet import SimFleet

    async def main() -> None:
        fleet = SimFleet(pool="bench", gpus=8, server_url=args.ingest, register=lambda n, p: "token",
                         interval_s=5, profile="mixed", time_scale=1.0)
        await fleet.start(control_port=args.control_port)
        for _ in range(args.nodes):
            await fleet.add_node()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_fleet(nodes: int, ingest: str) -> tuple[subprocess.Popen[str], list[str]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--child", "--nodes", str(nodes), "--ingest", ingest,
                             "--control-port", str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    doc = httpx.get(f"http://127.0.0.1:{port}/nodes").json()
    return proc, [n["url"] for n in doc["nodes"]]


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def load(urls: list[str], rps: float, seconds: float, stream_share: float) -> tuple[int, int, list[float], float]:
    done, failed, latencies = 0, 0, []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        async def one() -> None:
            nonlocal done, failed
            url = random.choice(urls)
            body = {"model": "sim-llm", "messages": [{"role": "user", "content": "word " * random.randint(20, 400)}],
                    "max_tokens": 64}
            t0 = time.perf_counter()
            try:
                if random.random() < stream_share:
                    async with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as r:
                        async for _ in r.aiter_lines():
                            pass
                        ok = r.status_code == 200
                else:
                    ok = (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t0)
            done, failed = done + ok, failed + (not ok)

        tasks = []
        start = time.perf_counter()
        due = start
        while due < start + seconds:
            # Arrivals on a Poisson schedule; a generator that falls behind catches up instead of drifting.
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
            due += random.expovariate(rps)
        offered = len(tasks) / seconds
        await asyncio.gather(*tasks)
    return done, failed, latencies, offered


def model_side(urls: list[str]) -> None:
    """What the model itself computed per profile: mean e2e and queue time (model seconds) from /metrics."""
    from agents.collectors.inference import parse_prometheus

    by: dict[str, list[float]] = {}
    for url in urls:
        m = parse_prometheus(httpx.get(f"{url}/metrics").text)
        prof = httpx.get(f"{url}/v1/models").json()["data"][0]["max_model_len"]
        e2e = m["vllm:e2e_request_latency_seconds_sum"][0][1] / max(1, m["vllm:e2e_request_latency_seconds_count"][0][1])
        q = m["vllm:request_queue_time_seconds_sum"][0][1] / max(1, m["vllm:request_queue_time_seconds_count"][0][1])
        n = m["vllm:e2e_request_latency_seconds_count"][0][1]
        lag = m["sim:engine_lag_dropped_seconds_total"][0][1]
        by.setdefault(str(prof), []).append((round(e2e, 2), round(q, 2), int(n), round(lag, 2)))
    print("  per node, by max_model_len (32768: h100/a100, 16384: l40s): mean e2e s, mean queue s (model time), "
          "requests, seconds the loop lagged:", by)


def _load_part(a: tuple[list[str], float, float, float]) -> tuple[int, int, list[float], float]:
    return asyncio.run(load(*a))


def measure(nodes: int, ingest: str, seconds: float, rps: float = 0.0, stream_share: float = 0.5,
            clients: int = 4) -> None:
    proc, urls = start_fleet(nodes, ingest)
    try:
        p = psutil.Process(proc.pid)
        time.sleep(2.0)  # past start-up
        c0, w0 = cpu(p), time.perf_counter()
        if rps > 0:
            # Several client processes: one Python client cannot send 100 streamed req/s on a small machine.
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(clients) as pool:
                parts = list(pool.map(_load_part, [(urls, rps / clients, seconds, stream_share)] * clients))
            done = sum(p[0] for p in parts)
            failed = sum(p[1] for p in parts)
            lat = [x for p in parts for x in p[2]]
            offered = sum(p[3] for p in parts)
        else:
            time.sleep(seconds)
        c1, w1 = cpu(p), time.perf_counter()
        if rps > 0:
            model_side(urls)
        rss = p.memory_info().rss / 2**20
        cores = (c1 - c0) / (w1 - w0)
        if rps > 0:
            lat.sort()
            print(f"{nodes} nodes under load: {offered:.1f} req/s sent, {done} done ({failed} failed) in "
                  f"{w1 - w0:.1f} s, fleet CPU {c1 - c0:.1f} s = {(c1 - c0) / seconds:.2f} cores over the "
                  f"{seconds:g} s of load ({1000 * (c1 - c0) / max(1, done):.1f} ms per request), RSS {rss:.0f} MiB, "
                  f"client latency p50 {lat[len(lat) // 2]:.2f} s p95 {lat[int(len(lat) * 0.95)]:.2f} s")
        else:
            print(f"{nodes} idle nodes (agents pushing every 5 s): fleet CPU {cores:.3f} cores "
                  f"({100 * cores:.1f} % of one), RSS {rss:.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nodes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ingest", help=argparse.SUPPRESS)
    ap.add_argument("--control-port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--idle-nodes", type=int, default=50, help="nodes of the idle measurement (default 50)")
    ap.add_argument("--load-nodes", type=int, default=20, help="nodes of the load measurement (default 20)")
    ap.add_argument("--rps", type=float, default=100.0, help="request rate of the load phase (default 100)")
    ap.add_argument("--stream", type=float, default=0.5, help="share of streamed requests (default 0.5)")
    ap.add_argument("--clients", type=int, default=4, help="load generator processes (default 4)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each measurement (default 20)")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ingest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ingest = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"CPUs: {psutil.cpu_count()}; {args.seconds:g} s per measurement")
    if args.idle_nodes:
        measure(args.idle_nodes, ingest, args.seconds)
    if args.load_nodes and args.rps:
        measure(args.load_nodes, ingest, args.seconds, args.rps, args.stream, args.clients)
    server.shutdown()


if __name__ == "__main__":
    main()
