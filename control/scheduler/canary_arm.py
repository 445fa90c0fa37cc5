"""The candidate side of a running canary inside one gateway: a second scheduler core with the candidate policy,
fed the same registry and samples as the stable one, and its own admission.

Both cores count every request either arm sends (Admission.twin), so the candidate's burst correction and in-flight
scorers see the whole load on each node, not only its own share of it (a 5 % arm that saw only its own sends would
herd onto the node that looks idle to it and be judged for a fault the split made).

With a switchback control the candidate routes only in the "on" periods (split.switched_on: periods from the
canary's creation time, each on or off by a hash of the canary id and the period's index: every gateway agrees
without a timer). The requests of the canary still open here are published
every second (OPEN_KEY), so the analysis can count a request that has not ended as at least as slow as its age.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from control.canary.split import CANARY, STABLE, arm, request_key, switched_on
from control.scheduler.admission import Admission
from control.scheduler.config import Config
from control.scheduler.core import Metrics, NodeSpec, Scheduler

OPEN_KEY = "sy:canary:open:{}"  # per gateway: {canary, at, open: [[arrival ts, arm], ...]}
MAX_OPEN_PUBLISHED = 5000  # the oldest first: they are the ones a verdict may wait for


@dataclass
class CanaryArm:
    canary_id: int
    revision_id: int
    weight: float
    admission: Admission
    anchor: float = 0.0  # the canary's creation (unix time): the switchback periods count from it
    switchback_s: float = 0.0  # 0: no switchback, the candidate routes all the time
    open: dict[int, tuple[float, str]] = field(default_factory=dict)  # token -> (arrival ts, arm)
    _tokens: itertools.count = field(default_factory=itertools.count)  # type: ignore[type-arg]

    @property
    def sched(self) -> Scheduler:
        return self.admission.sched

    def arm_of(self, session_id: str, request_id: str, fallback: str, ts: float) -> str:
        """The arm of a request that arrived at unix time `ts`: stable in a switchback "off" period."""
        if not switched_on(ts, self.anchor, self.switchback_s, self.canary_id):
            return STABLE
        return arm(request_key(session_id, request_id, fallback), self.weight)

    def opened(self, ts: float, arm_name: str) -> int:
        token = next(self._tokens)
        self.open[token] = (ts, arm_name)
        return token

    def closed(self, token: int) -> None:
        self.open.pop(token, None)

    def open_doc(self, now: float) -> dict[str, Any]:
        """What OPEN_KEY holds: the canary's requests in flight through this gateway, with when they arrived."""
        oldest = sorted(self.open.values())[:MAX_OPEN_PUBLISHED]
        return {"canary": self.canary_id, "at": now, "open": [[ts, name] for ts, name in oldest]}


def build(canary_id: int, revision_id: int, weight: float, document: dict[str, Any], stable: Admission,
          specs: list[NodeSpec], samples: dict[str, Metrics], now: float, anchor: float = 0.0,
          switchback_s: float = 0.0) -> CanaryArm:
    sched = Scheduler(Config.from_document(document), rng=random.Random())
    sched.update(now, specs=specs, samples=samples)
    admission = Admission(sched, stable.counters)
    admission.priorities = stable.priorities
    return CanaryArm(canary_id, revision_id, weight, admission, anchor, switchback_s)


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


__all__ = ["CANARY", "OPEN_KEY", "STABLE", "CanaryArm", "build", "link", "prefix_config"]
