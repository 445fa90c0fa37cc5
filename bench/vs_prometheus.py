"""Switchyard's ingest beside Prometheus on the same simulated fleet, in one run on one machine.

    .venv/bin/python bench/vs_prometheus.py                      # the default sweep, 6-10 minutes
    .venv/bin/python bench/vs_prometheus.py --nodes 1000,2000 --window 30 --interval 5 --json out.json

The fleet: N nodes x G GPUs (default 8) with the full metric catalogue (25 host and inference values per node, 33
per GPU: 289 values a node, as the agent sends them), every value different at every scrape or push.

1. Prometheus (Debian's `prometheus` on PATH; this script installs nothing, `apt-get install prometheus` does)
   scrapes a text exposition of the fleet every --interval seconds: one lightweight HTTP server (a child process of
   this script) answers /n/<i> for every node with Switchyard's own exposition format
   (dashboard/metrics/exposition.py), each scrape with new values, gzip'd when Prometheus asks (as exporters do;
   --plain-exposition: never). Each step of the sweep sets N targets (file_sd), lets every target be scraped once,
   then measures a --window: the fleet's values ingested (the expositions the server answered in the window x the
   catalogue values, as Switchyard's are counted; what Prometheus appends besides, its 5 series per scrape and the
   2 extra series of each exposition, is printed apart), scrapes that failed (up == 0) or came late (mean scrape
   interval over 1.05 x --interval), the scrape duration p99 across targets, Prometheus's CPU. It falls behind when
   a scrape fails or is late, or it ingests under 95 % of the values the fleet exposes.
2. Switchyard: `manage.py serve --workers W` on its own database (`switchyard_bench`, emptied) with N virtual agents
   (bench/ingest.py's) each pushing one gzip'd sample every --interval seconds; it falls behind when push p95 goes
   over 250 ms, a push fails, or a sample acknowledged is not in PostgreSQL. Each agent keeps one connection for the
   whole sweep. CPU is the server's processes plus the PostgreSQL backends of the bench database and PostgreSQL's
   WAL writer, checkpointer and background writer, plus a Redis server of the bench's own (--shared-redis: the
   configured one, not counted), from the window's start to the last push's answer.
   With --batch 1,4,12 (the default) it sweeps three times: one sample per push, then 4 and 12 samples per push
   every 4 and 12 x --interval (as an agent with --batch-interval, or back from an outage, sends them): the same
   values per second.

Each system's sweep stops at its first step that falls behind. Then, per system: highest fleet held, values/s,
CPU-seconds per million values (at the highest fleet held), memory (RSS of Prometheus; of the server processes and,
for PostgreSQL, the bench backends' unique memory), disk bytes per value after the run (Prometheus's data directory:
WAL and head chunks; the raw sample tables with their indexes), and the time of two queries over the last hour at
1-minute steps: one GPU's utilisation, and the fleet-wide average utilisation (PromQL over Prometheus's HTTP API;
Switchyard's query code, dashboard/metrics/query.py, in this process, after rolling up the minutes, and the SQL of
the fleet average over the 1-minute rollup and over the raw rows).

The load generators (the exposition server, the virtual agents) run on the same machine and their CPU is printed
too; machine CPU left is the idle share of all cores during the window. Only the ratios within one run mean much
on a shared machine. Everything this script starts (Prometheus, the exposition server, the Switchyard server, a
temporary directory) is stopped and removed at the end, on an error, and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402  (puts the repository on sys.path and sets the settings module)
from benchlib import free_port, percentile  # noqa: E402

INSTALL = "apt-get install prometheus"
PLACEHOLDER = "NODE_PLACEHOLDER"
VARIANTS = 64  # distinct value sets per node, cycled: every scrape differs from the last
NODE_NAME = "bench-{:05d}"  # bench/ingest.py's node names, so one query names the same GPU in both systems
BENCH_DB = "switchyard_bench"
EXPOSED_EXTRA = 2  # switchyard_node_up and switchyard_node_last_sample_timestamp_seconds, besides the catalogue


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the exposition server (child process) ----------------------------------------------------------------------
def exposition_parts(gpus: int, seed: int) -> list[list[bytes]]:
    """VARIANTS renderings of one node's exposition, each split at the node's name: a scrape joins them with the
    name (a C-level join), so serving a 30 KB body costs microseconds and every scrape can carry new values."""
    import django

    django.setup()
    from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS
    from dashboard.metrics import exposition

    rng = random.Random(seed)

    def val(m: Any) -> float | int:
        v = rng.uniform(max(m.lo, 0), min(m.hi, 1e6))
        return int(v) if m.integer else round(v, 3)

    out = []
    for _ in range(VARIANTS):
        snap = {"node": PLACEHOLDER, "pool": "bench", "state": "active", "ts": datetime.now(UTC).isoformat(),
                "host": {m.name: val(m) for m in HOST_METRICS},
                "inference": {m.name: val(m) for m in INFERENCE_METRICS},
                "gpus": [{"index": g, "uuid": f"GPU-{PLACEHOLDER}-{g}", "name": "NVIDIA H100 80GB HBM3",
                          **{m.name: val(m) for m in GPU_METRICS}} for g in range(gpus)]}
        out.append(exposition.render({PLACEHOLDER: snap}).encode().split(PLACEHOLDER.encode()))
    return out


def serve_exposition(port: int, gpus: int, gzipped: bool = True) -> None:
    """GET /n/<i>: node i's exposition, keep-alive; GET /count: how many node expositions it has served (the
    bench's own count of what Prometheus scraped). Runs until terminated."""
    parts = exposition_parts(gpus, seed=port)
    scrapes: dict[int, int] = {}
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/count":
                    body = b"%d" % served
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    await writer.drain()
                    continue
                index = int(path.rsplit(b"/", 1)[1])
                n = scrapes[index] = scrapes.get(index, index) + 1
                served += 1
                body = NODE_NAME.format(index).encode().join(parts[n % VARIANTS])
                encoding = b""
                if gzipped and b"gzip" in head.lower():  # Prometheus asks for it (Accept-Encoding: gzip)
                    # As node_exporter and every promhttp exporter answer: Prometheus then inflates each scrape,
                    # as Switchyard inflates each push (the agents gzip). Level 1, as the bench's agents.
                    body = gzip.compress(body, compresslevel=1)
                    encoding = b"Content-Encoding: gzip\r\n"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n" + encoding
                             + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# --- process accounting -----------------------------------------------------------------------------------------
def tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_of(procs: list[Any]) -> dict[int, float]:
    """CPU-seconds (user + system) by pid."""
    import psutil

    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that started during the window counts from zero; one that ended is lost (rare: connections persist).
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def rss_of(procs: list[Any]) -> int:
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def uss_of(procs: list[Any]) -> int:
    """Unique memory: a PostgreSQL backend's RSS counts the shared buffers it touched, shared by all backends."""
    import psutil

    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def machine_idle() -> tuple[float, float]:
    import psutil

    t = psutil.cpu_times()
    return t.idle + getattr(t, "iowait", 0.0), sum(t)


def idle_cores(before: tuple[float, float], after: tuple[float, float]) -> float:
    import psutil

    total = after[1] - before[1]
    return (after[0] - before[0]) / total * (psutil.cpu_count() or 1) if total > 0 else 0.0


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- Prometheus -------------------------------------------------------------------------------------------------
class Prometheus:
    def __init__(self, binary: str, workdir: Path, interval: float, expo_port: int, started: list[Any]) -> None:
        self.workdir = workdir
        self.interval = interval
        self.expo_port = expo_port
        self.port = free_port()
        self.targets = workdir / "targets.json"
        self.data = workdir / "data"
        self.write_targets(0)
        config = {
            "global": {"scrape_interval": f"{interval:g}s", "scrape_timeout": f"{interval:g}s"},
            "scrape_configs": [{"job_name": "fleet", "file_sd_configs": [
                {"files": [str(self.targets)], "refresh_interval": "5s"}]}],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={self.data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT)
        started.append(self)  # before the wait: Ctrl-C during it stops it too
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"prometheus exited with {self.proc.returncode}; see {workdir / 'prometheus.log'}")
            try:
                if self.get("/-/ready").startswith(b"Prometheus"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("prometheus did not become ready in 60 s")

    def write_targets(self, n: int) -> None:
        groups = [{"targets": [f"127.0.0.1:{self.expo_port}"],
                   "labels": {"__metrics_path__": f"/n/{i}", "instance": NODE_NAME.format(i)}} for i in range(n)]
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets)  # atomic: Prometheus never reads half a file

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as r:
            return bytes(r.read())

    def metrics(self) -> dict[str, float]:
        """Its own /metrics as {'name{labels}': value}."""
        out = {}
        for line in self.get("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                try:
                    out[key] = float(value)
                except ValueError:
                    pass
        return out

    def query(self, promql: str, path: str = "/api/v1/query", **params: Any) -> tuple[Any, float]:
        """(result, seconds) of a PromQL query over the HTTP API."""
        qs = urllib.parse.urlencode({"query": promql, **params})
        t = time.perf_counter()
        doc = json.loads(self.get(f"{path}?{qs}"))
        took = time.perf_counter() - t
        if doc.get("status") != "success":
            raise RuntimeError(f"PromQL {promql!r}: {doc}")
        return doc["data"]["result"], took

    def scalar(self, promql: str) -> float:
        result, _ = self.query(promql)
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def appended(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("prometheus_tsdb_head_samples_appended_total"))


def served(expo_port: int) -> int:
    """Node expositions the exposition server has answered so far (its /count)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{expo_port}/count", timeout=30) as r:
        return int(r.read())


def interval_stats(m: dict[str, float], interval: float) -> tuple[float, float]:
    key = f'prometheus_target_interval_length_seconds_%s{{interval="{interval:g}s"}}'
    return m.get(key % "sum", 0.0), m.get(key % "count", 0.0)


def prometheus_step(prom: Prometheus, expo: subprocess.Popen[bytes], n: int, args: argparse.Namespace,
                    values_per_node: int) -> dict[str, Any]:
    prom.write_targets(n)
    deadline = time.monotonic() + 60
    while prom.metrics().get('prometheus_target_scrape_pool_targets{scrape_job="fleet"}', 0) != n:
        if time.monotonic() > deadline:
            raise SystemExit(f"prometheus did not pick up {n} targets in 60 s")
        time.sleep(0.5)
    time.sleep(args.interval + 1)  # every target scraped once: its loop has started
    m0, c0, e0, i0 = prom.metrics(), cpu_of(tree(prom.proc.pid)), cpu_of(tree(expo.pid)), machine_idle()
    sv0 = served(prom.expo_port)
    t0 = time.monotonic()
    time.sleep(args.window)
    sv1 = served(prom.expo_port)
    m1, c1, e1, i1 = prom.metrics(), cpu_of(tree(prom.proc.pid)), cpu_of(tree(expo.pid)), machine_idle()
    took = time.monotonic() - t0
    w = f"{int(took)}s"
    failed = prom.scalar(f'count(min_over_time(up{{job="fleet"}}[{w}]) == 0)')
    scrape_p99 = prom.scalar(f'quantile(0.99, max_over_time(scrape_duration_seconds{{job="fleet"}}[{w}]))')
    s0, k0 = interval_stats(m0, args.interval)
    s1, k1 = interval_stats(m1, args.interval)
    mean_interval = (s1 - s0) / (k1 - k0) if k1 > k0 else float("inf")
    # Values ingested, counted as Switchyard's are (the fleet's values, nothing else), between the two moments the
    # CPU is read: the node expositions the exposition server answered in the window x the catalogue values in
    # each. Prometheus appends more than that: each exposition's switchyard_node_up and last-sample timestamp
    # (EXPOSED_EXTRA) and the 5 series it adds to every scrape itself (up, scrape_duration_seconds,
    # scrape_samples_scraped, scrape_samples_post_metric_relabeling, scrape_series_added): printed apart, from
    # prometheus_tsdb_head_samples_appended_total. (Rounds 1-3 counted sum_over_time(scrape_samples_scraped) over
    # a range ending when the query ran, not at the window's end: kept as `values_s_by_query`.)
    secs = int(took)
    scraped = prom.scalar(f'sum(sum_over_time(scrape_samples_scraped{{job="fleet"}}[{secs}s]))')
    by_query = scraped * values_per_node / (values_per_node + EXPOSED_EXTRA) / secs
    scrapes = sv1 - sv0
    values = scrapes * values_per_node
    samples = appended(m1) - appended(m0)
    extra = samples - values
    expected = n * values_per_node * took / args.interval
    cpu = cpu_delta(c0, c1)
    held = failed == 0 and mean_interval <= args.interval * 1.05 and values >= 0.95 * expected
    return {"system": "prometheus", "nodes": n, "values_s": round(values / took), "scrapes": int(scrapes),
            "window_s": round(took, 2), "values_s_by_query": round(by_query),
            "appended_s": round(samples / took), "appended_not_fleet_s": round(extra / took),
            "appended_per_scrape": round(samples / scrapes, 1) if scrapes else None, "expected_values_s":
            round(expected / took), "failed_targets": int(failed), "mean_interval_s": round(mean_interval, 3),
            "scrape_p99_ms": round(scrape_p99 * 1000, 1), "cpu_cores": round(cpu / took, 3),
            "cpu_s_per_million": round(cpu / values * 1e6, 2) if values else None,
            "loadgen_cpu_cores": round(cpu_delta(e0, e1) / took, 3),
            "machine_idle_cores": round(idle_cores(i0, i1), 2), "rss_bytes": rss_of(tree(prom.proc.pid)),
            "held": held}


def prometheus_queries(prom: Prometheus, rounds: int) -> dict[str, float]:
    end = time.time()
    rng = {"start": end - 3600, "end": end, "step": 60}
    one = 'switchyard_gpu_util_pct{node="bench-00000",gpu="0"}'
    fleet = 'avg(switchyard_gpu_util_pct)'
    t_one = [prom.query(one, "/api/v1/query_range", **rng)[1] for _ in range(rounds)]
    t_fleet = [prom.query(fleet, "/api/v1/query_range", **rng)[1] for _ in range(rounds)]
    result, _ = prom.query(one, "/api/v1/query_range", **rng)
    points = len(result[0]["values"]) if result else 0
    return {"one_gpu_ms": percentile(t_one, 0.5) * 1000, "fleet_avg_ms": percentile(t_fleet, 0.5) * 1000,
            "one_gpu_points": points}


def run_prometheus(binary: str, sweep: list[int], args: argparse.Namespace, workdir: Path,
                   values_per_node: int, started: list[Any]) -> dict[str, Any]:
    expo_port = free_port()
    expo = subprocess.Popen([sys.executable, __file__, "--serve-exposition", str(expo_port), "--gpus",
                             str(args.gpus)] + (["--plain-exposition"] if args.plain_exposition else []))
    started.append(expo)
    benchlib.wait_port(expo_port, expo, "the exposition server")
    prom = Prometheus(binary, workdir, args.interval, expo_port, started)
    steps = []
    for n in sweep:
        log(f"prometheus: {n} nodes x {args.gpus} GPUs every {args.interval:g} s ...")
        step = prometheus_step(prom, expo, n, args, values_per_node)
        log(f"prometheus: {json.dumps(step)}")
        steps.append(step)
        if not step["held"]:
            break
    prom.write_targets(0)
    time.sleep(1)
    total_values = prom.scalar('sum(sum_over_time(scrape_samples_scraped{job="fleet"}[1h]))') * values_per_node / (
        values_per_node + EXPOSED_EXTRA)
    queries = prometheus_queries(prom, args.query_rounds)
    disk = du(prom.data)
    return {"steps": steps, "queries": queries, "disk_bytes": disk,
            "disk_bytes_per_value": disk / total_values if total_values else None, "stored_values": total_values}


# --- Switchyard -------------------------------------------------------------------------------------------------
def pg_procs(db: str) -> list[Any]:
    """The bench database's backends and the PostgreSQL processes every commit drives (WAL writer, checkpointer,
    background writer): their CPU is part of the cost of storing a push."""
    import psutil
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [db])
        pids = {r[0] for r in cur.fetchall()}
    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] in pids or any(k in cmd for k in ("walwriter", "checkpointer", "background writer")):
            procs.append(p)
    return procs


def start_redis(started: list[Any]) -> tuple[subprocess.Popen[bytes], str] | None:
    """A Redis server of the bench's own (no persistence: the samples' store is PostgreSQL), so that its CPU can
    be counted with the server's: Prometheus does in its one process what Switchyard splits over three. None when
    `redis-server` is not on PATH (then the configured Redis serves, and its CPU is not counted)."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", tempfile.gettempdir(), "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL)
    started.append(proc)
    benchlib.wait_port(port, proc, "the bench's redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def pyspy_workers(pyspy: str, server_pid: int, seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy (collapsed stacks, 100 Hz, without pausing the process) on each of the server's worker processes
    for `seconds`: where a worker's CPU goes during a step (--py-spy)."""
    out.mkdir(parents=True, exist_ok=True)
    workers = [p for p in tree(server_pid)[1:] if "python" in " ".join(p.cmdline()).lower()] or tree(server_pid)
    return [subprocess.Popen([pyspy, "record", "--pid", str(p.pid), "--duration", str(int(seconds)), "--rate", "100",
                              "--nonblocking", "--format", "raw", "--output", str(out / f"{p.pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in workers]


def commits(db: str) -> int:
    """Transactions committed in the bench database so far (pg_stat_database; the statistics lag by up to
    PostgreSQL's stats interval, so a window's difference is approximate)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [db])
        return int(cur.fetchone()[0])


def switchyard_disk() -> tuple[int, int]:
    """(bytes of the raw sample tables with their indexes, values stored in them)."""
    from django.db import connection

    from agents.catalogue import GPU_METRICS, NODE_METRICS

    with connection.cursor() as cur:
        cur.execute("SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('node_sample')"
                    " UNION ALL SELECT coalesce(sum(pg_total_relation_size(relid)), 0) "
                    "FROM pg_partition_tree('gpu_sample')")
        node_bytes, gpu_bytes = (int(r[0]) for r in cur.fetchall())
        cur.execute("SELECT (SELECT count(*) FROM node_sample), (SELECT count(*) FROM gpu_sample)")
        node_rows, gpu_rows = cur.fetchone()
    return node_bytes + gpu_bytes, node_rows * len(NODE_METRICS) + gpu_rows * len(GPU_METRICS)


def switchyard_queries(rounds: int) -> dict[str, float]:
    from django.db import connection

    from agents.catalogue import BY_NAME
    from dashboard.fleet.models import Node
    from dashboard.metrics import query, rollups, schema

    t = time.perf_counter()
    rollups.rollup_minutes()
    rollup_s = time.perf_counter() - t
    now = datetime.now(UTC)
    node_id = Node.objects.get(name=NODE_NAME.format(0)).id
    q = query.Query(BY_NAME["gpu_util_pct"], now - timedelta(hours=1), now, 60, [node_id], 0)

    def timed(fn: Any) -> float:
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return percentile(times, 0.5) * 1000

    points = len(query.run(q)["series"][0]["points"]) if query.run(q)["series"] else 0
    one_ms = timed(lambda: query.run(q))
    m1 = schema.ROLLUPS[("gpu", "1m")]
    rollup_sql = (f"SELECT date_bin('60 s', {m1.time_col}, TIMESTAMPTZ '2000-01-01') t, "
                  f"sum(gpu_util_pct_avg * n) / NULLIF(sum(n), 0) FROM {m1.name} "
                  f"WHERE {m1.time_col} >= %s AND {m1.time_col} < %s GROUP BY t ORDER BY t")
    raw_sql = ("SELECT date_bin('60 s', ts, TIMESTAMPTZ '2000-01-01') t, avg(gpu_util_pct) FROM gpu_sample "
               "WHERE ts >= %s AND ts < %s GROUP BY t ORDER BY t")

    def sql(text: str) -> None:
        with connection.cursor() as cur:
            cur.execute(text, [now - timedelta(hours=1), now])
            cur.fetchall()

    return {"one_gpu_ms": one_ms, "one_gpu_points": points, "fleet_avg_ms": timed(lambda: sql(rollup_sql)),
            "fleet_avg_raw_ms": timed(lambda: sql(raw_sql)), "rollup_s": rollup_s}


_CONFIGURED_REDIS: dict[str, str] = {}


def run_switchyard(sweep: list[int], args: argparse.Namespace, started: list[Any], batch: int = 1,
                   http: str = "ingest", group_wait_ms: str = "", root: Path | None = None) -> dict[str, Any]:
    """Switchyard's sweep. `batch` > 1: each agent pushes `batch` samples (--interval apart) every batch x
    --interval seconds, the same values per second in fewer, larger pushes. `root`: serve another checkout's code
    (--also-root), started without --http."""

    import ingest as ingest_bench
    import orjson

    label = switchyard_label(batch, http, group_wait_ms) if root is None else (
        switchyard_label(batch, "ingest", group_wait_ms) + f" ({root.name})")
    log(f"{label}: preparing {max(sweep)} nodes in database {args.database} ...")
    from django.conf import settings

    from dashboard.metrics.latest import redis_client

    # The configured Redis again (the last sweep's own redis-server is gone) for the set-up.
    settings.REDIS_URL = _CONFIGURED_REDIS.setdefault("url", settings.REDIS_URL)
    redis_client.cache_clear()
    nodes, db_url, redis_url = ingest_bench.setup_database(max(sweep), args.gpus, args.database, args.redis_db)
    own_redis = None if args.shared_redis else start_redis(started)
    if own_redis is not None:
        redis_url = settings.REDIS_URL = own_redis[1]
        redis_client.cache_clear()
    random.seed(11)
    templates = [ingest_bench.sample_template(args.gpus) for _ in range(VARIANTS)]
    period = args.interval * batch
    window = max(args.window, period)  # every agent pushes at least once in the window

    class Agent(ingest_bench.Agent):
        """bench/ingest.py's virtual agent with new values in every sample (VARIANTS sample bodies, cycled), and
        `batch` samples per push."""

        def payload(self) -> bytes:
            now = datetime.now(UTC)
            samples = []
            for j in range(batch):
                self.seq += 1
                ts = (now - timedelta(seconds=args.interval * (batch - 1 - j))).isoformat(timespec="milliseconds")
                samples.append({"ts": ts.replace("+00:00", "Z"), "seq": self.seq,
                                **templates[(self.seq + self.offset) % VARIANTS]})  # type: ignore[attr-defined]
            body = {"node": self.name, "agent": "bench/1.0", "samples": samples}
            return gzip.compress(orjson.dumps(body), compresslevel=1)

    port = free_port()
    # As benchlib.start_server, but the process is on the list before the wait: Ctrl-C during it stops it too.
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--workers", str(args.workers)]
        + (["--http", http] if root is None else []),
        cwd=root or benchlib.ROOT,
        env=dict(os.environ, SWITCHYARD_DATABASE_URL=db_url, SWITCHYARD_REDIS_URL=redis_url,
                 SWITCHYARD_INGEST_RATE_PER_MINUTE="100000",
                 **({"SWITCHYARD_INGEST_GROUP_WAIT_MS": group_wait_ms} if group_wait_ms else {}),
                 **({"PYTHONPATH": str(root)} if root else {})))
    started.append(server)
    benchlib.wait_port(port, server, "the Switchyard server", timeout_s=60)
    # One event loop and one agent (one kept-alive connection) per node for the whole sweep, as real agents keep
    # theirs and Prometheus keeps its connections to the targets: rounds 1-3 reconnected every agent at every step
    # (and after its warm-up push), and a new connection that the kernel handed to the other worker found the
    # node's token not in that worker's cache: about one push in eight of every window took the uncached path.
    loop = asyncio.new_event_loop()
    fleet = []
    for i, (name, token) in enumerate(nodes[:max(sweep)]):
        a = Agent(name, token, "127.0.0.1", port, templates[0])
        a.offset = i  # type: ignore[attr-defined]
        fleet.append(a)
    try:
        return run_switchyard_steps(label, sweep, args, batch, server, own_redis, loop, fleet, period, window)
    finally:
        for a in fleet:
            if a.writer is not None:
                a.writer.close()
        loop.close()


def run_switchyard_steps(label: str, sweep: list[int], args: argparse.Namespace, batch: int, server: Any,
                         own_redis: Any, loop: asyncio.AbstractEventLoop, fleet: list[Any], period: float,
                         window: float) -> dict[str, Any]:
    import ingest as ingest_bench

    steps = []
    warmed = 0
    for n in sweep:
        log(f"{label}: {n} nodes x {args.gpus} GPUs every {args.interval:g} s, {batch} sample(s) per push ...")
        agents = fleet[:n]
        # Every agent pushes once before the window, as Prometheus scrapes every target once before its window:
        # a node's first push registers its GPUs and its token in the workers' caches, a cost paid once.
        loop.run_until_complete(warm_up(agents[warmed:]))
        warmed = n
        redis_procs = tree(own_redis[0].pid) if own_redis is not None else []
        idle: dict[str, float] = {}
        if args.idle_window > 0:
            # The fleet registered and warm, nobody pushing: what the server, PostgreSQL and Redis cost by
            # themselves (timers, pollers), which a light load pays per value.
            c0, p0, r0 = cpu_of(tree(server.pid)), cpu_of(pg_procs(args.database)), cpu_of(redis_procs)
            time.sleep(args.idle_window)
            c1, p1, r1 = cpu_of(tree(server.pid)), cpu_of(pg_procs(args.database)), cpu_of(redis_procs)
            idle = {"idle_server_cores": round(cpu_delta(c0, c1) / args.idle_window, 4),
                    "idle_pg_cores": round(cpu_delta(p0, p1) / args.idle_window, 4),
                    "idle_redis_cores": round(cpu_delta(r0, r1) / args.idle_window, 4)}
        before = ingest_bench.stored_samples()[0]
        pg = pg_procs(args.database)
        spies = pyspy_workers(args.py_spy, server.pid, window, Path(args.py_spy_dir) / f"{label}-{n}") \
            if args.py_spy else []
        x0 = commits(args.database)
        c0, p0, r0, i0 = cpu_of(tree(server.pid)), cpu_of(pg), cpu_of(redis_procs), machine_idle()
        me0 = time.process_time()
        t0 = time.monotonic()
        stats = loop.run_until_complete(ingest_bench.run_load(agents, period, window, f"{n} nodes", linger=False,
                                                              close=False))
        # Without linger, run_load returns when the last push of the window is answered: the CPU read around it
        # covers the pushes (rounds 1-3 also counted up to an interval of idle time after them). Rates are per
        # window second, as bench/ingest.py reports them.
        took = window
        elapsed = time.monotonic() - t0
        c1, p1, r1, i1 = cpu_of(tree(server.pid)), cpu_of(pg_procs(args.database)), cpu_of(redis_procs), \
            machine_idle()
        loadgen = time.process_time() - me0
        time.sleep(1)  # let the statistics collector catch up (PostgreSQL 15 flushes them within a second)
        xacts = commits(args.database) - x0  # the bench's own couple of statements included: approximate
        for spy in spies:
            spy.wait()
        stored = ingest_bench.stored_samples()[0] - before
        values = stored * (args.gpus * 33 + 25)
        server_cpu, pg_cpu, redis_cpu = cpu_delta(c0, c1), cpu_delta(p0, p1), cpu_delta(r0, r1)
        p95 = percentile(stats.latencies, 0.95) * 1000
        lost = stats.ok * batch - stored
        step = {"system": label, "batch": batch, "nodes": n, "values_s": round(values / took),
                "expected_values_s": round(n * (args.gpus * 33 + 25) / args.interval), "pushes_ok": stats.ok,
                "errors": stats.errors, "lost": lost, "p50_ms": round(percentile(stats.latencies, 0.5) * 1000, 1),
                "p95_ms": round(p95, 1), "server_cpu_cores": round(server_cpu / took, 3),
                "pg_cpu_cores": round(pg_cpu / took, 3), "redis_cpu_cores": round(redis_cpu / took, 3),
                "measured_s": round(elapsed, 2), "commits_s": round(xacts / elapsed, 1),
                "pushes_per_commit": round(stats.ok / xacts, 2) if xacts > 0 else None,
                # Server + PostgreSQL + Redis (its own redis-server; 0 with --shared-redis); without Redis as in
                # rounds 1-3 next to it.
                "cpu_s_per_million": round((server_cpu + pg_cpu + redis_cpu) / values * 1e6, 2) if values else None,
                "cpu_s_per_million_server_pg": round((server_cpu + pg_cpu) / values * 1e6, 2) if values else None,
                **idle,
                "loadgen_cpu_cores": round(loadgen / took, 3), "machine_idle_cores": round(idle_cores(i0, i1), 2),
                "rss_bytes": rss_of(tree(server.pid)), "pg_uss_bytes": uss_of(pg_procs(args.database)),
                "held": p95 <= 250 and lost <= 0 and not stats.errors}
        log(f"{label}: {json.dumps(step)}")
        steps.append(step)
        if not step["held"]:
            break
    disk, stored_values = switchyard_disk()
    queries = switchyard_queries(args.query_rounds)
    return {"steps": steps, "queries": queries, "disk_bytes": disk,
            "disk_bytes_per_value": disk / stored_values if stored_values else None, "stored_values": stored_values}


def switchyard_label(batch: int, http: str, group_wait_ms: str = "") -> str:
    return (("switchyard" if batch == 1 else f"switchyard x{batch}") + ("" if http == "ingest" else f" ({http})")
            + (f" (wait {group_wait_ms} ms)" if group_wait_ms else ""))


async def warm_up(agents: list[Any]) -> None:
    import ingest as ingest_bench

    gate = asyncio.Semaphore(32)
    stats = ingest_bench.Stats()

    async def one(agent: Any) -> None:
        async with gate:
            await agent.push(stats)

    await asyncio.gather(*(one(a) for a in agents))


# --- the report -------------------------------------------------------------------------------------------------
def best(result: dict[str, Any]) -> dict[str, Any] | None:
    held = [s for s in result["steps"] if s["held"]]
    return held[-1] if held else None


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    rows = [("", *results)]

    def row(label: str, fn: Any) -> None:
        cells = []
        for r in results.values():
            b = best(r)
            try:
                cells.append(fn(r, b))
            except (TypeError, KeyError, IndexError, AttributeError):  # b is None: no step held
                cells.append("-")
        rows.append((label, *cells))

    row("highest fleet held", lambda r, b: f"{b['nodes']:,} nodes x {args.gpus} GPUs" if b else "none")
    row("first step behind", lambda r, b: next((f"{s['nodes']:,} nodes" for s in r["steps"] if not s["held"]),
                                               "none (sweep ended)"))
    row("values/s held (the fleet's values)", lambda r, b: f"{b['values_s']:,}")
    row("  besides: appended/s not of the fleet", lambda r, b: f"{b['appended_not_fleet_s']:,}"
        if "appended_not_fleet_s" in b else "-")
    row("CPU-s per million values", lambda r, b: f"{b['cpu_s_per_million']:.2f}"
        + (f" ({b['cpu_s_per_million_server_pg']:.2f} without Redis)" if "cpu_s_per_million_server_pg" in b else ""))
    common = max(set.intersection(*({st["nodes"] for st in r["steps"]} for r in results.values())), default=None)
    if common is not None:
        # On a busy machine latency can fail a step that CPU would hold: the cost per value at a fleet every
        # system ran is the comparison that does not depend on the neighbours.
        row(f"CPU-s per million values at {common:,} nodes (every system ran it)",
            lambda r, b: next(f"{st['cpu_s_per_million']:.2f}" for st in r["steps"] if st["nodes"] == common))
    row("CPU cores used (of it: PostgreSQL, Redis)",
        lambda r, b: f"{b.get('cpu_cores', 0) or (b['server_cpu_cores'] + b['pg_cpu_cores'] + b['redis_cpu_cores']):.2f}"
        + (f" ({b['pg_cpu_cores']:.2f}, {b['redis_cpu_cores']:.2f})" if "pg_cpu_cores" in b else ""))
    row("idle CPU cores, fleet warm, no pushes (server, PostgreSQL, Redis)",
        lambda r, b: f"{b['idle_server_cores']:.3f}, {b['idle_pg_cores']:.3f}, {b['idle_redis_cores']:.3f}"
        if "idle_server_cores" in b else "-")
    row("latency at that fleet", lambda r, b: f"push p95 {b['p95_ms']:.0f} ms" if "p95_ms" in b
        else f"scrape p99 {b['scrape_p99_ms']:.0f} ms")
    row("load generator CPU cores", lambda r, b: f"{b['loadgen_cpu_cores']:.2f}")
    row("machine CPU left (idle cores)", lambda r, b: f"{b['machine_idle_cores']:.2f}")
    row("memory (RSS)", lambda r, b: mib(b["rss_bytes"]) + (f" + PostgreSQL backends {mib(b['pg_uss_bytes'])}"
                                                           if "pg_uss_bytes" in b else ""))
    row("disk bytes per value", lambda r, b: f"{r['disk_bytes_per_value']:.2f} ({mib(r['disk_bytes'])})")
    row("query: one GPU, last hour, 1-min steps", lambda r, b: f"{r['queries']['one_gpu_ms']:.1f} ms")
    row("query: fleet average, last hour, 1-min steps",
        lambda r, b: f"{r['queries']['fleet_avg_ms']:.1f} ms" + (
            f" (rollup; raw rows {r['queries']['fleet_avg_raw_ms']:.0f} ms)" if "fleet_avg_raw_ms" in r["queries"]
            else ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def ratios(results: dict[str, dict[str, Any]]) -> str:
    p = best(results.get("prometheus", {"steps": []}))
    lines = []
    prom_steps = {st["nodes"]: st for st in results.get("prometheus", {"steps": []})["steps"]}
    for name, r in results.items():
        for st in [st for st in r["steps"] if name != "prometheus" and st["nodes"] in prom_steps]:
            prom = prom_steps[st["nodes"]]
            lines.append(f"{name} / prometheus, CPU-s per million values at {st['nodes']:,} nodes: "
                         f"{st['cpu_s_per_million'] / prom['cpu_s_per_million']:.2f}x"
                         + (f" ({st['cpu_s_per_million_server_pg'] / prom['cpu_s_per_million']:.2f}x without Redis)"
                            if st.get("cpu_s_per_million_server_pg") else "")
                         + f", values/s {st['values_s'] / prom['values_s']:.3f}x")
    for name, r in results.items():
        if name == "prometheus":
            continue
        s = best(r)
        if not p or not s:
            lines.append(f"{name} / prometheus: one of them held no step of the sweep")
            continue
        lines.append(f"{name} / prometheus in this run: values/s held {s['values_s'] / p['values_s']:.2f}x "
                     f"(goal >= 1.0), CPU-s per million values {s['cpu_s_per_million'] / p['cpu_s_per_million']:.2f}x"
                     " (goal <= 1.0)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="250,500,1000,2000,3000,4000,6000",
                        help="the sweep: fleet sizes tried in turn, comma-separated (default 250,500,1000,2000,"
                             "3000,4000,6000); each system stops at its first step that falls behind")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="scrape interval and push interval, seconds (default 5)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per step (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of Switchyard's server (default 2)")
    parser.add_argument("--systems", default="prometheus,switchyard",
                        help="which systems to run, comma-separated (default both)")
    parser.add_argument("--batch", default="1,4,12",
                        help="samples per Switchyard push, comma-separated: each runs its own sweep (default 1,4,12: "
                             "one sample every --interval, then k samples every k x --interval, as an agent with "
                             "--batch-interval k x --interval, or back from an outage, sends them; the same values "
                             "per second in fewer, larger pushes)")
    parser.add_argument("--http", default="ingest",
                        help="Switchyard's HTTP protocol (manage.py serve --http), comma-separated: each runs its own "
                             "sweep (default ingest: pushes answered from the HTTP parser; httptools: every request "
                             "through ASGI, as before the ingest protocol)")
    parser.add_argument("--group-wait-ms", default="",
                        help="the server's SWITCHYARD_INGEST_GROUP_WAIT_MS, comma-separated: each runs its own sweep "
                             "(default: the server's setting)")
    parser.add_argument("--also-root", action="append", default=[], metavar="DIR",
                        help="also sweep Switchyard served from another checkout DIR (e.g. the code before a change, "
                             "from git archive), labelled with DIR's name, in the same run; repeatable")
    parser.add_argument("--database", default=BENCH_DB,
                        help=f"Switchyard's bench database, emptied first (default {BENCH_DB})")
    parser.add_argument("--redis-db", type=int, help="Redis database number for Switchyard with --shared-redis "
                        "(default: the configured one)")
    parser.add_argument("--shared-redis", action="store_true",
                        help="use the configured Redis (and --redis-db) instead of a redis-server of the bench's own; "
                             "its CPU is then not counted (rounds 1-3)")
    parser.add_argument("--idle-window", type=float, default=0.0,
                        help="seconds measured before each Switchyard step with the fleet warm and nobody pushing: "
                             "the CPU the server, PostgreSQL and Redis use by themselves (default 0: skipped)")
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy binary: record each server worker during every "
                        "Switchyard step's window (collapsed stacks under --py-spy-dir)")
    parser.add_argument("--py-spy-dir", default="pyspy-out", help="where --py-spy writes (default ./pyspy-out)")
    parser.add_argument("--plain-exposition", action="store_true",
                        help="answer Prometheus's scrapes uncompressed even though it asks for gzip (rounds 1-3; "
                             "the bench's agents always gzip their pushes)")
    parser.add_argument("--query-rounds", type=int, default=5, help="times each query is timed; median (default 5)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--serve-exposition", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_exposition:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        serve_exposition(args.serve_exposition, args.gpus, not args.plain_exposition)
        return 0

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    sweep = sorted({int(n) for n in args.nodes.split(",") if n.strip()})
    binary = shutil.which("prometheus") if "prometheus" in systems else None
    if "prometheus" in systems and binary is None:
        print(f"prometheus is not on PATH; install Debian's package: `{INSTALL}` (this script installs nothing)",
              file=sys.stderr)
        return 2
    from agents.catalogue import GPU_METRICS, NODE_METRICS

    values_per_node = len(NODE_METRICS) + args.gpus * len(GPU_METRICS)
    # SIGTERM as Ctrl-C: the finally below stops what was started either way.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started: list[Any] = []
    results: dict[str, dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="sy-vs-prometheus-"))
    t_start = time.monotonic()
    try:
        if "prometheus" in systems:
            assert binary is not None
            results["prometheus"] = run_prometheus(binary, sweep, args, workdir, values_per_node, started)
            for p in reversed(started):
                stop(p)
            started.clear()
        if "switchyard" in systems:
            waits = [w.strip() for w in args.group_wait_ms.split(",")] if args.group_wait_ms else [""]
            for http in [h.strip() for h in args.http.split(",") if h.strip()]:
                for wait in waits:
                    for batch in sorted({int(b) for b in args.batch.split(",") if b.strip()}):
                        results[switchyard_label(batch, http, wait)] = run_switchyard(
                            sweep, args, started, batch, http, wait)
                        for p in reversed(started):
                            stop(p)
                        started.clear()
            for root in [Path(r) for r in args.also_root]:
                for batch in sorted({int(b) for b in args.batch.split(",") if b.strip()}):
                    results[f"{switchyard_label(batch, 'ingest')} ({root.name})"] = run_switchyard(
                        sweep, args, started, batch, root=root.resolve())
                    for p in reversed(started):
                        stop(p)
                    started.clear()
    except KeyboardInterrupt:
        log("interrupted: stopping what was started")
        return 130
    finally:
        for p in reversed(started):
            stop(p)
        shutil.rmtree(workdir, ignore_errors=True)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split("\n")[0] \
        if binary else ""
    print(f"\n{values_per_node} values per node ({len(NODE_METRICS)} host/inference + {args.gpus} x "
          f"{len(GPU_METRICS)} per GPU), every {args.interval:g} s; window {args.window:g} s per step; "
          f"{os.cpu_count()} cores; {version}; {time.monotonic() - t_start:.0f} s in all\n")
    print(table(results, args))
    print("\n" + ratios(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1, default=str))
    return 0


def stop(p: Any) -> None:
    if isinstance(p, Prometheus):
        p.stop()
        return
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


if __name__ == "__main__":
    raise SystemExit(main())
