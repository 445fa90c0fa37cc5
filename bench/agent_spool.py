"""CPU cost of the node agent's own work per sample: collect, sequence number, spool, push encoding, ack.

    .venv/bin/python bench/agent_spool.py                     # 5 rounds of 1,000 samples, pushes of 1 and of 10
    .venv/bin/python bench/agent_spool.py --samples 2000 --rounds 3 --push 1 --push 25 --gpus 8

The real Pusher runs on a simulated 8-GPU node with its state directory on the disk that holds --dir (default: a
temporary directory), so every fsync the agent makes is a real one. The push itself goes nowhere: each request
body is built (JSON + gzip, as for the server) and answered with an in-process 200, so neither a server nor the
network is counted. Samples are collected in pushes of k: k samples appended, then one push of those k.

Printed per push size: CPU seconds (user + system, this process) per 1,000 samples for the whole agent cycle,
and for the storage part alone (sequence number + spool append + ack, on pre-collected samples): the lowest and
the median of the rounds (on a shared machine the lowest is the one least disturbed by other work), and how many
fsyncs the agent made per 1,000 samples, which does not depend on the machine. Wall time depends on the disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.collectors.sim import SimBackend  # noqa: E402
from agents.push import PushConfig, Pusher  # noqa: E402

FSYNCS = [0]
_real_fsync = os.fsync


def _counting_fsync(fd: int) -> None:
    FSYNCS[0] += 1
    _real_fsync(fd)


os.fsync = _counting_fsync  # counted, still done

OK = {"accepted": 1, "duplicates": 0, "desired": {"interval_s": 5, "state": "active", "power_limit_w": {}}}


class OfflinePusher(Pusher):
    def _open_client(self) -> Any:
        return None

    def push_all(self) -> None:
        steps = self.flush_steps()
        request = httpx.Request("POST", self.url)
        try:
            next(steps)
            while True:
                steps.send(httpx.Response(200, json=OK, request=request))
        except StopIteration:
            pass


def cycle(state: Path, samples: int, k: int, gpus: int) -> tuple[float, float]:
    """The whole agent cycle: collect k samples (spooled), then push them."""
    pusher = OfflinePusher(PushConfig(server="http://127.0.0.1:9", token="t", node="bench", state_dir=state),
                           SimBackend(gpus=gpus, seed=1))
    try:
        wall, started = time.perf_counter(), time.process_time()
        for _ in range(samples // k):
            for _ in range(k):
                pusher.collect_once()
            pusher.push_all()
        assert len(pusher.spool) == 0
        return time.process_time() - started, time.perf_counter() - wall
    finally:
        pusher.close()


def storage(state: Path, samples: int, k: int, gpus: int) -> tuple[float, float]:
    """Only what makes a sample durable and removes it again: the agent's collect path with a backend whose
    reading is already made, and the ack of each push."""
    backend = SimBackend(gpus=gpus, seed=1)
    reading = backend.collect()

    class Frozen(SimBackend):
        def collect(self) -> dict[str, Any]:
            return reading

    pusher = OfflinePusher(PushConfig(server="http://127.0.0.1:9", token="t", node="bench", state_dir=state),
                           Frozen(gpus=gpus, seed=1))
    try:
        wall, started = time.perf_counter(), time.process_time()
        for _ in range(samples // k):
            for _ in range(k):
                pusher.collect_once()
            pusher.spool.ack(k)
        return time.process_time() - started, time.perf_counter() - wall
    finally:
        pusher.close()


def rounds(run: Callable[[Path, int, int, int], tuple[float, float]], state: Path, n: int, k: int, gpus: int, count: int) -> str:
    cpu: list[float] = []
    wall: list[float] = []
    FSYNCS[0] = 0
    for r in range(count):
        c, w = run(state / str(r), n, k, gpus)
        cpu.append(c / n * 1000)
        wall.append(w / n * 1000)
    fsyncs = FSYNCS[0] / (n * count) * 1000
    return (f"{min(cpu):6.3f} (median {statistics.median(cpu):6.3f}) CPU s, {fsyncs:5.0f} fsyncs, "
            f"wall {statistics.median(wall):6.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000, help="samples per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--push", type=int, action="append", help="samples per push (repeatable; default 1 and 10)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--dir", default=None, help="parent of the state directories (default: a temporary one)")
    args = parser.parse_args()
    sizes = args.push or [1, 10]
    print(f"{args.rounds} rounds of {args.samples} samples of {args.gpus} GPUs; per 1,000 samples: lowest CPU s "
          "(user+sys) of the rounds, fsyncs, median wall s")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for k in sizes:
            n = max(k, args.samples - args.samples % k)
            print(f"pushes of {k:>3}: agent cycle  {rounds(cycle, Path(d) / f'cycle-{k}', n, k, args.gpus, args.rounds)}")
            print(f"               storage only {rounds(storage, Path(d) / f'storage-{k}', n, k, args.gpus, args.rounds)}")


if __name__ == "__main__":
    main()
