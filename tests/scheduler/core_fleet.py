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
