"""What the routing page shows: live shares, scores, percentiles over a recent window, and minute-row queries.

The live window (60/300/900 s) is read from the stream itself (the aggregator keeps 15 minutes of it), in 10-second
slots by stream id (the time Redis took the entry, within a second of the request's end). A slot that is over is
folded once and cached in Redis (`sy:routing:slot:<start>`), so a poll reads only the current slot's entries and
merges the cached ones: parsing 15 minutes of a busy log on every poll would cost seconds. Scores come from every
live gateway's `sy:gw:state:<id>` key.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import orjson

from control.routing import histogram, prefix_hits, reqlog
from control.routing.models import RequestMinute
from dashboard.metrics.latest import redis_client

WINDOWS = (60, 300, 900)
SLOT_S = 10
SETTLE_S = 2  # a slot is cached once it ended this long ago (gateways flush their log a few times a second)
MAX_SLOT_ENTRIES = 50_000  # 5000 requests/s; beyond that a slot is cut short and `truncated` says so
SLOT_PREFIX = "sy:routing:slot:"
CACHE_TTL_MS = 1000  # every open page polls every 2 s: one computation per second serves them all
TOTAL_KEYS = ("status_2xx", "status_4xx", "status_429", "status_5xx", "retries", "cache_hits", "cache_misses",
              "errors")


def gateway_states() -> list[dict[str, Any]]:
    client = redis_client()
    keys = sorted(client.scan_iter(match=f"{reqlog.STATE_PREFIX}*", count=200))
    out = []
    for raw in client.mget(keys) if keys else []:
        state = reqlog.decode_state(raw) if raw is not None else None  # expired between SCAN and MGET: gone
        if state is not None:
            out.append(state)
    return out


def _sparse(counts: dict[str, int], value: float | None) -> None:
    if value is not None:
        b = str(histogram.bucket_of(value))
        counts[b] = counts.get(b, 0) + 1


def fold_slot(entries: list[reqlog.Entry]) -> dict[str, Any]:
    """One slot's figures (histograms sparse: bucket -> count), JSON-ready."""
    totals = dict.fromkeys(TOTAL_KEYS, 0) | {"requests": 0}
    nodes: dict[str, dict[str, Any]] = {}
    classes: dict[str, dict[str, Any]] = {}
    for e in entries:
        sc = reqlog.status_class(e.status)
        totals["requests"] += 1
        if sc != "other":
            totals[f"status_{sc}"] += 1
        totals["retries"] += e.retries
        totals["cache_hits"] += e.cache == "hit"
        totals["cache_misses"] += e.cache == "miss"
        totals["errors"] += bool(e.error)
        if e.node:
            n = nodes.setdefault(e.node, {"pool": e.pool, "requests": 0, "errors": 0, "latency": {}})
            n["requests"] += 1
            n["errors"] += sc == "5xx"
            _sparse(n["latency"], e.latency_ms)
        c = classes.setdefault(e.request_class, {"requests": 0, "status_429": 0, "retries": 0, "latency": {},
                                                 "ttft": {}})
        c["requests"] += 1
        c["status_429"] += sc == "429"
        c["retries"] += e.retries
        _sparse(c["latency"], e.latency_ms)
        _sparse(c["ttft"], e.ttft_ms)
    return {"totals": totals, "nodes": nodes, "classes": classes}


def read_slot(start: int) -> dict[str, Any]:
    """Fold the stream entries whose ids fall in [start, start + SLOT_S) seconds."""
    raw = redis_client().xrange(reqlog.STREAM, min=f"{start * 1000}", max=f"{(start + SLOT_S) * 1000 - 1}",
                                count=MAX_SLOT_ENTRIES)
    entries, bad = [], 0
    for eid, fields in raw:
        try:
            entries.append(reqlog.parse(eid, fields))
        except (ValueError, OverflowError):
            bad += 1
    slot = fold_slot(entries)
    slot["malformed"] = bad
    slot["truncated"] = len(raw) == MAX_SLOT_ENTRIES
    return slot


def window_slots(window: int, now: float) -> tuple[list[dict[str, Any]], float]:
    """The slots covering the last `window` seconds (aligned down to a slot: up to SLOT_S more) and the span."""
    client = redis_client()
    current = int(now // SLOT_S * SLOT_S)
    starts = list(range(current - window, current + SLOT_S, SLOT_S))
    cached = client.mget([f"{SLOT_PREFIX}{s}" for s in starts])
    slots = []
    for start, raw in zip(starts, cached, strict=True):
        if raw is not None:
            slots.append(orjson.loads(raw))
            continue
        slot = read_slot(start)
        if start + SLOT_S + SETTLE_S <= now:  # over: its entries will not change, keep it for later polls
            client.set(f"{SLOT_PREFIX}{start}", orjson.dumps(slot), ex=max(WINDOWS) + 60)
        slots.append(slot)
    return slots, now - starts[0]


def _dense(sparse: dict[str, int], into: list[int]) -> None:
    for b, c in sparse.items():
        into[int(b)] += c


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
    slots, span = window_slots(window, now)
    states = gateway_states()
    totals = dict.fromkeys(TOTAL_KEYS, 0) | {"requests": 0}
    per_node: dict[str, dict[str, Any]] = {}
    per_class: dict[str, dict[str, Any]] = {}
    for slot in slots:
        for k, v in slot["totals"].items():
            totals[k] += v
        for name, n in slot["nodes"].items():
            acc = per_node.setdefault(name, {"node": name, "pool": n["pool"], "requests": 0, "errors": 0,
                                             "latency": histogram.empty()})
            acc["requests"] += n["requests"]
            acc["errors"] += n["errors"]
            _dense(n["latency"], acc["latency"])
        for name, c in slot["classes"].items():
            acc = per_class.setdefault(name, {"class": name, "requests": 0, "status_429": 0, "retries": 0,
                                              "latency": histogram.empty(), "ttft": histogram.empty()})
            for k in ("requests", "status_429", "retries"):
                acc[k] += c[k]
            _dense(c["latency"], acc["latency"])
            _dense(c["ttft"], acc["ttft"])

    routed = sum(n["requests"] for n in per_node.values())
    nodes = _merge_scores(per_node, states, routed, now)
    node_hits, fleet_hits = prefix_hits.hit_rates(window, now, {n["node"]: n["requests"] for n in nodes})
    for n in nodes:
        n["prefix_cache_hit_pct"] = node_hits.get(n["node"])
    classes = [{"class": c["class"], "requests": c["requests"], "status_429": c["status_429"],
                "retries": c["retries"], "latency_ms": histogram.percentiles(c["latency"]),
                "ttft_ms": histogram.percentiles(c["ttft"])}
               for c in sorted(per_class.values(), key=lambda c: (-c["requests"], c["class"]))]
    quarantined_now = sorted({n["node"] for n in nodes if n["quarantined"]})
    gateways = [{"id": s.get("id"), "ts": s.get("ts"), "policy": s.get("policy") or {},
                 "saturated": bool(s.get("saturated")), "queues": s.get("queues") or {},
                 "counters": s.get("counters") or {}} for s in states]
    hits, misses = totals["cache_hits"], totals["cache_misses"]
    return {
        "window_s": window,
        "span_s": round(span, 1),
        "now": now,
        "truncated": any(s["truncated"] for s in slots),
        "malformed": sum(s["malformed"] for s in slots),
        "totals": {**totals, "rps": round(totals["requests"] / span, 3) if span > 0 else 0.0, "routed": routed,
                   "cache_hit_rate": _rate(hits, hits + misses),
                   "prefix_hit_pct": fleet_hits,
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
