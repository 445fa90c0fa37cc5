"""Ingest benchmark: many simulated agents pushing to a real server (uvicorn + PostgreSQL) at once.

    .venv/bin/python bench/ingest.py                       # 2,000 nodes x 8 GPUs every 5 s for 60 s
    .venv/bin/python bench/ingest.py --find-max            # then raise the fleet until p95 > 250 ms or loss
    .venv/bin/python bench/ingest.py --server http://host:8000 --nodes 500 ...   # against a running server

It uses its own database (`switchyard_bench` on the configured PostgreSQL server, migrated and emptied first) and
starts `manage.py serve` itself unless --server is given. Each virtual agent pushes one gzip'd sample of G GPUs every
interval with a random phase, over a keep-alive HTTP/1.1 connection, the way the real agent does. At the end the rows
in PostgreSQL are counted: "lost" is pushes acknowledged minus samples stored.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlparse

import benchlib
import orjson
from benchlib import percentile, use_bench_database

BENCH_DB = "switchyard_bench"


def setup_database(nodes: int, gpus: int, database: str = BENCH_DB, redis_db: int | None = None
                   ) -> tuple[list[tuple[str, str]], str, str]:
    """Migrate and empty the bench database and create the nodes. Returns (nodes and tokens, db url, redis url)."""
    db_url, redis_url = use_bench_database(database, redis_db)
    from core.tokens import display_prefix, new_token
    from dashboard.fleet.models import Node, NodeToken, Pool
    from dashboard.metrics.latest import redis_client

    pool = Pool.objects.create(name="bench")
    made = Node.objects.bulk_create([Node(name=f"bench-{i:05d}", pool=pool) for i in range(nodes)])
    tokens = [new_token("node") for _ in made]
    NodeToken.objects.bulk_create([NodeToken(node=n, prefix=display_prefix(t), digest=d)
                                   for n, (t, d) in zip(made, tokens, strict=True)])
    redis_client().delete(*[k for k in redis_client().scan_iter("sy:rl:ingest:*")] or ["-"])
    return [(n.name, t) for n, (t, _) in zip(made, tokens, strict=True)], db_url, redis_url


def stored_samples() -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM node_sample), (SELECT count(*) FROM gpu_sample)")
        row = cur.fetchone()
    return int(row[0]), int(row[1])


def sample_template(gpus: int) -> dict[str, object]:
    from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS

    def val(m: object) -> float | int:
        lo, hi = m.lo, min(m.hi, 1e12)  # type: ignore[attr-defined]
        v = lo + (hi - lo) * random.random() * 0.5
        return int(v) if m.integer else round(v, 3)  # type: ignore[attr-defined]

    return {
        "host": {m.name: val(m) for m in HOST_METRICS},
        "inference": {m.name: val(m) for m in INFERENCE_METRICS},
        "gpus": [{"index": g, "uuid": f"GPU-bench-{g}", "name": "NVIDIA H100 80GB HBM3",
                  **{m.name: val(m) for m in GPU_METRICS}} for g in range(gpus)],
    }


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Agent:
    """One virtual agent on one keep-alive connection, speaking just enough HTTP/1.1."""

    def __init__(self, name: str, token: str, host: str, port: int, template: dict[str, object]) -> None:
        self.name, self.token, self.host, self.port = name, token, host, port
        self.template = template
        self.seq = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def payload(self) -> bytes:
        self.seq += 1
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = {"node": self.name, "agent": "bench/1.0",
                "samples": [{"ts": ts, "seq": self.seq, **self.template}]}
        return gzip.compress(orjson.dumps(body), compresslevel=1)

    async def push(self, stats: Stats) -> None:
        data = self.payload()
        head = (f"POST /api/v1/ingest HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                f"Content-Encoding: gzip\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        stats.sent += 1
        start = time.perf_counter()
        try:
            if self.writer is None or self.reader is None or self.reader.at_eof():
                # A kept-alive connection the server has closed meanwhile (idle past its keep-alive, 75 s: an agent
                # pushing every 60 s that sat out a step of a sweep) is replaced before the push, as an HTTP client's
                # connection pool does, rather than failing the push on it.
                if self.writer is not None:
                    self.writer.close()
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            self.writer.write(head + data)
            await self.writer.drain()
            status_line = await asyncio.wait_for(self.reader.readline(), 30)
            length = 0
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await self.reader.readexactly(length)
            status = int(status_line.split()[1])
        except (TimeoutError, OSError, asyncio.IncompleteReadError, IndexError, ValueError) as exc:
            stats.error(type(exc).__name__)
            self.writer = None
            return
        stats.latencies.append(time.perf_counter() - start)
        if status == 200:
            stats.ok += 1
        else:
            stats.error(str(status))


async def run_load(agents: list[Agent], interval: float, duration: float, label: str, linger: bool = True,
                   close: bool = True) -> Stats:
    """Each agent pushes every `interval` from a random phase until `duration` has passed. With linger (this
    bench's way) each agent then sleeps until its next turn; without it the call returns as soon as the last push is
    answered, so a CPU measurement around the call covers the pushes and not up to an interval of idle time after
    them (bench/vs_prometheus.py). Without close the agents keep their connections for the caller's next load (in
    the same event loop)."""
    stats = Stats()
    from tqdm import tqdm

    start = time.monotonic()
    deadline = start + duration
    bar = tqdm(total=int(duration), desc=label, unit="s", leave=False, file=sys.stderr)

    async def one(agent: Agent) -> None:
        # A random phase, as real agents have, on a fixed grid from the start: reading the clock after the first
        # sleep would let the load generator's own event-loop lag (5,000 agents starting in one process) push an
        # agent with a phase near the interval past the deadline, one push short of the fleet's rate, and a
        # system would be charged for pushes that were never sent.
        next_at = start + random.random() * interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        while next_at < deadline:
            await agent.push(stats)
            next_at += interval
            if not linger and next_at >= deadline:
                break
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def progress() -> None:
        start = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            bar.n = int(time.monotonic() - start)
            recent = stats.latencies[-500:]
            p95 = statistics.quantiles(recent, n=20)[-1] * 1000 if len(recent) > 20 else 0
            bar.set_postfix(ok=stats.ok, err=sum(stats.errors.values()), p95_ms=f"{p95:.0f}", refresh=False)
            bar.refresh()

    ticker = asyncio.create_task(progress())
    await asyncio.gather(*(one(a) for a in agents))
    ticker.cancel()
    await asyncio.gather(ticker, return_exceptions=True)
    bar.close()
    for a in agents if close else []:
        if a.writer is not None:
            a.writer.close()
    return stats


def pct(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000  # seconds -> ms


def start_server(port: int, workers: int, db_url: str, redis_url: str) -> subprocess.Popen[bytes]:
    return benchlib.start_server(port, workers, db_url, redis_url, SWITCHYARD_INGEST_RATE_PER_MINUTE="100000")


def report(label: str, nodes: int, gpus: int, interval: float, duration: float, stats: Stats,
           stored: tuple[int, int] | None) -> dict[str, object]:
    rows_s = stats.ok * gpus / duration
    values_s = stats.ok * (gpus * 33 + 25) / duration
    lost = None if stored is None else stats.ok - stored[0]
    line = {
        "run": label, "nodes": nodes, "gpus": gpus, "interval_s": interval,
        "target_gpu_rows_s": round(nodes * gpus / interval), "gpu_rows_s": round(rows_s),
        "metric_values_s": round(values_s), "pushes_ok": stats.ok, "errors": stats.errors,
        "p50_ms": round(pct(stats.latencies, 0.5), 1), "p95_ms": round(pct(stats.latencies, 0.95), 1),
        "p99_ms": round(pct(stats.latencies, 0.99), 1), "lost": lost,
    }
    print(orjson.dumps(line).decode(), flush=True)
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2000, help="virtual agents (default 2000)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--interval", type=float, default=5.0, help="push interval in seconds (default 5)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per run (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the started server (default 2)")
    parser.add_argument("--port", type=int, default=8765, help="port of the started server (default 8765)")
    parser.add_argument("--server", help="push to this running server instead (its nodes must be the bench's)")
    parser.add_argument("--find-max", action="store_true",
                        help="after the main run, grow the fleet by --step nodes until p95 > 250 ms or a loss")
    parser.add_argument("--step", type=int, default=1000, help="nodes added per --find-max round (default 1000)")
    args = parser.parse_args()

    max_nodes = args.nodes + (args.step * 8 if args.find_max else 0)
    print(f"preparing {max_nodes} nodes in database {BENCH_DB} ...", file=sys.stderr)
    nodes, db_url, redis_url = setup_database(max_nodes, args.gpus)
    server = None
    if args.server:
        parsed = urlparse(args.server)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    else:
        host, port = "127.0.0.1", args.port
        server = start_server(port, args.workers, db_url, redis_url)
    try:
        template = sample_template(args.gpus)
        count = args.nodes
        results = []
        while True:
            agents = [Agent(n, t, host, port, template) for n, t in nodes[:count]]
            before = stored_samples()[0]
            stats = asyncio.run(run_load(agents, args.interval, args.duration, f"{count} nodes"))
            time.sleep(1)
            after = stored_samples()[0]
            line = report(f"{count}x{args.gpus}", count, args.gpus, args.interval, args.duration, stats,
                          (after - before, 0))
            results.append(line)
            failed = line["p95_ms"] > 250 or line["lost"] or stats.errors  # type: ignore[operator]
            if not args.find_max or failed or count + args.step > len(nodes):
                break
            count += args.step
        held = [r for r in results if r["p95_ms"] <= 250 and not r["lost"] and not r["errors"]]  # type: ignore
        if held:
            best = held[-1]
            print(f"holds {best['nodes']} nodes x {args.gpus} GPUs every {args.interval:g} s: "
                  f"{best['gpu_rows_s']} GPU-rows/s, {best['metric_values_s']} values/s, "
                  f"p50 {best['p50_ms']} ms, p95 {best['p95_ms']} ms, nothing lost")
        else:
            print("did not hold the target: see the line above")
        return 0 if held else 1
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    raise SystemExit(main())
