"""One node's history for the node page: every charted series, throttle intervals and GPU error events.

The table (raw, 1-minute or 1-hour rollup) comes from query.choose_source, so the node page and
/api/v1/metrics/query always agree on which data a range is served from. Unlike query.run, which reads one metric
per call, this reads every charted column of a table in one scan: the page needs ~30 series and a drill-down
should cost two index range scans, not thirty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection

from agents.catalogue import BY_NAME, decode_clock_reasons
from core import ranges
from core.ranges import RangeError  # noqa: F401 - the views catch it from here
from dashboard.metrics import schema
from dashboard.metrics.query import choose_source


@dataclass(frozen=True)
class Range:
    name: str
    seconds: int
    step: int  # seconds per point; picked so choose_source lands on raw (<60), 1m (<3600) or 1h


# About 180-360 points per series whatever the range.
RANGES: dict[str, Range] = {r.name: r for r in (
    Range("15m", 900, 5),
    Range("1h", 3600, 15),
    Range("6h", 6 * 3600, 60),
    Range("24h", 86400, 300),
    Range("7d", 7 * 86400, 3600),
)}
DEFAULT_RANGE = "1h"


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    scope: str  # "gpu": one trace per GPU and metric; "host" / "inference": one trace per metric
    metrics: tuple[str, ...]
    unit: str


CHARTS: tuple[Chart, ...] = (
    Chart("gpu-util", "GPU utilisation", "gpu", ("gpu_util_pct",), "percent"),
    Chart("gpu-memory", "GPU memory used", "gpu", ("fb_used_bytes",), "bytes"),
    Chart("gpu-power", "Power (dotted: limit)", "gpu", ("power_w", "power_limit_w"), "watts"),
    Chart("gpu-temp", "Temperature (dotted: HBM)", "gpu", ("temp_c", "mem_temp_c"), "celsius"),
    Chart("gpu-clocks", "Clocks (dotted: memory)", "gpu", ("sm_clock_mhz", "mem_clock_mhz"), "megahertz"),
    Chart("host-cpu", "CPU and iowait", "host", ("cpu_util_pct", "cpu_iowait_pct"), "percent"),
    Chart("host-load", "Load (1 min)", "host", ("load1",), "load"),
    Chart("host-memory", "Host memory", "host", ("mem_used_bytes", "mem_available_bytes", "swap_used_bytes"),
          "bytes"),
    Chart("host-disk", "Disk busy", "host", ("disk_busy_pct",), "percent"),
    Chart("host-disk-io", "Disk throughput", "host", ("disk_read_bytes_s", "disk_write_bytes_s"), "bytes_per_second"),
    Chart("host-net", "Network", "host", ("net_rx_bytes_s", "net_tx_bytes_s"), "bytes_per_second"),
    Chart("host-rtt", "RTT to Switchyard", "host", ("net_rtt_ms",), "milliseconds"),
    Chart("inf-requests", "Requests running / waiting", "inference", ("requests_running", "requests_waiting"), "count"),
    Chart("inf-kv", "KV cache", "inference", ("kv_cache_usage_pct",), "percent"),
    Chart("inf-prefix", "Prefix-cache hits", "inference", ("prefix_cache_hit_pct",), "percent"),
    Chart("inf-ttft", "Time to first token", "inference", ("ttft_p50_s", "ttft_p95_s"), "seconds"),
    Chart("inf-tokens", "Tokens/s", "inference", ("generation_tokens_s", "prompt_tokens_s"), "tokens_per_second"),
    Chart("inf-e2e", "End-to-end latency p95", "inference", ("e2e_p95_s",), "seconds"),
)
GPU_SERIES: tuple[str, ...] = tuple(dict.fromkeys(m for c in CHARTS if c.scope == "gpu" for m in c.metrics))
NODE_SERIES: tuple[str, ...] = tuple(dict.fromkeys(m for c in CHARTS if c.scope != "gpu" for m in c.metrics))
MAX_EVENTS = 2000


def parse_range(value: str | None) -> Range:
    return ranges.parse_range(value, RANGES, DEFAULT_RANGE)


def _value_expr(table: schema.Table, name: str) -> str:
    if table.resolution == "raw":
        return f"avg({name})"
    # Same weighting as query.run: a bucket average counts for the samples in it.
    return f"sum({name}_avg * n) / NULLIF(sum(CASE WHEN {name}_avg IS NULL THEN 0 ELSE n END), 0)"


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def _series(table: schema.Table, names: tuple[str, ...], node_id: int, start: datetime, end: datetime,
            step: int) -> list[tuple[Any, ...]]:
    keys = ", ".join(table.key_cols[1:] + ("t",))  # node_id is fixed by the WHERE
    values = ", ".join(_value_expr(table, n) for n in names)
    sql = (
        f"SELECT {keys}, {values} FROM (SELECT *, date_bin(%s, {table.time_col}, TIMESTAMPTZ '2000-01-01') AS t "
        f"FROM {table.name} WHERE node_id = %s AND {table.time_col} >= %s AND {table.time_col} < %s) s "
        f"GROUP BY {keys} ORDER BY {keys}"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [timedelta(seconds=step), node_id, start, end])
        return cur.fetchall()


def gpu_series(table: schema.Table, node_id: int, start: datetime, end: datetime, step: int) -> list[dict[str, Any]]:
    """[{index, t: [...], series: {metric: [...]}}] — columnar, so the page hands arrays straight to Plotly."""
    out: dict[int, dict[str, Any]] = {}
    for row in _series(table, GPU_SERIES, node_id, start, end, step):
        gpu, t, values = row[0], row[1], row[2:]
        g = out.get(gpu)
        if g is None:
            g = out[gpu] = {"index": gpu, "t": [], "series": {n: [] for n in GPU_SERIES}}
        g["t"].append(t.isoformat())
        for name, v in zip(GPU_SERIES, values, strict=True):
            g["series"][name].append(_num(v))
    return [out[k] for k in sorted(out)]


def node_series(table: schema.Table, node_id: int, start: datetime, end: datetime, step: int) -> dict[str, Any]:
    t: list[str] = []
    series: dict[str, list[float | None]] = {n: [] for n in NODE_SERIES}
    for row in _series(table, NODE_SERIES, node_id, start, end, step):
        t.append(row[0].isoformat())
        for name, v in zip(NODE_SERIES, row[1:], strict=True):
            series[name].append(_num(v))
    return {"t": t, "series": series}


def _event_rows(node_id: int, start: datetime, end: datetime, step: int, raw: bool) -> list[tuple[Any, ...]]:
    """Per GPU and bucket: OR of throttle bits, XIDs seen, last XID code, ECC counters, remap pending."""
    if raw:
        table, tcol = schema.RAW_GPU.name, "ts"
        cols = ("bit_or(clocks_event_reasons), sum(xid_count), "
                "(array_agg(xid_last ORDER BY ts DESC) FILTER (WHERE xid_count > 0))[1], "
                "max(ecc_corrected_total), max(ecc_uncorrected_total), max(remapped_rows_uncorrectable), "
                "max(row_remap_pending)")
    else:
        # Past raw retention only the rollups are left: bucket maxima. The max of a bitmask is not the OR of its
        # bits, so throttle words read from here are approximate; the response says which source events came from.
        table, tcol = schema.GPU_1H.name, "bucket"
        cols = ("max(clocks_event_reasons_max), round(sum(xid_count_avg * n)), max(xid_last_max), "
                "max(ecc_corrected_total_max), max(ecc_uncorrected_total_max), "
                "max(remapped_rows_uncorrectable_max), max(row_remap_pending_max)")
    sql = (
        f"SELECT gpu, t, {cols} FROM (SELECT *, date_bin(%s, {tcol}, TIMESTAMPTZ '2000-01-01') AS t "
        f"FROM {table} WHERE node_id = %s AND {tcol} >= %s AND {tcol} < %s) s GROUP BY gpu, t ORDER BY gpu, t"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [timedelta(seconds=step), node_id, start, end])
        return cur.fetchall()


def events(node_id: int, start: datetime, end: datetime, step: int, now: datetime) -> dict[str, Any]:
    """Throttle intervals (consecutive buckets with the same reasons merged) and GPU error events."""
    raw = start >= now - timedelta(days=settings.RETENTION_RAW_DAYS)
    rows = _event_rows(node_id, start, end, step, raw)
    bucket = timedelta(seconds=step)
    throttle: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    open_: dict[int, dict[str, Any]] = {}
    prev: dict[int, tuple[Any, ...]] = {}
    for gpu, t, mask, xids, xid_last, ecc_c, ecc_u, remapped, pending in rows:
        mask = int(mask or 0)
        cur = open_.get(gpu)
        if cur is not None and (cur["mask"] != mask or cur["_end"] != t):
            throttle.append(open_.pop(gpu))
            cur = None
        if mask and cur is None:
            cur = open_[gpu] = {"gpu": gpu, "from": t.isoformat(), "mask": mask,
                                "reasons": decode_clock_reasons(mask), "_end": t}
        if cur is not None:
            cur["_end"] = t + bucket
            cur["to"] = cur["_end"].isoformat()
        ts = t.isoformat()
        if xids:
            code = None if xid_last is None else int(xid_last)
            found.append({"ts": ts, "gpu": gpu, "kind": "xid", "value": int(xids), "code": code,
                          "text": f"XID {code if code is not None else '?'} ×{int(xids)}"})
        before = prev.get(gpu)
        for i, (kind, label, value) in enumerate((
            ("ecc_corrected", "ECC corrected", ecc_c),
            ("ecc_uncorrected", "ECC uncorrected", ecc_u),
            ("rows_remapped", "rows remapped (uncorrectable)", remapped),
        )):
            # Volatile counters: an event is a rise from the previous bucket. The first bucket has no "before",
            # and a drop (driver reload) starts a new baseline rather than an event.
            old = before[i] if before else None
            if value is not None and old is not None and value > old:
                found.append({"ts": ts, "gpu": gpu, "kind": kind, "value": int(value - old), "total": int(value),
                              "text": f"{label} +{int(value - old)} (total {int(value)})"})
        was_pending = before[3] if before else 0
        if pending and not was_pending:
            found.append({"ts": ts, "gpu": gpu, "kind": "row_remap_pending", "value": 1,
                          "text": "row remap pending: GPU reset needed"})
        prev[gpu] = (ecc_c if ecc_c is not None else (before[0] if before else None),
                     ecc_u if ecc_u is not None else (before[1] if before else None),
                     remapped if remapped is not None else (before[2] if before else None),
                     pending or 0)
    throttle.extend(open_.values())
    for item in throttle:
        del item["_end"]
    throttle.sort(key=lambda i: (i["from"], i["gpu"]))
    found.sort(key=lambda e: (e["ts"], e["gpu"]))
    return {
        "events_source": "raw" if raw else "1h",
        "throttle": throttle[-MAX_EVENTS:],
        "events": found[-MAX_EVENTS:],
        "truncated": len(throttle) > MAX_EVENTS or len(found) > MAX_EVENTS,
    }


# Audit actions on a node that change what it is asked to do: drawn as vertical lines on every chart.
NODE_ACTIONS = ("node.drain", "node.cordon", "node.uncordon", "node.join", "node.remove")


def node_actions(name: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Drains, cordons, uncordons, joins and removals of the node in [start, end), oldest first, with who and why."""
    from core.audit.models import AuditEvent

    rows = (AuditEvent.objects.filter(target=f"node:{name}", action__in=NODE_ACTIONS, time__gte=start,
                                      time__lt=end).order_by("-time", "-id")
            .values_list("time", "action", "actor", "reason")[:MAX_EVENTS])
    return [{"ts": t.isoformat(), "action": action.split(".", 1)[1], "actor": actor, "reason": reason}
            for t, action, actor, reason in reversed(list(rows))]


