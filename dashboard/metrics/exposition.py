"""Prometheus text exposition of every node's latest values, so an existing Prometheus/Grafana can scrape."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from agents.catalogue import GPU_METRICS, NODE_METRICS, Metric
from dashboard.fleet.liveness import status_of

PREFIX = "switchyard_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, Any]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs) + "}"


def _number(v: float | int) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def _header(m: Metric) -> list[str]:
    kind = "counter" if m.kind == "counter" else "gauge"
    return [f"# HELP {PREFIX}{m.name} {m.help} ({m.unit})", f"# TYPE {PREFIX}{m.name} {kind}"]


def render(snapshots: dict[str, dict[str, Any]], now: datetime | None = None) -> str:
    """Nodes that stopped reporting expose only switchyard_node_up 0: old numbers must not look live."""
    now = now or datetime.now(UTC)
    live = {}
    lines = ["# HELP switchyard_node_up 1 if the node reported within its stale window",
             "# TYPE switchyard_node_up gauge"]
    for name in sorted(snapshots):
        snap = snapshots[name]
        up = status_of(snap, now=now) == "up"
        lines.append(f"{PREFIX}node_up{_labels([('pool', snap.get('pool', '')), ('node', name)])} {int(up)}")
        if up:
            live[name] = snap
    lines += ["# HELP switchyard_node_last_sample_timestamp_seconds Time of the node's latest sample",
              "# TYPE switchyard_node_last_sample_timestamp_seconds gauge"]
    for name, snap in live.items():
        ts = datetime.fromisoformat(snap["ts"]).timestamp()
        lines.append(f"{PREFIX}node_last_sample_timestamp_seconds"
                     f"{_labels([('pool', snap['pool']), ('node', name)])} {ts}")
    for m in NODE_METRICS:
        section = "host" if m.scope == "host" else "inference"
        body = [
            f"{PREFIX}{m.name}{_labels([('pool', s['pool']), ('node', n)])} {_number(v)}"
            for n, s in live.items() if (v := s.get(section, {}).get(m.name)) is not None
        ]
        if body:
            lines += _header(m) + body
    for m in GPU_METRICS:
        body = [
            f"{PREFIX}{m.name}"
            f"{_labels([('pool', s['pool']), ('node', n), ('gpu', g['index']), ('uuid', g.get('uuid', ''))])}"
            f" {_number(v)}"
            for n, s in live.items() for g in s.get("gpus", []) if (v := g.get(m.name)) is not None
        ]
        if body:
            lines += _header(m) + body
    return "\n".join(lines) + "\n"
