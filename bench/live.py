"""Live dashboard benchmark: frame build time, frame size on the wire, ingest-to-websocket latency.

    .venv/bin/python bench/live.py                                # 1,000 nodes x 8 GPUs, 20 websocket clients
    .venv/bin/python bench/live.py --db sy_h2 --redis-db 2        # choose the database and Redis db it may wipe

It uses its own database (default `switchyard_bench`, on the configured PostgreSQL server; migrated and emptied
first) and its own Redis database (`--redis-db`, default 13, flushed), so a running demo is never touched.

1. Build: 1,000 nodes' latest samples are written to `sy:latest`; each round changes 20 % of them (what a 5 s push
   interval gives per second) and times what the broadcaster does for one heatmap topic per tick: read the fleet
   (HMGET of the nodes that pushed, as named on sy:ingest), build the gpu:gpu_util_pct frame, diff it against the
   last, encode it. The full read (HGETALL) the builder does on start and every 10 s is timed separately.
2. Size: the full frame and the deltas of a tick with 20 % of nodes changed and with one node changed, as JSON
   (and deflated, as websocket permessage-deflate would send them).
3. End to end: starts `manage.py serve --workers 2`, connects 20 logged-in websocket clients subscribed to
   gpu:gpu_util_pct, then POSTs samples of probe nodes to /api/v1/ingest and times until each client holds the
   new value. "quiet": only the probes push (1-2 s apart). "busy": 200 other nodes' samples per second land in
   Redis too (as if the whole fleet pushed every 5 s), so every probe waits for the next tick (`--tick`, default
   0.5 s as the server's). `--compare-tick 1.0` runs this part again with a server at that tick, for a ratio
   measured in the same run. Each client's message rate shows the deltas stay coalesced (one per tick).

The bench nodes get a push interval of one hour so that the static ones stay "up" for the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
from benchlib import percentile, start_server, use_bench_database

POOLS = ("pool-a", "pool-b", "pool-c", "pool-d")
METRIC = "gpu_util_pct"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def setup(db_name: str, redis_db: int, nodes: int, gpus: int, probes: int) -> dict[str, Any]:
    """Point Django at the bench database and Redis db, migrate, empty, create the fleet. Returns what the run needs."""
    db_url, redis_url = use_bench_database(db_name, redis_db)
    from django.contrib.auth import get_user_model
    from django.test import Client

    from core.roles import set_role
    from core.tokens import display_prefix, new_token
    from dashboard.fleet.models import GPU, Node, NodeToken, Pool
    from dashboard.metrics.latest import redis_client

    redis_client().flushdb()
    pools = [Pool.objects.create(name=p) for p in POOLS]
    made = Node.objects.bulk_create([Node(name=f"bench-{i:05d}", pool=pools[i % len(pools)], interval_s=3600)
                                     for i in range(nodes)])
    GPU.objects.bulk_create([GPU(node=n, index=g, uuid=f"GPU-{n.name}-{g}", name="NVIDIA H100 80GB HBM3")
                             for n in made for g in range(gpus)])
    probe_nodes = random.Random(7).sample(made, probes)
    tokens = {}
    for n in probe_nodes:
        plain, dig = new_token("node")
        NodeToken.objects.create(node=n, prefix=display_prefix(plain), digest=dig)
        tokens[n.name] = plain
    user, _ = get_user_model().objects.get_or_create(username="bench-viewer")
    set_role(user, "viewer")
    client = Client()
    client.force_login(user)
    return {"nodes": [(n.name, pools[i % len(pools)].name) for i, n in enumerate(made)], "tokens": tokens,
            "session": client.cookies["sessionid"].value, "db_url": db_url, "redis_url": redis_url}


def snapshot(name: str, pool: str, gpus: int, rng: random.Random, seq: int = 1) -> dict[str, Any]:
    """A node's latest sample in the shape ingest stores it (dashboard/fleet/ingest.py: snapshot)."""
    from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS

    def val(m: Any) -> float | int:
        lo, hi = m.lo, min(m.hi, 1e12)
        v = lo + (hi - lo) * rng.random() * 0.5
        return int(v) if m.integer else round(v, 3)

    now = datetime.now(UTC).isoformat()
    return {"node": name, "pool": pool, "state": "active", "ts": now, "seq": seq, "received": now,
            "endpoint": "", "models": [], "applied": {},
            "host": {m.name: val(m) for m in HOST_METRICS},
            "inference": {m.name: val(m) for m in INFERENCE_METRICS},
            "gpus": [{"index": g, "uuid": f"GPU-{name}-{g}", "name": "NVIDIA H100 80GB HBM3",
                      **{m.name: val(m) for m in GPU_METRICS}} for g in range(gpus)]}


