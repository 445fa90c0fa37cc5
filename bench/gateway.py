"""What the gateway adds to a request, and the highest rate it holds on this machine.

A trivial upstream (answers a fixed completion at once) is registered as the only node, so the figures are the
gateway's own cost: scheduling, proxying over its own keep-alive HTTP/1.1 client (control/scheduler/upstream.py,
asyncio streams + httptools, not httpx), the request log and the metrics. The same open-loop load (`--rate` req/s
for `--seconds`) goes once straight to the upstream and once through the gateway; the added latency is the
difference of the percentiles. Then a closed loop with `--concurrency` clients measures the most requests per
second the gateway answers. The client is a minimal keep-alive HTTP/1.1 client on raw asyncio streams so that its
own cost stays small and identical on both paths.

    .venv/bin/python bench/gateway.py [--rate 500] [--seconds 10] [--concurrency 32]

Targets (issue 5): added latency p50 < 1 ms and p99 < 5 ms at 500 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchlib import ROOT, free_port, percentile, use_bench_database, wait_port  # noqa: E402

ANSWER = (b'{"id":"cmpl-bench","object":"chat.completion","model":"bench-model","choices":[{"index":0,"message":'
          b'{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,'
          b'"completion_tokens":1,"total_tokens":6}}')
BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"max_tokens":1}'


async def upstream_app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


class Conn:
    """One keep-alive HTTP/1.1 connection doing one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY

    async def post(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


async def open_loop(port: int, rate: float, seconds: float) -> tuple[list[float], int]:
    """Requests started on a fixed schedule (not waiting for answers): latency in ms, and errors."""
    idle = [Conn(port) for _ in range(64)]
    latencies: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(conn: Conn) -> None:
        nonlocal errors
        t = time.perf_counter()
        try:
            ok = await conn.post() == 200
        except (OSError, asyncio.IncompleteReadError):
            ok, conn.writer = False, None
        if ok:
            latencies.append((time.perf_counter() - t) * 1000)
        else:
            errors += 1
        idle.append(conn)

    start = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = idle.pop() if idle else Conn(port)
        task = asyncio.create_task(one(conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    return latencies, errors


async def closed_loop(port: int, concurrency: int, seconds: float) -> tuple[int, int]:
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        conn = Conn(port)
        while time.perf_counter() < stop:
            try:
                if await conn.post() == 200:
                    done += 1
                else:
                    errors += 1
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                conn = Conn(port)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors


def register(endpoint: str) -> None:
    from django.utils import timezone

    from dashboard.fleet.models import Node, Pool
    from dashboard.metrics.latest import store_latest

    pool, _ = Pool.objects.get_or_create(name="bench")
    Node.objects.update_or_create(name="bench-node", defaults={"pool": pool, "endpoint": endpoint,
                                                                "served_models": ["bench-model"]})
    now = timezone.now().isoformat()
    store_latest("bench-node", {
        "node": "bench-node", "pool": "bench", "state": "active", "ts": now, "received": now, "seq": int(time.time()),
        "endpoint": endpoint, "models": ["bench-model"], "host": {"cpu_util_pct": 20.0, "net_rtt_ms": 0.2},
        "inference": {"requests_running": 0, "requests_waiting": 0, "kv_cache_usage_pct": 5.0},
        "gpus": [{"index": 0, "gpu_util_pct": 30.0}]})


def summary(label: str, lat: list[float], errors: int, seconds: float) -> tuple[float, float]:
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    print(f"{label:<16} {len(lat) / seconds:>8.0f} req/s  p50 {p50:>7.3f} ms  p99 {p99:>7.3f} ms  errors {errors}")
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop request rate (default 500/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per open-loop run (default 10)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of the max-rate run (default 32)")
    parser.add_argument("--database", default="sy_bench_gateway", help="throw-away database (default sy_bench_gateway)")
    parser.add_argument("--redis-db", type=int, default=int(os.environ.get("TEST_REDIS_DB", "14")),
                        help="Redis db to use (default $TEST_REDIS_DB or 14)")
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)  # internal: run the trivial upstream
    args = parser.parse_args()
    if args.upstream:
        import uvicorn

        uvicorn.run(upstream_app, host="127.0.0.1", port=args.upstream, log_level="error", lifespan="off")
        return
    db_url, redis_url = use_bench_database(args.database, args.redis_db)
    up_port, gw_port = free_port(), free_port()
    env = dict(os.environ, SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_REDIS_URL=redis_url)
    procs = [subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)], cwd=ROOT, env=env)]
    try:
        wait_port(up_port, procs[0], "the upstream")
        register(f"http://127.0.0.1:{up_port}")
        procs.append(subprocess.Popen([sys.executable, "manage.py", "gateway", "--port", str(gw_port), "--auth",
                                       "off", "--id", "bench"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
        wait_port(gw_port, procs[1], "the gateway")
        time.sleep(1.5)  # first refresh
        print(f"open loop at {args.rate:.0f} req/s for {args.seconds:g} s each (trivial upstream, {os.cpu_count()} "
              "CPUs shared by client, gateway and upstream)")
        asyncio.run(open_loop(up_port, args.rate, 1.0))  # warm-up both paths
        asyncio.run(open_loop(gw_port, args.rate, 1.0))
        register(f"http://127.0.0.1:{up_port}")
        d50, d99 = summary("direct", *asyncio.run(open_loop(up_port, args.rate, args.seconds)), args.seconds)
        register(f"http://127.0.0.1:{up_port}")
        g50, g99 = summary("via gateway", *asyncio.run(open_loop(gw_port, args.rate, args.seconds)), args.seconds)
        print(f"added by the gateway: p50 {g50 - d50:.3f} ms, p99 {g99 - d99:.3f} ms "
              f"(targets: p50 < 1 ms, p99 < 5 ms)")
        register(f"http://127.0.0.1:{up_port}")
        seconds = min(args.seconds, 8.0)
        done, errors = asyncio.run(closed_loop(gw_port, args.concurrency, seconds))
        print(f"max rate via gateway ({args.concurrency} clients, closed loop): {done / seconds:.0f} req/s, "
              f"errors {errors}")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
