"""/metrics/fleet's text is what prometheus_client's own exposition would write, sample for sample."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.catalogue import GPU_METRICS, NODE_METRICS
from dashboard.metrics import exposition
from tests.conftest import full_sample

NOW = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)


def snapshot(node: str, pool: str, ts: datetime, gpus: int, base: float) -> dict[str, Any]:
    s = full_sample(1, ts, gpus=gpus, base=base)
    return {"node": node, "pool": pool, "state": "active", "ts": ts.isoformat(), "seq": 1, "host": s["host"],
            "inference": s["inference"], "gpus": s["gpus"]}


def reference(snaps: dict[str, dict[str, Any]], live: set[str], gpu_metrics: tuple[Any, ...]) -> str:
    """The same data through prometheus_client's metric families and generate_latest."""
    fams: list[Metric] = []
    up = GaugeMetricFamily("switchyard_node_up", "1 if the node reported within its stale window",
                           labels=["pool", "node"])
    last = GaugeMetricFamily("switchyard_node_last_sample_timestamp_seconds", "Time of the node's latest sample",
                             labels=["pool", "node"])
    for name, snap in snaps.items():
        up.add_metric([snap["pool"], name], int(name in live))
        if name in live:
            last.add_metric([snap["pool"], name], datetime.fromisoformat(snap["ts"]).timestamp())
    fams += [up, last]
    for m in NODE_METRICS + gpu_metrics:
        cls = CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily
        labels = ["pool", "node"] + (["gpu", "uuid"] if m.scope == "gpu" else [])
        fam = cls(f"switchyard_{m.name}", f"{m.help} ({m.unit})", labels=labels)
        for name in sorted(live):
            snap = snaps[name]
            if m.scope == "gpu":
                for g in snap["gpus"]:
                    fam.add_metric([snap["pool"], name, str(g["index"]), g["uuid"]], g[m.name])
            else:
                fam.add_metric([snap["pool"], name], snap["host" if m.scope == "host" else "inference"][m.name])
        fams.append(fam)

    class Families:
        def collect(self) -> list[Metric]:
            return fams

    return generate_latest(Families()).decode()  # type: ignore[arg-type]


def parsed(text: str) -> dict[str, tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]:
    return {f.name: (f.type, f.documentation, sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                                                     for s in f.samples))
            for f in text_string_to_metric_families(text)}


def names(text: str) -> set[str]:
    """The metric names of every sample and TYPE line, as written."""
    return {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("# HELP")}


def test_the_text_equals_prometheus_clients_for_hostile_labels_and_help(monkeypatch: pytest.MonkeyPatch) -> None:
    # A help text with a backslash and a newline (the catalogue's have none today; the escaping must not depend
    # on that), and label values with every character the format escapes.
    tricky = dataclasses.replace(GPU_METRICS[0], help='GPU "utilisation" \\ in % of time\nsecond line')
    gpu_metrics = (tricky, *GPU_METRICS[1:])
    monkeypatch.setattr(exposition, "GPU_METRICS", gpu_metrics)
    snaps = {
        "gpu-a-1": snapshot("gpu-a-1", "pool-a", NOW - timedelta(seconds=3), 2, 33),
        "gpu-b-2": snapshot("gpu-b-2", "pool-b", NOW - timedelta(seconds=1), 1, 71),
        "gpu-old": snapshot("gpu-old", "pool-b", NOW - timedelta(minutes=10), 1, 5),
    }
    snaps["gpu-a-1"]["gpus"][1]["uuid"] = 'GPU-"},evil="1\\\n# TYPE x counter'
    ours = exposition.render(snaps, now=NOW)
    expected = reference(snaps, {"gpu-a-1", "gpu-b-2"}, gpu_metrics)
    assert parsed(ours) == parsed(expected)
    # The parser forgives a counter's missing _total; a scraper stores the names as written.
    assert names(ours) == names(expected)
    assert "\n# TYPE x counter" not in ours  # the newline in the uuid did not start a line of its own