def write_fleet(nodes: list[tuple[str, str]], gpus: int, rng: random.Random, seq: int = 1) -> None:
    from dashboard.metrics.latest import LATEST_KEY, redis_client

    mapping = {name: orjson.dumps(snapshot(name, pool, gpus, rng, seq)) for name, pool in nodes}
    redis_client().hset(LATEST_KEY, mapping=mapping)


def pct(values: list[float], q: float) -> float:
    return percentile(values, q)


# --- 1 + 2: build time and sizes --------------------------------------------------------------------------------

def measure_build(nodes: list[tuple[str, str]], gpus: int, rounds: int) -> dict[str, Any]:
    from tqdm import tqdm

    from dashboard.live import broadcast, frames

    rng = random.Random(1)
    frames.tune_gc()  # as the broadcaster does in the server
    frames.forget_nodes()
    t = time.perf_counter()
    view = frames.load_view()  # cold: every value parsed
    cold_ms = (time.perf_counter() - t) * 1000
    prev = frames.gpu_frame(view, METRIC)
    prev["seq"] = 1
    full_text = broadcast.encode_full(prev)
    times: list[float] = []
    parts: dict[str, list[float]] = {"read": [], "build": [], "diff+encode": []}
    deltas: list[str] = []
    full_reads: list[float] = []
    for i in tqdm(range(rounds), desc="frame builds", unit="build", file=sys.stderr, leave=False):
        pushed = rng.sample(nodes, len(nodes) // 5)  # 20 % of nodes pushed this second
        write_fleet(pushed, gpus, rng, seq=i + 2)
        if i % 10 == 0:
            t = time.perf_counter()
            frames._reader.read()
            full_reads.append((time.perf_counter() - t) * 1000)
            write_fleet(pushed, gpus, rng, seq=i + 2)  # so the timed read below still has these to parse
        t0 = time.perf_counter()
        view = frames.load_view(changed={name for name, _ in pushed})
        t1 = time.perf_counter()
        frame = frames.gpu_frame(view, METRIC)
        t2 = time.perf_counter()
        change, payload = frames.diff(prev, frame)
        frame["seq"] = prev["seq"] + 1
        text = broadcast.encode_full(frame) if change == "full" else broadcast.encode_delta(
            frame["topic"], frame["seq"], payload or {})
        t3 = time.perf_counter()
        times.append((t3 - t0) * 1000)
        parts["read"].append((t1 - t0) * 1000)
        parts["build"].append((t2 - t1) * 1000)
        parts["diff+encode"].append((t3 - t2) * 1000)
        deltas.append(text)
        prev = frame
    # One node changed: the smallest useful delta (the quiet case).
    one = nodes[0]
    write_fleet([one], gpus, rng, seq=10_000)
    single = frames.gpu_frame(frames.load_view(), METRIC)
    change, payload = frames.diff(prev, single)
    single_text = broadcast.encode_delta(single["topic"], prev["seq"] + 1, payload or {})
    typical = sorted(deltas, key=len)[len(deltas) // 2]
    node_frame = broadcast.encode_full(frames.node_frame(frames.load_view()))
    return {
        "cold_read_ms": cold_ms, "full_read_p50_ms": pct(full_reads, 0.5), "p50_ms": pct(times, 0.5), "p95_ms": pct(times, 0.95),
        "parts_p50": {k: pct(v, 0.5) for k, v in parts.items()},
        "full_bytes": len(full_text.encode()), "full_deflated": len(zlib.compress(full_text.encode())),
        "node_full_bytes": len(node_frame.encode()),
        "delta_bytes": len(typical.encode()), "delta_deflated": len(zlib.compress(typical.encode())),
        "delta_kind": orjson.loads(typical)["type"],
        "single_bytes": len(single_text.encode()), "rounds": rounds,
    }


# --- 3: end to end ---------------------------------------------------------------------------------------------

class Client:
    """One websocket client holding the gpu heatmap state, noting when each probe value shows up."""

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.state: dict[str, Any] | None = None
        self.rows: dict[str, int] = {}
        self.waiting: dict[tuple[int, float], float] = {}  # (row, value) -> t0
        self.latencies: list[float] = []
        self.messages = 0
        self.resyncs = 0
        self.arrivals: list[float] = []
        self.ready = asyncio.Event()

    async def run(self, url: str, headers: dict[str, str]) -> None:
        from websockets.asyncio.client import connect

        async with connect(url, additional_headers=headers, max_size=2**26) as ws:
            await ws.send(orjson.dumps({"type": "subscribe", "topic": f"gpu:{METRIC}"}).decode())
            async for raw in ws:
                msg = orjson.loads(raw)
                self.messages += 1
                now = time.perf_counter()
                if msg.get("type") == "frame":
                    self.state = msg
                    self.rows = {r["node"]: i for i, r in enumerate(msg["rows"])}
                    self.ready.set()
                    hits = [(row, v) for (row, v) in self.waiting if msg["z"][row][0] == v]
                elif msg.get("type") == "delta" and self.state is not None:
                    self.arrivals.append(now)
                    if msg["seq"] != self.state["seq"] + 1:
                        self.resyncs += 1
                        await ws.send(orjson.dumps({"type": "resync", "topic": msg["topic"]}).decode())
                        continue
                    for c in msg.get("cells", ()):
                        self.state["z"][c[0]][c[1]] = c[2]
                    self.state["seq"] = msg["seq"]
                    hits = [(c[0], c[2]) for c in msg.get("cells", ()) if c[1] == 0 and (c[0], c[2]) in self.waiting]
                else:
                    continue
                for key in hits:
                    self.latencies.append(now - self.waiting.pop(key))


async def end_to_end(port: int, run: dict[str, Any], clients_n: int, probes: int, busy_rate: int,
                     gpus: int) -> dict[str, Any]:
    import httpx
    from tqdm import tqdm

    url = f"ws://127.0.0.1:{port}/ws/fleet/"
    headers = {"Cookie": f"sessionid={run['session']}", "Origin": f"http://127.0.0.1:{port}"}
    clients = [Client(i) for i in range(clients_n)]
    tasks = [asyncio.create_task(c.run(url, headers)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in clients)), 60)
    log(f"{clients_n} websocket clients connected and hold the full frame")
    rng = random.Random(3)
    probe_names = list(run["tokens"])
    stop = asyncio.Event()
    bg_count = 0

    async def background() -> None:
        """Other nodes' pushes, straight into Redis (HSET + PUBLISH as ingest does), at busy_rate per second."""
        nonlocal bg_count
        from dashboard.metrics.latest import store_latest

        others = [n for n in run["nodes"] if n[0] not in run["tokens"]]
        brng = random.Random(5)
        while not stop.is_set():
            t = time.perf_counter()
            batch = brng.sample(others, max(1, busy_rate // 10))
            for name, pool in batch:
                store_latest(name, snapshot(name, pool, gpus, brng, seq=bg_count + 2))
                bg_count += 1
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - t)))

    results: dict[str, Any] = {}
    bg: asyncio.Task[None] | None = None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        seqs = dict.fromkeys(probe_names, 100)
        for phase in ("quiet", "busy"):
            if phase == "busy":
                if busy_rate <= 0:
                    break
                bg = asyncio.create_task(background())
                await asyncio.sleep(2)
            for c in clients:
                c.latencies.clear()
                c.arrivals.clear()
            phase_start = time.perf_counter()
            errors = 0
            recent: list[str] = []
            for k in tqdm(range(probes), desc=f"probes ({phase})", unit="push", file=sys.stderr, leave=False):
                # Not a node probed in the last few pushes: two values for one node within a tick would show
                # only the second (a frame per tick carries the latest value), and the first would count as missed.
                name = rng.choice([n for n in probe_names if n not in recent])
                recent = [*recent[-4:], name]
                seqs[name] += 1
                value = round(rng.uniform(0, 100), 3)
                sample = snapshot(name, "", gpus, rng)
                body = {"node": name, "agent": "bench/1.0", "samples": [{
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "seq": seqs[name], "host": sample["host"], "inference": sample["inference"],
                    "gpus": [{**g, METRIC: value} if g["index"] == 0 else g for g in sample["gpus"]]}]}
                t0 = time.perf_counter()
                for c in clients:
                    c.waiting[(c.rows[name], value)] = t0
                resp = await http.post("/api/v1/ingest", content=orjson.dumps(body),
                                       headers={"Authorization": f"Bearer {run['tokens'][name]}",
                                                "Content-Type": "application/json"})
                if resp.status_code != 200:
                    errors += 1
                    log(f"probe {k}: ingest answered {resp.status_code}: {resp.text[:200]}")
                await asyncio.sleep(rng.uniform(1.0, 2.0) if phase == "quiet" else rng.uniform(0.3, 1.3))
            await asyncio.sleep(3)
            lat = [x * 1000 for c in clients for x in c.latencies]
            missed = sum(len(c.waiting) for c in clients)
            for c in clients:
                c.waiting.clear()
            gaps = [b - a for a, b in zip(clients[0].arrivals, clients[0].arrivals[1:], strict=False)]
            elapsed = time.perf_counter() - phase_start
            # Coalescing: what one browser gets, whatever the push rate (deltas of its one topic per second).
            rate = max(len(c.arrivals) for c in clients) / elapsed if elapsed > 0 else 0.0
            busiest = max((sum(1 for t in c.arrivals if s0 <= t < s0 + 1.0) for c in clients for s0 in c.arrivals),
                          default=0)
            results[phase] = {"p50_ms": pct(lat, 0.5), "p95_ms": pct(lat, 0.95), "max_ms": max(lat, default=0),
                              "received": len(lat), "missed": missed, "errors": errors,
                              "resyncs": sum(c.resyncs for c in clients),
                              "delta_gap_p50_ms": pct(gaps, 0.5) * 1000 if gaps else None,
                              "messages_per_s": rate, "most_in_1s": busiest}
            clients[0].arrivals.clear()
            log(f"{phase}: {orjson.dumps(results[phase]).decode()}")
        stop.set()
        if bg is not None:
            await bg
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    results["background_pushes"] = bg_count
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000, help="nodes in the fleet (default 1000)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--rounds", type=int, default=200, help="frame builds timed (default 200)")
    parser.add_argument("--clients", type=int, default=20, help="websocket clients (default 20)")
    parser.add_argument("--probes", type=int, default=40, help="ingest probes per phase (default 40)")
    parser.add_argument("--busy-rate", type=int, default=200,
                        help="other nodes' samples per second in the busy phase, 0 to skip it (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the started server (default 2)")
    parser.add_argument("--tick", type=float, default=0.5,
                        help="SWITCHYARD_LIVE_TICK_S of the started server (default 0.5, the server's default)")
    parser.add_argument("--compare-tick", type=float, default=None, metavar="SECONDS",
                        help="run the end-to-end part again with a server at this tick (e.g. 1.0) and print the ratio")
    parser.add_argument("--port", type=int, default=8766, help="port of the started server (default 8766)")
    parser.add_argument("--db", default="switchyard_bench", help="database to use and empty (default switchyard_bench)")
    parser.add_argument("--redis-db", type=int, default=13, help="Redis database to use and flush (default 13)")
    args = parser.parse_args()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe would bury the progress bars

    log(f"preparing {args.nodes} nodes x {args.gpus} GPUs in database {args.db}, Redis db {args.redis_db} ...")
    run = setup(args.db, args.redis_db, args.nodes, args.gpus, probes=min(20, args.nodes))
    write_fleet(run["nodes"], args.gpus, random.Random(0))
    build = measure_build(run["nodes"], args.gpus, args.rounds)
    log(f"build: {orjson.dumps(build).decode()}")
    ticks = [args.tick] + ([args.compare_tick] if args.compare_tick is not None else [])
    runs: dict[float, dict[str, Any]] = {}
    for tick in ticks:
        write_fleet(run["nodes"], args.gpus, random.Random(0))  # fresh timestamps for the live part
        log(f"end to end with SWITCHYARD_LIVE_TICK_S={tick:g}")
        server = start_server(args.port, args.workers, run["db_url"], run["redis_url"],
                              SWITCHYARD_LIVE_TICK_S=str(tick))
        try:
            runs[tick] = asyncio.run(end_to_end(args.port, run, args.clients, args.probes, args.busy_rate,
                                                args.gpus))
        finally:
            server.terminate()
            server.wait(15)
    e2e = runs[args.tick]

    rows = [
        ("fleet", f"{args.nodes} nodes x {args.gpus} GPUs, {len(POOLS)} pools"),
        ("frame build, gpu heatmap (read + build + diff + encode)",
         f"p50 {build['p50_ms']:.1f} ms, p95 {build['p95_ms']:.1f} ms over {build['rounds']} ticks with 20 % of "
         f"nodes changed (read {build['parts_p50']['read']:.1f} / build {build['parts_p50']['build']:.1f} / "
         f"diff+encode {build['parts_p50']['diff+encode']:.1f} ms p50); full re-read every 10 s "
         f"{build['full_read_p50_ms']:.0f} ms p50; first read, all parsed, {build['cold_read_ms']:.0f} ms"),
        ("full gpu frame on the wire", f"{build['full_bytes']:,} B JSON ({build['full_deflated']:,} B deflated)"),
        ("full per-node frame", f"{build['node_full_bytes']:,} B JSON"),
        ("delta, 20 % of nodes changed", f"{build['delta_bytes']:,} B JSON ({build['delta_deflated']:,} B deflated, "
                                         f"{build['delta_kind']})"),
        ("delta, one node changed", f"{build['single_bytes']:,} B JSON"),
    ]
    for tick, result in runs.items():
        for phase in ("quiet", "busy"):
            if phase in result:
                r = result[phase]
                rows.append((f"ingest POST -> {args.clients} ws clients, {phase}, tick {tick:g} s",
                             f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, max {r['max_ms']:.0f} ms "
                             f"({r['received']} deliveries, {r['missed']} missed, {r['errors']} errors); "
                             f"{r['messages_per_s']:.1f} messages/s per client, at most {r['most_in_1s']} in 1 s"))
    if args.compare_tick is not None and "busy" in e2e and "busy" in runs[args.compare_tick]:
        ratio = e2e["busy"]["p95_ms"] / max(runs[args.compare_tick]["busy"]["p95_ms"], 1e-9)
        rows.append((f"busy p95, tick {args.tick:g} s / tick {args.compare_tick:g} s", f"{ratio:.2f}x"))
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    verdicts = [("build p95 < 50 ms", build["p95_ms"] < 50)]
    for phase in ("quiet", "busy"):  # e2e also holds counts (background_pushes): only the phases have verdicts
        if phase in e2e:
            r = e2e[phase]
            verdicts.append((f"ingest->client p95 < 1 s, {phase}", r["p95_ms"] < 1000 and not r["missed"]))
    if "busy" in e2e:  # still coalesced: a browser never gets more than a few messages a second
        verdicts.append(("a client gets <= 4 messages in any 1 s, busy", e2e["busy"]["most_in_1s"] <= 4))
    print("\ntargets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in verdicts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
