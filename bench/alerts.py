"""How long one alert evaluation (the 10-second Celery beat task) takes on a large fleet.

    .venv/bin/python bench/alerts.py [--nodes 500] [--gpus 8] [--rounds 10] [--hot 0.1]

Builds a fleet in a throw-away database (`sy_bench_alerts`) and Redis db 9 — nodes with fresh latest samples
holding every metric the default rules read — then times `control.alerts.evaluator.evaluate()` with the shipped
default rules: first a quiet fleet (nothing true), then one where a fraction of GPUs run hot (pending alerts are
created, then fire), then the same hot fleet again (steady state: alerts exist, nothing changes). Each phase prints the time of an
evaluation and the number of SQL statements it sent.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import percentile, use_bench_database  # noqa: E402


def snapshot(node: str, pool: str, gpus: int, now: datetime, hot: set[tuple[str, int]], rng: random.Random
             ) -> dict[str, Any]:
    def gpu(i: int) -> dict[str, Any]:
        return {"index": i, "uuid": f"GPU-{node}-{i}", "name": "H100", "temp_c": 91 if (node, i) in hot else
                rng.randint(40, 75), "gpu_util_pct": rng.uniform(0, 100), "xid_last": 0, "ecc_dbe_volatile": 0,
                "remap_pending": 0, "clock_reasons": 0, "power_w": rng.uniform(100, 600)}

    return {"node": node, "pool": pool, "state": "active", "ts": now.isoformat(), "seq": 1,
            "received": now.isoformat(), "host": {"cpu_util_pct": rng.uniform(0, 100)},
            "inference": {"requests_waiting": rng.randint(0, 20), "ttft_p95_s": rng.uniform(0.05, 1.0)},
            "gpus": [gpu(i) for i in range(gpus)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=500, help="nodes (default 500)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--rounds", type=int, default=10, help="evaluations timed per phase (default 10)")
    parser.add_argument("--hot", type=float, default=0.1, help="fraction of GPUs above 85 °C in the hot phase")
    args = parser.parse_args()
    use_bench_database("sy_bench_alerts", redis_db=9)

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from control.alerts.evaluator import evaluate
    from control.alerts.models import Alert
    from dashboard.fleet.models import Node, Pool
    from dashboard.metrics.latest import LATEST_KEY, redis_client, store_latest

    Alert.objects.all().delete()
    redis_client().delete(LATEST_KEY)
    pools = [Pool.objects.create(name=f"pool-{p}") for p in "abcd"]
    names = [f"gpu-{i:05d}" for i in range(args.nodes)]
    Node.objects.bulk_create([Node(name=n, pool=pools[i % len(pools)], last_seen=timezone.now())
                              for i, n in enumerate(names)])
    rng = random.Random(7)
    every_gpu = [(n, g) for n in names for g in range(args.gpus)]

    def publish(hot: set[tuple[str, int]], now: datetime) -> None:
        for i, n in enumerate(names):
            store_latest(n, snapshot(n, pools[i % len(pools)].name, args.gpus, now, hot, rng))
        Node.objects.update(last_seen=now)

    def phase(label: str, hot: set[tuple[str, int]], start: datetime, step_s: float = 10) -> None:
        times: list[float] = []
        statements: list[float] = []  # exact where the times are noisy: each is a round trip inside the lock
        results = []
        for r in range(args.rounds):
            now = start + timedelta(seconds=step_s * r)
            publish(hot, now)
            connection.queries_log.clear()  # a full log (9,000) would make the capture count nothing
            with CaptureQueriesContext(connection) as queries:
                t0 = time.perf_counter()
                results.append(evaluate(now))
                times.append((time.perf_counter() - t0) * 1000)
            statements.append(len(queries))
        firing = Alert.objects.filter(state="firing").count()
        print(f"{label:<34} p50 {percentile(times, 0.5):7.1f} ms   max {max(times):7.1f} ms   "
              f"SQL statements p50 {percentile(statements, 0.5):5.0f}   firing after: {firing}", flush=True)

    print(f"{args.nodes} nodes x {args.gpus} GPUs = {len(every_gpu):,} GPU series per GPU rule; "
          f"7 default rules; {args.rounds} evaluations per phase", flush=True)
    start = datetime.now(UTC)
    phase("quiet fleet", set(), start)
    hot = set(rng.sample(every_gpu, int(len(every_gpu) * args.hot)))
    # The temperature rule fires after 2 minutes: rounds 30 s apart take the hot GPUs from pending to firing.
    later = start + timedelta(minutes=5)
    phase(f"{args.hot:.0%} of GPUs hot (pending->firing)", hot, later, step_s=30)
    phase("same hot fleet, steady", hot, later + timedelta(seconds=30 * args.rounds))


if __name__ == "__main__":
    main()
