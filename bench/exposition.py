"""How long `GET /metrics/fleet` takes to render the Prometheus text of a whole fleet (no database, no Redis).

    .venv/bin/python bench/exposition.py [--nodes 1000] [--gpus 8] [--rounds 5]

Builds the latest snapshots of N nodes x G GPUs with every catalogue metric set (as `sy:latest` holds them after a
push), then times `dashboard.metrics.exposition.render()` over them and prints the time per render (wall and CPU), the
size of the text and its number of samples. The snapshots are decoded before timing: the Redis read is not measured.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import percentile  # noqa: E402  (also puts the repository on sys.path and sets the settings module)


def snapshots(nodes: int, gpus: int, rng: random.Random) -> dict[str, dict[str, Any]]:
    from agents.catalogue import GPU_METRICS, HOST_METRICS, INFERENCE_METRICS

    def value(m: Any) -> float | int:
        v = rng.uniform(max(m.lo, 0), min(m.hi, 1000))
        return int(v) if m.integer else v

    now = datetime.now(UTC).isoformat()
    return {
        f"gpu-{i:05d}": {
            "node": f"gpu-{i:05d}", "pool": f"pool-{i % 4}", "state": "active", "ts": now, "seq": 1,
            "host": {m.name: value(m) for m in HOST_METRICS},
            "inference": {m.name: value(m) for m in INFERENCE_METRICS},
            "gpus": [{"index": g, "uuid": f"GPU-{i:05d}-{g}", "name": "NVIDIA H100 80GB HBM3",
                      **{m.name: value(m) for m in GPU_METRICS}} for g in range(gpus)],
        }
        for i in range(nodes)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000, help="nodes (default 1000)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="renders timed (default 5)")
    args = parser.parse_args()

    import django

    django.setup()
    from dashboard.metrics import exposition

    snaps = snapshots(args.nodes, args.gpus, random.Random(7))
    times: list[float] = []
    cpu: list[float] = []  # CPU time too: on a shared machine the wall time says more about the neighbours
    text = ""
    for _ in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        text = exposition.render(snaps)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    print(f"{args.nodes} nodes x {args.gpus} GPUs: render p50 {percentile(times, 0.5):.0f} ms "
          f"(CPU {percentile(cpu, 0.5):.0f} ms), max {max(times):.0f} ms over {args.rounds} renders; "
          f"{len(text) / 1e6:.1f} MB, {samples:,} samples", flush=True)


if __name__ == "__main__":
    main()
