"""Decision time of the scheduler core at 100 / 1,000 / 10,000 nodes (target: p99 < 100 us at 1,000).

One decision = pick the best node for the model + record the send (what the gateway does per request before
it proxies). A steady state is simulated: every request finishes a few decisions later (a finish re-lists the
node too, so it is timed separately and reported). Also timed: scoring the whole fleet from scratch (start-up, a
policy change) and the once-a-second refresh (registry + new samples from a fifth of the nodes), which runs on the
gateway's event loop.

    .venv/bin/python bench/scheduler.py [--decisions 20000] [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm import tqdm  # noqa: E402

from bench.benchlib import percentile  # noqa: E402
from control.scheduler.config import default_config  # noqa: E402
from control.scheduler.core import Metrics, NodeSpec, Scheduler  # noqa: E402


def fleet(n: int, rng: random.Random, now: float) -> tuple[list[NodeSpec], dict[str, Metrics]]:
    specs = [NodeSpec(f"gpu-{i:05d}", f"pool-{i % 8}", "active", f"http://10.0.{i // 250}.{i % 250}:8000",
                      ("deepseek-r1",)) for i in range(n)]
    samples = {s.name: Metrics(now - rng.random() * 5, 1, rng.uniform(10, 95), rng.uniform(5, 80),
                               rng.uniform(0.1, 5), rng.uniform(0.05, 0.5), rng.randint(0, 30), rng.randint(0, 20),
                               rng.uniform(5, 90)) for s in specs}
    return specs, samples


def run(n: int, decisions: int, concurrency: int) -> tuple[list[float], list[float], float, float]:
    rng = random.Random(n)
    now = time.time()
    specs, samples = fleet(n, rng, now)
    sched = Scheduler(default_config(), rng)
    t0 = time.perf_counter()
    sched.update(now, specs=specs, samples=samples)
    refresh_ms = (time.perf_counter() - t0) * 1000
    pick_ns: list[float] = []
    finish_ns: list[float] = []
    in_flight: deque = deque()
    clock = time.perf_counter_ns
    for rid in tqdm(range(decisions), desc=f"{n} nodes", unit="dec", leave=False, mininterval=0.5):
        t = clock()
        choice = sched.pick("deepseek-r1")
        sched.sent(choice.node, rid, now)
        pick_ns.append(clock() - t)
        in_flight.append((choice.node, rid))
        if len(in_flight) > concurrency:
            node, old = in_flight.popleft()
            t = clock()
            sched.finished(node, old, 0.1)
            finish_ns.append(clock() - t)
    # What the gateway does every second: the registry again, and new samples from a fifth of the nodes (5 s interval).
    fresh = {name: Metrics(now + 1, 2, m.gpu_util_pct, m.cpu_util_pct, m.net_rtt_ms, m.ttft_p50_s, m.running,
                           m.waiting, m.kv_cache_pct) for name, m in list(samples.items())[: max(1, n // 5)]}
    t0 = time.perf_counter()
    sched.update(now + 1, specs=specs, samples=fresh)
    sched.tick(now + 1)
    second_ms = (time.perf_counter() - t0) * 1000
    return pick_ns, finish_ns, refresh_ms, second_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20000, help="decisions timed per fleet size")
    parser.add_argument("--sizes", default="100,1000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=200, help="requests in flight in the simulated steady state")
    args = parser.parse_args()
    print(f"{'nodes':>7} {'decide p50':>11} {'decide p99':>11} {'finish p50':>11} {'finish p99':>11} "
          f"{'full re-score':>14} {'1 s refresh':>12}")
    for n in (int(x) for x in args.sizes.split(",")):
        picks, finishes, refresh_ms, second_ms = run(n, args.decisions, args.concurrency)
        us = [v / 1000 for v in picks]
        fus = [v / 1000 for v in finishes]
        print(f"{n:>7} {percentile(us, 0.5):>9.1f}us {percentile(us, 0.99):>9.1f}us "
              f"{percentile(fus, 0.5):>9.1f}us {percentile(fus, 0.99):>9.1f}us {refresh_ms:>12.1f}ms {second_ms:>10.1f}ms")


if __name__ == "__main__":
    main()
