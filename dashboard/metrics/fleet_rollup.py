"""The fleet's minute: one row per minute summarising every GPU and node, for the overview's trend panels.

The overview asks "how did the whole fleet do over the last hour / day / week". Answering that from the per-GPU
rollups means reading every GPU's rows (8,000 GPUs x 1,440 minutes a day); this table holds one row per minute,
so a 7-day panel reads 10,080 rows whatever the fleet size.

It is written by rollups.aggregate("1m") in the same statement as the minute rollups: the two upserts return the
rows they wrote (every row of every minute in the range, since a minute is always recomputed whole from the raw
samples) and the fleet rows are summed from those, so the minute rollups are never read back (reading them back by
time costs a scan of the day's partition while its BRIN summary lags behind) and the fleet rows never disagree with
them. Late samples re-aggregate their minute, and with it the fleet's minute.
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

_GPU_PART = (f"SELECT bucket, count(*) AS gpus, {_WEIGHTED_UTIL} AS util_mean, max(gpu_util_pct_max) AS util_max, "
             "sum(power_w_avg) AS power_w FROM {src} GROUP BY bucket")
_NODE_PART = ("SELECT bucket, count(*) AS nodes, sum(generation_tokens_s_avg) AS tokens_s, "
              "sum(requests_waiting_avg) AS queue, max(ttft_p95_s_avg) AS ttft_max, avg(ttft_p95_s_avg) AS ttft_mean, "
              "max(e2e_p95_s_avg) AS e2e_max, avg(e2e_p95_s_avg) AS e2e_mean FROM {src} GROUP BY bucket")
GPU_RETURNING = "RETURNING bucket, n, gpu_util_pct_avg, gpu_util_pct_max, power_w_avg"
NODE_RETURNING = "RETURNING bucket, generation_tokens_s_avg, requests_waiting_avg, ttft_p95_s_avg, e2e_p95_s_avg"


def _fleet_insert(gpu_src: str, node_src: str) -> str:
    return (
        f"INSERT INTO {TABLE} AS f (bucket, {', '.join(COLUMNS)}) "
        "SELECT coalesce(g.bucket, s.bucket), coalesce(g.gpus, 0), coalesce(s.nodes, 0), g.util_mean, g.util_max, "
        "g.power_w, s.tokens_s, s.queue, s.ttft_max, s.ttft_mean, s.e2e_max, s.e2e_mean "
        f"FROM ({_GPU_PART.format(src=gpu_src)}) g FULL OUTER JOIN ({_NODE_PART.format(src=node_src)}) s "
        "ON g.bucket = s.bucket "
        f"ON CONFLICT (bucket) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in COLUMNS)}"
    )


def with_minute_upserts(gpu_upsert: str, node_upsert: str) -> str:
    """One statement: the GPU and node minute upserts (each taking its own lo, hi parameters) and the fleet rows
    summed from what they wrote."""
    return (f"WITH g AS ({gpu_upsert} {GPU_RETURNING}), s AS ({node_upsert} {NODE_RETURNING}) "
            + _fleet_insert("g", "s"))


# Rebuild from the stored minute rollups (the migration's backfill, and the bench): reads them back by time.
REBUILD_SQL = _fleet_insert(
    "(SELECT * FROM gpu_sample_1m WHERE bucket >= %(lo)s AND bucket < %(hi)s) r",
    "(SELECT * FROM node_sample_1m WHERE bucket >= %(lo)s AND bucket < %(hi)s) r",
)


def rebuild(cur: object, lo: datetime, hi: datetime) -> None:
    """Recompute the fleet rows of [lo, hi) from the stored minute rollups."""
    cur.execute(REBUILD_SQL, {"lo": lo, "hi": hi})  # type: ignore[attr-defined]


def apply_retention(before: datetime) -> int:
    """Delete fleet minutes older than `before` (the 1-minute retention). Returns rows deleted."""
    with connection.cursor() as cur:
        cur.execute(f"DELETE FROM {TABLE} WHERE bucket < %s", [before])
        return cur.rowcount
