"""Prefix-cache hit rates for the routing page: what the nodes' inference servers report (the agent's
`prefix_cache_hit_pct`, from vLLM's prefix-cache counters or SGLang's `cache_hit_rate`), averaged over the window.

This is the engines' own count, not the gateway's guess: it shows whether cache-aware routing (the prefix_affinity
scorer) actually lands prompts where their prefix is cached. Fleet-wide, each node's rate counts by the requests it
was routed in the window, so an idle node's rate does not move the figure.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import connection


def hit_rates(window_s: int, now: float, requests: dict[str, int]) -> tuple[dict[str, float], float | None]:
    """(node -> mean prefix_cache_hit_pct over the window, fleet-wide rate weighted by `requests` per node)."""
    since = datetime.fromtimestamp(now, UTC) - timedelta(seconds=window_s)
    with connection.cursor() as cur:
        cur.execute(
            "SELECT n.name, avg(s.prefix_cache_hit_pct) FROM node_sample s JOIN fleet_node n ON n.id = s.node_id "
            "WHERE s.ts >= %s AND s.prefix_cache_hit_pct IS NOT NULL GROUP BY n.name", [since])
        per_node = {name: round(float(pct), 2) for name, pct in cur.fetchall()}
    weighted = [(pct, requests.get(name, 0)) for name, pct in per_node.items()]
    total = sum(w for _, w in weighted)
    fleet = round(sum(p * w for p, w in weighted) / total, 2) if total else None
    return per_node, fleet
