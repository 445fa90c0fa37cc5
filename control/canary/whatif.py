"""What a scheduler document would do to the live fleet now, beside the active one.

Both documents go through the scheduler core the gateway runs (control.scheduler.core), fed the same inputs: the
node registry, every node's latest sample (Redis `sy:latest`) and, where gateways publish them, their live
in-flight counts (`sy:gw:state:<id>`), and the seconds per request slot they measured
for expected_wait. The predicted share is what that core does with the next `requests`
requests when nothing finishes in between: it picks, counts the send (so burst correction and the in_flight /
expected_wait scorers move as they would) and picks again. Nothing is stored.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from control.policy import service
from control.policy.schemas import validate
from control.scheduler import sources
from control.scheduler.config import Config
from control.scheduler.core import Metrics, Scheduler, metrics_from_snapshot
from dashboard.metrics.latest import all_latest, redis_client

STATE_PATTERN = "sy:gw:state:*"
MAX_REQUESTS = 1000
DEFAULT_REQUESTS = 100


@dataclass
class Inputs:
    """What both documents are scored on."""

    specs: list[Any]
    samples: dict[str, Metrics]
    in_flight: dict[str, int] = field(default_factory=dict)  # summed over the gateways
    slot_s: dict[str, float] = field(default_factory=dict)  # expected_wait's seconds per slot, median of gateways


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else None


def live_gateways() -> tuple[dict[str, int], dict[str, float]]:
    """(node -> requests in flight summed over the gateways, node -> median of their measured seconds per slot),
    from the state the gateways published in the last seconds."""
    r = redis_client()
    in_flight: Counter[str] = Counter()
    slots: dict[str, list[float]] = {}
    keys = list(r.scan_iter(STATE_PATTERN, count=100))
    for raw in r.mget(keys) if keys else []:
        try:
            state = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            continue
        rows = state.get("nodes") if isinstance(state, dict) else None
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not isinstance(row.get("node"), str):
                continue
            n = _number(row.get("in_flight"))
            if n is not None:
                in_flight[row["node"]] += int(n)
            slot = _number(row.get("slot_s"))
            if slot:
                slots.setdefault(row["node"], []).append(slot)
    return dict(in_flight), {k: sorted(v)[len(v) // 2] for k, v in slots.items()}


def snapshot() -> Inputs:
    samples = {}
    for name, snap in all_latest().items():
        m = metrics_from_snapshot(snap) if isinstance(snap, dict) else None
        if m is not None:
            samples[name] = m
    in_flight, slot_s = live_gateways()
    return Inputs(sources.registry(), samples, in_flight, slot_s)


def _pick_model(sched: Scheduler, model: str | None) -> str:
    if model:
        return model
    groups = sorted(sched.groups.values(), key=lambda g: (-len(g.members), g.model))
    return groups[0].model if groups else ""


def evaluate(document: dict[str, Any], inputs: Inputs, model: str | None, requests: int, now: float,
             seed: int = 0) -> dict[str, Any]:
    """One document on the inputs: each node's score now, and its share of the next `requests` picks."""
    sched = Scheduler(Config.from_document(document), rng=random.Random(seed))
    sched.update(now, specs=inputs.specs, samples=inputs.samples)
    for name, slot in inputs.slot_s.items():
        if name in sched.nodes:
            sched.nodes[name].slot_s = slot
    if inputs.slot_s:
        sched.recompute(now)  # the fleet median and scale of expected_wait from the measured speeds
    rid = 0
    for name, n in inputs.in_flight.items():
        node = sched.nodes.get(name)
        if node is None:
            continue
        for _ in range(min(n, 10_000)):
            rid += 1
            # Sent when its sample was taken: in flight (in_flight / expected_wait see it) but already seen by
            # the sample (no burst correction for it).
            sched.sent(node, -rid, node.metrics.ts if node.metrics else now)
    rows = {row["node"]: row for row in sched.describe(now)}
    chosen = _pick_model(sched, model)
    picks: Counter[str] = Counter()
    verdict = "ok"
    for i in range(requests):
        pick = sched.pick(chosen)
        if pick.node is None:
            verdict = pick.verdict
            break
        picks[pick.node.name] += 1
        sched.sent(pick.node, i + 1, now)
    routed = sum(picks.values())
    nodes = []
    for name in sorted(rows):
        row = rows[name]
        nodes.append({**row, "share": round(picks[name] / requests, 4) if requests else 0.0,
                      "predicted_requests": picks[name]})
    return {"model": chosen, "routed": routed, "unrouted": requests - routed,
            "unrouted_reason": "" if routed == requests else verdict, "nodes": nodes}


def whatif(document: Any, model: str | None = None, requests: int = DEFAULT_REQUESTS) -> dict[str, Any]:
    """The candidate `document` (validated: DocumentError names the bad field) against the active revision."""
    candidate = validate("scheduler", document)
    current = service.active("scheduler")
    active_doc = validate("scheduler", current.document)
    inputs = snapshot()
    now = time.time()
    ages = [now - m.ts for m in inputs.samples.values()]
    a = evaluate(active_doc, inputs, model, requests, now)
    b = evaluate(candidate, inputs, model or a["model"], requests, now)
    return {
        "active_revision": current.pk, "requests": requests, "model": a["model"],
        "snapshot_age_s": round(min(ages), 3) if ages else None,
        "live_in_flight": sum(inputs.in_flight.values()),
        "measured_speeds": len(inputs.slot_s),
        "active": a, "candidate": b,
        "shift": round(sum(abs(x["share"] - y["share"]) for x, y in zip(a["nodes"], b["nodes"], strict=True)) / 2,
                       4),
    }
