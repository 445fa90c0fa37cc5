"""The candidate side of a running canary inside one gateway: a second scheduler core with the candidate policy,
fed the same registry and samples as the stable one, and its own admission.

Both cores count every request either arm sends (Admission.twin), so the candidate's burst correction and in-flight
scorers see the whole load on each node, not only its own share of it (a 5 % arm that saw only its own sends would
herd onto the node that looks idle to it and be judged for a fault the split made).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from control.canary.split import CANARY, STABLE, arm, request_key
from control.scheduler.admission import Admission
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler


@dataclass
class CanaryArm:
    canary_id: int
    revision_id: int
    weight: float
    admission: Admission

    @property
    def sched(self) -> Scheduler:
        return self.admission.sched

    def arm_of(self, session_id: str, request_id: str, fallback: str) -> str:
        return arm(request_key(session_id, request_id, fallback), self.weight)


def build(canary_id: int, revision_id: int, weight: float, document: dict[str, Any], stable: Admission,
          specs: list[NodeSpec], samples: dict[str, Metrics], now: float) -> CanaryArm:
    sched = Scheduler(Config.from_document(document), rng=random.Random())
    sched.update(now, specs=specs, samples=samples)
    admission = Admission(sched, stable.counters)
    admission.priorities = stable.priorities
    return CanaryArm(canary_id, revision_id, weight, admission)


def link(stable: Admission, candidate: Admission | None) -> None:
    """Make each core count the other's sends (or stop, when the canary ended)."""
    stable.twin = candidate
    if candidate is not None:
        candidate.twin = stable


__all__ = ["CANARY", "STABLE", "CanaryArm", "build", "link"]