def to_csv(doc: dict[str, Any]) -> str:
    """The history as CSV, one row per point and series: time, gpu (empty for host and inference), metric, value."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time", "gpu", "metric", "value"])
    for g in doc["gpu_series"]:
        for name, values in g["series"].items():
            for t, v in zip(g["t"], values, strict=True):
                w.writerow([t, g["index"], name, "" if v is None else v])
    s = doc["node_series"]
    for name, values in s["series"].items():
        for t, v in zip(s["t"], values, strict=True):
            w.writerow([t, "", name, "" if v is None else v])
    return buf.getvalue()


def history(node_id: int, rng: Range, now: datetime | None = None, name: str | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    start = now - timedelta(seconds=rng.seconds)
    end = now + timedelta(seconds=1)  # include a sample stamped this very second
    gpu_table, step = choose_source(BY_NAME["gpu_util_pct"], rng.step, start, now)
    node_table, _ = choose_source(BY_NAME["cpu_util_pct"], rng.step, start, now)
    return {
        "range": rng.name,
        "from": start.isoformat(),
        "to": now.isoformat(),
        "source": gpu_table.resolution,
        "tables": {"gpu": gpu_table.name, "node": node_table.name},
        "step": step,
        "units": {n: BY_NAME[n].unit for n in GPU_SERIES + NODE_SERIES},
        "gpu_series": gpu_series(gpu_table, node_id, start, end, step),
        "node_series": node_series(node_table, node_id, start, end, step),
        **events(node_id, start, end, step, now),
        "node_actions": node_actions(name, start, end) if name is not None else [],
    }
