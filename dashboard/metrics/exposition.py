"""Prometheus text exposition (format 0.0.4) of every node's latest values, so an existing Prometheus/Grafana can
scrape.

Written out here with prometheus_client's own rules rather than through its `generate_latest`, which builds a
Sample object per value and was about four times slower on a 1,000-node x 8-GPU fleet (bench/exposition.py):
HELP text escapes backslash and newline, label values escape backslash, newline and double quote, numbers are
formatted by `prometheus_client.utils.floatToGoString`, and a counter is exposed as `<name>_total` (a name that
already ends in `_total` keeps it). tests/test_read_api.py checks the text against `generate_latest`'s, sample for
sample. Each label set is escaped once per node or GPU, not once per metric.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client.utils import floatToGoString

from agents.catalogue import GPU_METRICS, NODE_METRICS, Metric
from dashboard.fleet.liveness import status_of

PREFIX = "switchyard_"


def escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def escape_label(value: Any) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def family(m: Metric) -> tuple[str, str]:
    """(exposed name, type) of a catalogue metric. Events (an XID code, a count per interval) are gauges."""
    if m.kind == "counter":
        return f"{PREFIX}{m.name.removesuffix('_total')}_total", "counter"
    return f"{PREFIX}{m.name}", "gauge"


def _header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {escape_help(help_text)}", f"# TYPE {name} {kind}"]


def _labels(*pairs: tuple[str, Any]) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs) + "}"


def render(snapshots: dict[str, dict[str, Any]], now: datetime | None = None) -> str:
    """Nodes that stopped reporting expose only switchyard_node_up 0: old numbers must not look live."""
    now = now or datetime.now(UTC)
    live: list[tuple[str, dict[str, Any], str]] = []  # (node, its snapshot, its label set)
    lines = _header(f"{PREFIX}node_up", "gauge", "1 if the node reported within its stale window")
    for name in sorted(snapshots):
        snap = snapshots[name]
        labels = _labels(("pool", snap.get("pool", "")), ("node", name))
        up = status_of(snap, now=now) == "up"
        lines.append(f"{PREFIX}node_up{labels} {floatToGoString(int(up))}")
        if up:
            live.append((name, snap, labels))
    lines += _header(f"{PREFIX}node_last_sample_timestamp_seconds", "gauge", "Time of the node's latest sample")
    lines += [f"{PREFIX}node_last_sample_timestamp_seconds{labels} "
              f"{floatToGoString(datetime.fromisoformat(snap['ts']).timestamp())}" for _, snap, labels in live]
    for m in NODE_METRICS:
        section = "host" if m.scope == "host" else "inference"
        name, kind = family(m)
        body = [f"{name}{labels} {floatToGoString(v)}"
                for _, snap, labels in live if (v := (snap.get(section) or {}).get(m.name)) is not None]
        if body:
            lines += _header(name, kind, f"{m.help} ({m.unit})") + body
    gpus = [(g, _labels(("pool", snap.get("pool", "")), ("node", name), ("gpu", g.get("index", "")),
                        ("uuid", g.get("uuid", ""))))
            for name, snap, _ in live for g in snap.get("gpus") or []]
    for m in GPU_METRICS:
        name, kind = family(m)
        body = [f"{name}{labels} {floatToGoString(v)}" for g, labels in gpus if (v := g.get(m.name)) is not None]
        if body:
            lines += _header(name, kind, f"{m.help} ({m.unit})") + body
    return "\n".join(lines) + "\n"
