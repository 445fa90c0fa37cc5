"""Deployment suggestions from a pool's own metrics over the last day (1-minute rollups), each with the numbers
behind it and the revision it proposes. Nothing is applied: the pool page links each suggestion to the policy
editor with the document filled in, and an operator saves it (or not).

Rules (thresholds are stated, not learned):

* KV cache pressure: the pool's KV cache was above KV_FULL_PCT in at least KV_FULL_SHARE of its node-minutes and
  its nodes preempted at least MIN_PREEMPTIONS requests. With an `auto` KV-cache dtype: FP8 KV halves the bytes per
  cached token, so the same memory holds twice the tokens. With FP8 KV already and bf16 weights: FP8 weights free
  half the weight memory for the cache (and decode faster; agents/sim/serving.py states by how much).
* Idle memory: the KV cache stayed below KV_IDLE_PCT in 95 % of node-minutes while max_model_len is below what the
  freed cache could hold: a longer max_model_len serves requests that are now refused or sent elsewhere.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from control.policy import schemas
from control.policy import service as policies

KV_FULL_PCT = 90.0
KV_FULL_SHARE = 0.2
MIN_PREEMPTIONS = 100
KV_IDLE_PCT = 30.0
WINDOW = timedelta(days=1)


@dataclass
class Suggestion:
    title: str
    evidence: list[str]
    expected: str
    change: dict[str, Any]
    document: dict[str, Any] = field(default_factory=dict)  # the whole deployment document with the change


@dataclass
class PoolStats:
    node_minutes: int
    kv_full_share: float  # share of node-minutes with the KV cache's max above KV_FULL_PCT
    kv_p95: float | None  # 95th percentile of the per-minute KV average
    preemptions: int  # summed over the nodes: the counter's rise over the window
    queue_mean: float | None
    ttft_p95_mean: float | None


def pool_stats(pool: str, now: datetime, window: timedelta = WINDOW) -> PoolStats:
    sql = """
        WITH m AS (
            SELECT s.node_id, s.kv_cache_usage_pct_avg AS kv, s.kv_cache_usage_pct_max AS kv_max,
                   s.preemptions_total_max AS pre, s.requests_waiting_avg AS q, s.ttft_p95_s_avg AS ttft
            FROM node_sample_1m s JOIN fleet_node n ON n.id = s.node_id JOIN fleet_pool p ON p.id = n.pool_id
            WHERE p.name = %s AND s.bucket > %s AND s.bucket <= %s)
        SELECT count(*), avg(CASE WHEN kv_max > %s THEN 1.0 ELSE 0.0 END),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY kv), avg(q), avg(ttft),
               (SELECT coalesce(sum(rise), 0) FROM (SELECT max(pre) - min(pre) AS rise FROM m GROUP BY node_id) r)
        FROM m"""
    with connection.cursor() as cur:
        cur.execute(sql, [pool, now - window, now, KV_FULL_PCT])
        n, full, kv95, q, ttft, pre = cur.fetchone()
    return PoolStats(int(n or 0), float(full or 0.0), None if kv95 is None else float(kv95), int(pre or 0),
                     None if q is None else float(q), None if ttft is None else float(ttft))


def advise(pool: str, now: datetime) -> list[Suggestion]:
    rev = policies.active("deployment")
    doc = schemas.validate("deployment", rev.document)
    entry = doc["pools"].get(pool)
    if entry is None:
        return []
    st = pool_stats(pool, now)
    if st.node_minutes == 0:
        return []
    out: list[Suggestion] = []
    seen = (f"KV cache above {KV_FULL_PCT:g} % in {st.kv_full_share:.0%} of the last day's {st.node_minutes:,} "
            f"node-minutes", f"{st.preemptions:,} preemptions")
    pressure = st.kv_full_share >= KV_FULL_SHARE and st.preemptions >= MIN_PREEMPTIONS
    if pressure and entry["kv_cache_dtype"] == "auto":
        out.append(Suggestion(
            "FP8 KV cache", [*seen, f"KV-cache dtype {entry['kv_cache_dtype']}"],
            "FP8 KV cache would double the tokens the cache holds: the time at a full cache and the preemptions "
            "should fall by about half or more (fewer recomputed prompts, lower TTFT under load)",
            {"kv_cache_dtype": "fp8"}))
    elif pressure and entry["quantization"] is None:
        per_gpu = entry["params_b"] / (entry["tensor_parallel_size"] * entry["pipeline_parallel_size"])
        out.append(Suggestion(
            "FP8 weights", [*seen, f"KV cache already {entry['kv_cache_dtype']}; weights bf16, "
                                   f"{per_gpu * 2:.1f} GB per GPU"],
            f"FP8 weights free {per_gpu:.1f} GB per GPU for the KV cache and decode faster; check the model's "
            "quality at FP8 first", {"quantization": "fp8"}))
    if st.kv_p95 is not None and st.kv_p95 < KV_IDLE_PCT and st.preemptions == 0 \
            and entry["max_model_len"] < 131_072:
        longer = min(131_072, entry["max_model_len"] * 2)
        out.append(Suggestion(
            f"max_model_len {longer:,}", [f"KV cache p95 {st.kv_p95:.0f} % over {st.node_minutes:,} node-minutes",
                                          "no preemptions", f"max_model_len {entry['max_model_len']:,}"],
            "the cache has room for longer contexts: requests up to twice as long would be served here instead of "
            "refused or sent to other pools", {"max_model_len": longer}))
    for s in out:
        proposed = copy.deepcopy(doc)
        proposed["pools"][pool].update(s.change)
        s.document = proposed
    return out
