"""The fleet's minute: one row per minute summarising every GPU and node, for the overview's trend panels.

The overview asks "how did the whole fleet do over the last hour / day / week". Answering that from the per-GPU
rollups means reading every GPU's rows (8,000 GPUs x 1,440 minutes a day); this table holds one row per minute,
so a 7-day panel reads 10,080 rows whatever the fleet size. It is written by rollups.aggregate("1m") in the same
transaction as the minute rollups it is computed from, so late samples (which re-aggregate their minute) update it
too, and it never disagrees with them.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection

TABLE = "metrics_fleet_1m"

# name -> (SQL type, what the column holds). Read by the overview trends (dashboard.live.trends).
COLUMNS: dict[str, str] = {
    "gpus": "GPUs that reported in the minute",
    "nodes": "nodes that reported in the minute",
    "gpu_util_mean": "mean GPU utilisation over every sample of every GPU, %",
    "gpu_util_max": "highest GPU utilisation sample, %",
    "power_w": "sum over GPUs of their mean power draw, W",
    "tokens_s": "sum over nodes of their mean generated tokens/s",
    "queue": "sum over nodes of their mean waiting requests",
    "ttft_p95_max_s": "worst node's mean p95 time to first token, s",
    "ttft_p95_mean_s": "mean over nodes of their p95 time to first token, s",
    "e2e_p95_max_s": "worst node's mean p95 end-to-end latency, s",
    "e2e_p95_mean_s": "mean over nodes of their p95 end-to-end latency, s",
}

CREATE_SQL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (bucket timestamptz PRIMARY KEY, gpus integer NOT NULL DEFAULT 0, "
    "nodes integer NOT NULL DEFAULT 0, "
    + ", ".join(f"{c} double precision" for c in COLUMNS if c not in ("gpus", "nodes"))
    + ");"
)
DROP_SQL = f"DROP TABLE IF EXISTS {TABLE};"

_WEIGHTED_UTIL = ("sum(gpu_util_pct_avg * n) / "
                  "NULLIF(sum(CASE WHEN gpu_util_pct_avg IS NULL THEN 0 ELSE n END), 0)")

_UPSERT = f"""
INSERT INTO {TABLE} AS f (bucket, {", ".join(COLUMNS)})
SELECT coalesce(g.bucket, s.bucket), coalesce(g.gpus, 0), coalesce(s.nodes, 0), g.util_mean, g.util_max, g.power_w,
       s.tokens_s, s.queue, s.ttft_max, s.ttft_mean, s.e2e_max, s.e2e_mean
FROM (SELECT bucket, count(*) AS gpus, {_WEIGHTED_UTIL} AS util_mean, max(gpu_util_pct_max) AS util_max,
             sum(power_w_avg) AS power_w
      FROM gpu_sample_1m WHERE bucket >= %(lo)s AND bucket < %(hi)s GROUP BY bucket) g
FULL OUTER JOIN
     (SELECT bucket, count(*) AS nodes, sum(generation_tokens_s_avg) AS tokens_s, sum(requests_waiting_avg) AS queue,
             max(ttft_p95_s_avg) AS ttft_max, avg(ttft_p95_s_avg) AS ttft_mean,
             max(e2e_p95_s_avg) AS e2e_max, avg(e2e_p95_s_avg) AS e2e_mean
      FROM node_sample_1m WHERE bucket >= %(lo)s AND bucket < %(hi)s GROUP BY bucket) s
ON g.bucket = s.bucket
ON CONFLICT (bucket) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS)}
"""


def aggregate(cur: object, lo: datetime, hi: datetime) -> None:
    """Recompute the fleet rows of [lo, hi) from the minute rollups (call after those are upserted)."""
    cur.execute(_UPSERT, {"lo": lo, "hi": hi})  # type: ignore[attr-defined]


def apply_retention(before: datetime) -> int:
    """Delete fleet minutes older than `before` (the 1-minute retention). Returns rows deleted."""
    with connection.cursor() as cur:
        cur.execute(f"DELETE FROM {TABLE} WHERE bucket < %s", [before])
        return cur.rowcount
