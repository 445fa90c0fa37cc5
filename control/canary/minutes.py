"""The routing minute aggregates of a canary, per arm: folded from the request log by the routing aggregator in
the same transaction as its own rows (so exactly once too), read by the canary page's charts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import connection

from control.canary.models import ArmMinute, Canary
from control.routing import histogram, reqlog
from control.routing.upsert import additive_upsert

_UPSERT = additive_upsert(
    ArmMinute._meta.db_table, ("minute", "canary_id", "arm"),
    ("requests", "status_2xx", "status_4xx", "status_429", "status_5xx", "good"), ("latency_buckets", "ttft_buckets"))


def fold(entries: list[reqlog.Entry]) -> int:
    """Upsert the minute rows of the entries that carry an arm; returns how many rows were written."""
    tagged = [e for e in entries if e.arm in ("canary", "stable") and e.canary is not None]
    if not tagged:
        return 0
    bounds = dict(Canary.objects.filter(pk__in={e.canary for e in tagged}).values_list("pk", "analysis"))
    rows: dict[tuple[int, int, str], dict[str, Any]] = {}
    for e in tagged:
        if e.canary not in bounds:  # a canary id that was never stored: nothing to attach the row to
            continue
        row = rows.setdefault((e.minute, e.canary, e.arm), {
            "requests": 0, "2xx": 0, "4xx": 0, "429": 0, "5xx": 0, "good": 0,
            "latency": histogram.empty(), "ttft": histogram.empty()})
        row["requests"] += 1
        cls = reqlog.status_class(e.status)
        if cls in row:
            row[cls] += 1
        if e.latency_ms is not None:
            histogram.add(row["latency"], e.latency_ms)
        if e.ttft_ms is not None:
            histogram.add(row["ttft"], e.ttft_ms)
        limit = bounds[e.canary].get("goodput_ttft_ms", 2000)
        if cls == "2xx" and (e.ttft_ms if e.ttft_ms is not None else e.latency_ms or 0.0) <= limit:
            row["good"] += 1
    params = [(datetime.fromtimestamp(minute, UTC), cid, arm, r["requests"], r["2xx"], r["4xx"], r["429"],
               r["5xx"], r["good"], r["latency"], r["ttft"]) for (minute, cid, arm), r in sorted(rows.items())]
    with connection.cursor() as cur:
        cur.executemany(_UPSERT, params)
    return len(params)


def series(canary: Canary) -> dict[str, list[dict[str, Any]]]:
    """Per arm, one point per minute: requests, p95 latency and TTFT, error and 429 rates, goodput."""
    out: dict[str, list[dict[str, Any]]] = {"stable": [], "canary": []}
    for m in ArmMinute.objects.filter(canary=canary).order_by("minute"):
        n = m.requests or 1
        out.setdefault(m.arm, []).append({
            "minute": m.minute.isoformat(), "requests": m.requests,
            "p95_latency_ms": histogram.percentile(m.latency_buckets, 0.95),
            "p95_ttft_ms": histogram.percentile(m.ttft_buckets, 0.95),
            "error_rate": m.status_5xx / n, "rate_429": m.status_429 / n, "goodput": m.good / n})
    return out
