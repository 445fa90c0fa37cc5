"""A scheduler core on the default policy with identical nodes, for tests of the core on its own (no I/O)."""

from __future__ import annotations

import random

from control.policy.defaults import default_document
from control.policy.schemas import validate
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler

NOW = 1_800_000_000.0


def default_fleet(names: list[str]) -> Scheduler:
    """Nodes `names` in one pool serving model "m", each with the same fresh sample taken a second before NOW."""
    sched = Scheduler(Config.from_document(validate("scheduler", default_document("scheduler"))), random.Random(1))
    specs = [NodeSpec(n, "p", "active", f"http://{n}", ("m",)) for n in names]
    sched.update(NOW, specs=specs, samples={n: Metrics(NOW - 1, 1, 50.0, 30.0, 1.0, 0.1, 0, 0, 10.0) for n in names})
    return sched


def serve_rounds(sched: Scheduler, name: str, k: int, latency_s: float, rounds: int = 30, since_s: float = 500.0,
                 streamed_ttft_s: float | None = None, prompt: int = 0) -> None:
    """Rounds of k requests sent at once to node `name`, each taking latency_s (a batching engine running them side
    by side), the first round since_s before NOW. With streamed_ttft_s, every other request is streamed and gets
    its first token after that; the rest are plain (their TTFT is the whole answer, as the proxy reports it).
    Without it, every request is plain with a 0.05-s TTFT. `prompt`: each request's prompt tokens (0: not given)."""
    node = sched.nodes[name]
    for r in range(rounds):
        t = NOW - since_s + r * (latency_s + 1)
        ids = [hash((name, r, i)) for i in range(k)]
        for rid in ids:
            sched.sent(node, rid, t, prompt=prompt)
        for i, rid in enumerate(ids):
            if streamed_ttft_s is None:
                sched.finished(node, rid, ttft_s=0.05, now=t + latency_s)
                continue
            stream = i % 2 == 0
            sched.finished(node, rid, ttft_s=streamed_ttft_s if stream else latency_s, now=t + latency_s, ok=True,
                           stream=stream)
