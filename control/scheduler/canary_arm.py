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


def prefix_config(stable: Config, candidate: Config | None, arm_name: str) -> Config | None:
    """Whose prefix settings a request's block keys are cut with, or None when neither core routes by prefix.

    The arm's own core first (it picks the node by them). Otherwise the other core's, when it routes by prefix:
    it counts this arm's sends too (Admission.twin), so its prefix index must learn where they went. Keying on the
    stable policy alone left a candidate with prefix_affinity blind while the stable policy had none."""
    own, other = (candidate, stable) if arm_name == CANARY and candidate is not None else (stable, candidate)
    for cfg in (own, other):
        if cfg is not None and cfg.uses_prefix:
            return cfg
    return None


def link(stable: Admission, candidate: Admission | None) -> None:
    """Make each core count the other's sends (or stop, when the canary ended)."""
    stable.twin = candidate
    if candidate is not None:
        candidate.twin = stable


__all__ = ["CANARY", "STABLE", "CanaryArm", "build", "link", "prefix_config"]
