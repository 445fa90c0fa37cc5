"""What the routing page shows: live shares, scores, percentiles over a recent window, and minute-row queries.

The live window (60/300/900 s) is read from the stream itself (the aggregator keeps 15 minutes of it), so the
numbers are exact and current to the request; scores come from every live gateway's `sy:gw:state:<id>` key.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import orjson

from control.routing import histogram, reqlog
from control.routing.models import RequestMinute
from dashboard.metrics.latest import redis_client

WINDOWS = (60, 300, 900)
MAX_ENTRIES = 100_000  # newest first; beyond this the window is cut short and `truncated` says so
CACHE_TTL_MS = 1000  # every open page polls every 2 s: one computation per second serves them all


def gateway_states() -> list[dict[str, Any]]:
    client = redis_client()
    keys = sorted(client.scan_iter(match=f"{reqlog.STATE_PREFIX}*", count=200))
    out = []
    for raw in client.mget(keys) if keys else []:
        state = reqlog.decode_state(raw) if raw is not None else None  # expired between SCAN and MGET: gone
        if state is not None:
            out.append(state)
    return out


def window_entries(window: int, now: float) -> tuple[list[reqlog.Entry], bool, int]:
    """Entries of the last `window` seconds, newest first; (entries, truncated, malformed count)."""
    raw = redis_client().xrevrange(reqlog.STREAM, max="+", min=reqlog.stream_id_at(now - window),
                                   count=MAX_ENTRIES)
    entries, bad = [], 0
    for eid, fields in raw:
        try:
            e = reqlog.parse(eid, fields)
        except (ValueError, OverflowError):
            bad += 1
            continue
        if e.ts >= now - window:
            entries.append(e)
    return entries, len(raw) == MAX_ENTRIES, bad


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def summary(window: int) -> dict[str, Any]:
    client = redis_client()
    key = f"sy:routing:summary:{window}"
    cached = client.get(key)
    if cached is not None:
        return orjson.loads(cached)
    result = compute(window, time.time())
    client.set(key, orjson.dumps(result), px=CACHE_TTL_MS)
    return result


def compute(window: int, now: float) -> dict[str, Any]:
    entries, truncated, malformed = window_entries(window, now)
    states = gateway_states()
    total = len(entries)
    per_node: dict[str, dict[str, Any]] = {}
    per_class: dict[str, dict[str, Any]] = {}
    totals = {"requests": total, "status_2xx": 0, "status_4xx": 0, "status_429": 0, "status_5xx": 0,
              "retries": 0, "cache_hits": 0, "cache_misses": 0, "errors": 0}
    for e in entries:
        sc = reqlog.status_class(e.status)
        if sc in ("2xx", "4xx", "429", "5xx"):
            totals[f"status_{sc}"] += 1
        totals["retries"] += e.retries
        totals["cache_hits"] += e.cache == "hit"
        totals["cache_misses"] += e.cache == "miss"
        totals["errors"] += bool(e.error)
        if e.node:
            n = per_node.setdefault(e.node, {"node": e.node, "pool": e.pool, "requests": 0, "errors": 0,
                                             "latency": histogram.empty()})
            n["requests"] += 1
            n["errors"] += sc == "5xx"
            if e.latency_ms is not None:
                histogram.add(n["latency"], e.latency_ms)
        c = per_class.setdefault(e.request_class, {"class": e.request_class, "requests": 0, "status_429": 0,
                                                    "retries": 0, "latency": histogram.empty(),
                                                    "ttft": histogram.empty()})
        c["requests"] += 1
        c["status_429"] += sc == "429"
        c["retries"] += e.retries
        if e.latency_ms is not None:
            histogram.add(c["latency"], e.latency_ms)
        if e.ttft_ms is not None:
            histogram.add(c["ttft"], e.ttft_ms)

    routed = sum(n["requests"] for n in per_node.values())
    nodes = _merge_scores(per_node, states, routed, now)
    classes = [{"class": c["class"], "requests": c["requests"], "status_429": c["status_429"],
                "retries": c["retries"], "latency_ms": histogram.percentiles(c["latency"]),
                "ttft_ms": histogram.percentiles(c["ttft"])}
               for c in sorted(per_class.values(), key=lambda c: -c["requests"])]
    quarantined_now = sorted({n["node"] for n in nodes if n["quarantined"]})
    gateways = [{"id": s.get("id"), "ts": s.get("ts"), "policy": s.get("policy") or {},
                 "saturated": bool(s.get("saturated")), "queues": s.get("queues") or {},
                 "counters": s.get("counters") or {}} for s in states]
    hits, misses = totals["cache_hits"], totals["cache_misses"]
    return {
        "window_s": window,
        "now": now,
        "truncated": truncated,
        "malformed": malformed,
        "totals": {**totals, "rps": round(total / window, 3), "routed": routed,
                   "cache_hit_rate": _rate(hits, hits + misses),
                   "quarantined_nodes": len(quarantined_now),
                   "quarantines_total": sum(int((s.get("counters") or {}).get("quarantines") or 0)
                                            for s in states)},
        "quarantined": quarantined_now,
        "nodes": nodes,
        "classes": classes,
        "gateways": gateways,
        "scorers": sorted({p for n in nodes for p in (n["parts"] or {})}),
    }


def _merge_scores(per_node: dict[str, dict[str, Any]], states: list[dict[str, Any]], routed: int,
                  now: float) -> list[dict[str, Any]]:
    """One row per node seen in the window or in any gateway's state. With several gateways, the score and its parts
    come from the freshest gateway's view (they all score the same metrics with the same policy); in-flight counts
    add up and a quarantine in any gateway shows."""
    views: dict[str, list[tuple[float, str, dict[str, Any]]]] = defaultdict(list)
    for s in states:
        for n in s.get("nodes") or []:
            if isinstance(n, dict) and n.get("node"):
                views[str(n["node"])].append((float(s.get("ts") or 0), str(s.get("id") or ""), n))
    rows = []
    for name in sorted(set(per_node) | set(views)):
        seen = per_node.get(name)
        vs = sorted(views.get(name, []), key=lambda v: -v[0])
        best = vs[0][2] if vs else {}
        quarantined_until = max((float(v[2]["quarantined_until"]) for v in vs
                                 if v[2].get("quarantined_until") is not None), default=None)
        requests = seen["requests"] if seen else 0
        rows.append({
            "node": name,
            "pool": (seen or {}).get("pool") or best.get("pool") or "",
            "requests": requests,
            "share": round(requests / routed, 4) if routed else 0.0,
            "errors_5xx": seen["errors"] if seen else 0,
            "latency_ms": histogram.percentiles(seen["latency"]) if seen else histogram.percentiles([]),
            "score": best.get("score"),
            "parts": best.get("parts") or {},
            "eligible": best.get("eligible") if vs else None,
            "reason": best.get("reason") or ("" if vs else "not in any gateway's state"),
            "in_flight": sum(int(v[2].get("in_flight") or 0) for v in vs),
            "quarantined_until": quarantined_until,
            "quarantined": quarantined_until is not None and quarantined_until > now,
            "gateway": vs[0][1] if vs else None,
        })
    return rows


def minutes(start: datetime, end: datetime, node: str | None, request_class: str | None,
            limit: int) -> dict[str, Any]:
    """Minute rows in [start, end) with their own percentiles, plus the merged totals over all of them."""
    qs = RequestMinute.objects.filter(minute__gte=start, minute__lt=end)
    if node is not None:
        qs = qs.filter(node=node)
    if request_class is not None:
        qs = qs.filter(request_class=request_class)
    rows = list(qs.order_by("minute", "node", "request_class")[: limit + 1])
    truncated = len(rows) > limit
    rows = rows[:limit]
    counters = ("requests", "status_2xx", "status_4xx", "status_429", "status_5xx", "retries", "cache_hits",
                "cache_misses", "prompt_tokens", "completion_tokens")
    total: dict[str, Any] = {k: sum(getattr(r, k) for r in rows) for k in counters}
    total["latency_ms"] = histogram.percentiles(histogram.merge(r.latency_buckets for r in rows))
    total["ttft_ms"] = histogram.percentiles(histogram.merge(r.ttft_buckets for r in rows))
    total["cache_hit_rate"] = _rate(total["cache_hits"], total["cache_hits"] + total["cache_misses"])
    return {
        "from": start, "to": end, "truncated": truncated, "total": total,
        "rows": [{"minute": r.minute, "node": r.node, "pool": r.pool, "class": r.request_class,
                  **{k: getattr(r, k) for k in counters},
                  "latency_ms_mean": (round(r.latency_ms_sum / sum(r.latency_buckets), 1)
                                      if sum(r.latency_buckets) else None),
                  "latency_ms": histogram.percentiles(r.latency_buckets),
                  "ttft_ms": histogram.percentiles(r.ttft_buckets)} for r in rows],
    }
